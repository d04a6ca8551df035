"""Application-layer peeks: the HTTP/1.x Host and the TLS SNI of a client's first bytes. Pure code.

Each parser takes the bytes a client sent so far (from the start of its stream) and returns
``(state, host)``: ``(FOUND, "www.example.com")``, ``(MORE, None)`` when the bytes are a plausible
prefix and more may tell, or ``(NO, None)`` when they are not that protocol, are malformed, or carry
no name. Hostile bytes never raise. Hosts come back normalized by :func:`normalize_host` (lowercase
ASCII, no port, no trailing dot, IPv6 literals without brackets).

HTTP (RFC 9112): ``METHOD SP target SP HTTP/1.x`` then header lines; the Host header (field name
matched without case; the first one wins) or, as RFC 9112 section 3.2.2 says, the host of an
absolute-form target (``GET http://host/ HTTP/1.1``, the proxy form) which takes precedence; the
authority of a ``CONNECT host:port``. Bare LF line ends are accepted. The answer comes as soon as the
header is complete: the whole request need not have arrived.

TLS (RFC 8446 sections 4.1.2 and 5.1, RFC 6066 section 3): handshake records (type 22, version 3.x,
length 1..2^14+2048) are concatenated, since a ClientHello may span several records (and any
segmentation); the first handshake message must be a ClientHello (type 1); the parser walks
legacy_version, random, legacy_session_id (at most 32 bytes), cipher_suites (even, at least 2),
legacy_compression_methods (at least 1) and the extensions to ``server_name`` (type 0) and its first
``host_name`` entry (type 0). Every length is checked against its container.

A connection's host: :func:`peek_host` decides over a client's first bytes (HTTP, then TLS, up to a
bound) and :class:`HostSniffer` applies it to one connection's byte stream *in order* (as the TCP
reassembler delivers it: by sequence number, duplicates dropped, gaps reported). They are the one
implementation behind the switch's host learning for ``domain`` conditions
(:class:`e2actors.switch.hosts.HostTracker`) and the HostFilter NF, so both always decide a flow alike.
"""

from __future__ import annotations

__all__ = ["FOUND", "MORE", "NO", "HostSniffer", "http_host", "normalize_host", "parse_http_host", "parse_tls_sni",
           "peek_host", "tls_sni"]

FOUND = "found"
MORE = "more"
NO = "no"

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HOST_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_HEX_COLON = frozenset("0123456789abcdef:.")
_MAX_METHOD = 24


def normalize_host(value: bytes | str) -> str | None:
    """``"WWW.Example.COM.:8080"`` -> ``"www.example.com"``; ``"[2001:db8::1]:80"`` -> ``"2001:db8::1"``;
    None when it is not a plausible DNS name or IP literal."""
    try:
        s = value.decode("ascii") if isinstance(value, (bytes, bytearray, memoryview)) else str(value)
    except UnicodeDecodeError:
        return None
    s = s.strip(" \t").lower()
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        rest = s[end + 1:]
        s = s[1:end]
        if (rest and not (rest[0] == ":" and rest[1:].isdigit())) or not s or not set(s) <= _HEX_COLON:
            return None
        return s
    if ":" in s:
        s, _, port = s.rpartition(":")
        if not port.isdigit() or ":" in s:
            return None
    s = s.rstrip(".")
    if not s or len(s) > 253 or not set(s) <= _HOST_OK or ".." in s or s.startswith("."):
        return None
    return s


def _authority_host(target: bytes) -> str | None:
    """Host of ``scheme://[userinfo@]host[:port]/...``."""
    i = target.find(b"://")
    if i <= 0:
        return None
    auth = target[i + 3:]
    for sep in (b"/", b"?", b"#"):
        j = auth.find(sep)
        if j >= 0:
            auth = auth[:j]
    auth = auth.rpartition(b"@")[2]
    return normalize_host(auth)


def parse_http_host(data: bytes) -> tuple[str, str | None]:
    """The Host of an HTTP/1.x request (see the module docstring)."""
    data = bytes(data)
    if not data:
        return MORE, None
    # --- method
    sp = data.find(b" ", 0, _MAX_METHOD + 1)
    head = data[:sp] if sp >= 0 else data[:_MAX_METHOD + 1]
    if not head and sp == 0:
        return NO, None
    if any(b not in _TOKEN for b in head) or not head[:1].isalpha():
        return NO, None
    if sp < 0:
        return (MORE, None) if len(data) <= _MAX_METHOD else (NO, None)
    method = head
    # --- request line
    eol = data.find(b"\n")
    if eol < 0:
        line = data
        # Plausible so far: the version (if started) must begin like "HTTP/1."
        parts = line.split(b" ")
        if len(parts) >= 3 and not b"HTTP/1."[: len(parts[2])] == parts[2][:7]:
            return NO, None
        return MORE, None
    line = data[:eol].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
        return NO, None
    target = parts[1]
    if method == b"CONNECT":
        h = normalize_host(target)
        return (FOUND, h) if h else (NO, None)
    if not target.startswith(b"/") and b"://" in target:
        h = _authority_host(target)
        return (FOUND, h) if h else (NO, None)
    # --- header fields
    pos = eol + 1
    n = len(data)
    while pos < n:
        eol = data.find(b"\n", pos)
        if eol < 0:
            return MORE, None
        field = data[pos:eol].rstrip(b"\r")
        pos = eol + 1
        if not field:
            return NO, None  # end of the header section without a Host
        name, colon, value = field.partition(b":")
        if colon and name.lower() == b"host":
            h = normalize_host(value)
            return (FOUND, h) if h else (NO, None)
    return MORE, None


def http_host(data: bytes) -> str | None:
    """The Host of an HTTP/1.x request in ``data``, or None."""
    try:
        state, host = parse_http_host(data)
    except Exception:  # pragma: no cover - defensive: hostile bytes never raise
        return None
    return host if state == FOUND else None


class _More(Exception):
    pass


class _Bad(Exception):
    pass


def parse_tls_sni(data: bytes) -> tuple[str, str | None]:
    """The SNI host_name of a TLS ClientHello (see the module docstring)."""
    try:
        return _tls_sni(bytes(data))
    except (_More, _Bad):  # pragma: no cover - _tls_sni turns these into states
        return NO, None


def _tls_sni(data: bytes) -> tuple[str, str | None]:
    n = len(data)
    if n == 0:
        return MORE, None
    # --- records -> handshake bytes
    hs = bytearray()
    off = 0
    ended_other = False
    while off < n:
        if data[off] != 22:
            if off == 0:
                return NO, None
            ended_other = True  # another record type follows: the hello must be complete already
            break
        if off + 1 < n and data[off + 1] != 3:
            return NO, None
        if off + 2 < n and data[off + 2] > 4:
            return NO, None
        if off + 5 > n:
            break
        rlen = data[off + 3] << 8 | data[off + 4]
        if rlen == 0 or rlen > 16384 + 2048:
            return NO, None
        hs += data[off + 5: off + 5 + rlen]
        if off + 5 + rlen > n:
            break
        off += 5 + rlen
    more_possible = not ended_other  # the client may still send handshake bytes
    # --- the ClientHello message
    if not hs:
        return (MORE, None) if more_possible else (NO, None)
    if hs[0] != 1:
        return NO, None
    if len(hs) < 4:
        return (MORE, None) if more_possible else (NO, None)
    mlen = hs[1] << 16 | hs[2] << 8 | hs[3]
    body = bytes(hs[4: 4 + mlen])
    avail = len(body)
    truncated = avail < mlen  # the rest of the message has not arrived (yet)
    if truncated and not more_possible:
        return NO, None

    def need(p: int, k: int) -> None:
        if p + k > avail:
            raise _More() if truncated else _Bad()

    try:
        p = 0
        need(p, 35)
        p += 34  # legacy_version, random
        sid_len = body[p]
        if sid_len > 32:
            raise _Bad()
        p += 1 + sid_len
        need(p, 2)
        cs_len = body[p] << 8 | body[p + 1]
        if cs_len < 2 or cs_len % 2:
            raise _Bad()
        p += 2 + cs_len
        need(p, 1)
        comp_len = body[p]
        if comp_len < 1:
            raise _Bad()
        p += 1 + comp_len
        if p == mlen:
            return NO, None  # no extensions at all
        need(p, 2)
        ext_end = p + 2 + (body[p] << 8 | body[p + 1])
        if ext_end > mlen:
            raise _Bad()
        p += 2
        while p < ext_end:
            need(p, 4)
            etype = body[p] << 8 | body[p + 1]
            elen = body[p + 2] << 8 | body[p + 3]
            p += 4
            if p + elen > ext_end:
                raise _Bad()
            if etype == 0:
                need(p, elen)
                if elen < 2:
                    raise _Bad()
                lend = p + 2 + (body[p] << 8 | body[p + 1])
                if lend > p + elen:
                    raise _Bad()
                q = p + 2
                while q < lend:
                    if q + 3 > lend:
                        raise _Bad()
                    ntype = body[q]
                    nlen = body[q + 1] << 8 | body[q + 2]
                    q += 3
                    if q + nlen > lend:
                        raise _Bad()
                    if ntype == 0:
                        h = normalize_host(body[q: q + nlen])
                        return (FOUND, h) if h else (NO, None)
                    q += nlen
                return NO, None
            p += elen
        return NO, None
    except _More:
        return MORE, None
    except (_Bad, IndexError):
        return NO, None


def tls_sni(data: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello at the start of ``data``, or None."""
    state, host = parse_tls_sni(data)
    return host if state == FOUND else None


# --- one connection's host ---------------------------------------------------------------------------
def peek_host(data: bytes, max_bytes: int = 8192) -> tuple[str, str | None, str]:
    """The decision over a client's first bytes (in stream order): ``(FOUND, host, "http"|"tls")``,
    ``(MORE, None, "")`` while more bytes may tell, or ``(NO, None, why)`` with ``why`` = ``"no
    host"`` (not HTTP/1.x or TLS, malformed, or no Host/SNI) or ``"bound"`` (``max_bytes`` or more
    bytes and still undecided)."""
    state, host = parse_http_host(data)
    if state == FOUND:
        return FOUND, host, "http"
    if state == NO:  # TLS starts with 0x16, never an HTTP method's first byte: at most one is MORE
        state, host = parse_tls_sni(data)
        if state == FOUND:
            return FOUND, host, "tls"
    if state == MORE:
        if len(data) < max_bytes:
            return MORE, None, ""
        return NO, None, "bound"
    return NO, None, "no host"


class HostSniffer:
    """The host (HTTP Host or TLS SNI) of one connection, from its byte stream in order.

    The client is the first direction to deliver bytes (HTTP and TLS clients speak first; a server
    that speaks first, like SMTP's banner, makes the flow host-less). Feed it what a
    :class:`~e2actors.packet.reassembly.Reassembler` delivers: :meth:`data` for each chunk,
    :meth:`gap` for bytes given up on, :meth:`end` when the stream ends. Each returns True once the
    flow is decided; then :attr:`host` is the host or None, :attr:`kind` is ``"http"`` or ``"tls"``
    when found, and :attr:`why` says why not (``"no host"``, ``"bound"``, ``"gap"``, ``"end"``).
    Bytes of the other direction and everything after the decision are ignored; at most
    ``max_bytes`` client bytes are buffered (plus the chunk that crosses the bound).
    """

    __slots__ = ("max_bytes", "client", "buf", "decided", "host", "kind", "why")

    def __init__(self, max_bytes: int = 8192) -> None:
        self.max_bytes = max_bytes
        self.client = -1  # direction of the client, -1 until one delivers bytes
        self.buf = b""
        self.decided = False
        self.host: str | None = None
        self.kind = ""
        self.why = ""

    def data(self, direction: int, data: bytes) -> bool:
        """Take in-order bytes of one direction; True once decided."""
        if self.decided:
            return True
        if self.client < 0:
            if not data:
                return False
            self.client = direction
        elif direction != self.client or not data:
            return False
        buf = self.buf + data if self.buf else data
        state, host, how = peek_host(buf, self.max_bytes)
        if state == MORE:
            self.buf = buf
            return False
        return self._decide(host, how)

    def gap(self, direction: int) -> bool:
        """Bytes of ``direction`` were given up on: the client's stream cannot be read on. A gap
        before any byte makes its direction the client (its first bytes are what is missing)."""
        if self.decided:
            return True
        if self.client < 0:
            self.client = direction
        if direction != self.client:
            return False
        return self._decide(None, "gap")

    def end(self) -> bool:
        """The connection ended undecided (no host); always True."""
        if not self.decided:
            self._decide(None, "end")
        return True

    def _decide(self, host: str | None, how: str) -> bool:
        self.decided = True
        self.buf = b""
        self.host = host
        if host is None:
            self.why = how
        else:
            self.kind = how
        return True

    # msgpack-safe form, for a pipelet's exported state: [decided, client, buffered bytes]
    def to_list(self) -> list:
        """``[decided, client, buffered bytes]`` (msgpack-safe; the host itself is the caller's)."""
        return [self.decided, self.client, self.buf]

    @classmethod
    def from_list(cls, state: list, max_bytes: int = 8192) -> HostSniffer:
        """The sniffer :meth:`to_list` described (a decided one keeps no host: it is decided)."""
        sn = cls(max_bytes)
        sn.decided = bool(state[0])
        sn.client = int(state[1])
        sn.buf = bytes(state[2])
        return sn
