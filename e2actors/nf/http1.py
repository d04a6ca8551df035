"""A bounded, incremental HTTP/1.x *request* parser for one client-to-server byte stream. Pure code.

:class:`RequestParser` takes the client's stream in chunks of any size (``feed``) and returns, for
each request whose header block is complete, the buffers an IDS rule can inspect (the names of
Suricata's sticky buffers, see :data:`e2actors.nf.rules.HTTP_BUFFERS`):

- ``http.method``, ``http.protocol`` (``HTTP/1.1``), ``http.request_line`` (without CRLF);
- ``http.uri.raw`` (the request target as sent) and ``http.uri`` (normalized as libhtp does by
  default: an absolute target is cut to its path and query, ``%XX`` escapes are decoded);
- ``http.host.raw`` (the ``Host`` header, else the authority of an absolute target) and
  ``http.host`` (lowercased, without the port);
- ``http.header``: every header as ``Name: value\\r\\n`` (value trimmed; repeated headers merged
  with ``", "`` in the first one's place, as libhtp does); ``http.header.raw``: the header lines as
  sent; ``http.header_names``: ``\\r\\nName\\r\\n...\\r\\n\\r\\n``; ``http.start``: request line and
  header lines as sent, with the blank line;
- one buffer per common header (``http.cookie``, ``http.user_agent``, ``http.referer``,
  ``http.accept``, ``http.accept_lang``, ``http.accept_enc``, ``http.content_type``,
  ``http.content_len``, ``http.connection``): present only when the request has that header.

Bodies are skipped (``Content-Length``, or ``chunked`` transfer coding) so that pipelined requests
are found. Bounds: a request line plus headers longer than ``max_header`` bytes, a line that is not
HTTP, or a malformed length ends parsing for the stream (:attr:`RequestParser.dead` says why); the
parser never holds more than ``max_header`` bytes.
"""

from __future__ import annotations

__all__ = ["RequestParser", "normalize_uri"]

_HEADER_BUFFERS = {b"cookie": "http.cookie", b"user-agent": "http.user_agent", b"referer": "http.referer",
                   b"accept": "http.accept", b"accept-language": "http.accept_lang",
                   b"accept-encoding": "http.accept_enc", b"content-type": "http.content_type",
                   b"content-length": "http.content_len", b"connection": "http.connection"}
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HEX = b"0123456789abcdefABCDEF"


def normalize_uri(raw: bytes) -> bytes:
    """The ``http.uri`` of a request target: path and query of an absolute target, ``%XX`` decoded."""
    u = raw
    low = u[:8].lower()
    if low.startswith(b"http://") or low.startswith(b"https://"):
        rest = u[u.index(b"//") + 2:]
        slash = rest.find(b"/")
        u = rest[slash:] if slash >= 0 else b"/"
    if b"%" not in u:
        return u
    out = bytearray()
    i, n = 0, len(u)
    while i < n:
        c = u[i]
        if c == 0x25 and i + 2 < n and u[i + 1] in _HEX and u[i + 2] in _HEX:
            out.append(int(u[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _host(value: bytes) -> bytes:
    h = value.strip().lower()
    if h.startswith(b"["):  # [v6]:port
        end = h.find(b"]")
        return h[:end + 1] if end >= 0 else h
    colon = h.rfind(b":")
    if colon >= 0 and h[colon + 1:].isdigit():
        h = h[:colon]
    return h


class RequestParser:
    """Parses one client stream (see the module docstring). ``feed(data)`` returns a list of
    ``{buffer: bytes}`` dicts, one per request whose headers completed in this chunk."""

    __slots__ = ("max_header", "buf", "body", "chunked", "dead", "requests")

    def __init__(self, max_header: int = 16384) -> None:
        self.max_header = max_header
        self.buf = b""
        self.body = 0  # body bytes still to skip
        self.chunked = 0  # 0: no; 1: expecting a chunk-size line; 2: in trailers
        self.dead: str | None = None
        self.requests = 0

    def feed(self, data: bytes) -> list[dict[str, bytes]]:
        out: list[dict[str, bytes]] = []
        if self.dead is not None or not data:
            return out
        buf = self.buf + data if self.buf else data
        while buf and self.dead is None:
            if self.body:
                k = min(self.body, len(buf))
                self.body -= k
                buf = buf[k:]
                if not self.body and self.chunked:
                    self.chunked = 3  # the CRLF after a chunk's data
                continue
            if self.chunked:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > 1024:
                        self.dead = "chunk line too long"
                    break
                line = buf[:nl].rstrip(b"\r")
                buf = buf[nl + 1:]
                if self.chunked == 3:
                    self.chunked = 1
                    if line:
                        self.dead = "missing CRLF after a chunk"
                    continue
                if self.chunked == 1:
                    size = line.split(b";", 1)[0].strip()
                    if not size or len(size) > 16 or any(c not in _HEX for c in size):
                        self.dead = "bad chunk size"
                        break
                    n = int(size, 16)
                    if n:
                        self.body = n
                    else:
                        self.chunked = 2
                elif not line:  # end of the trailers
                    self.chunked = 0
                continue
            # A request: line and headers up to the blank line.
            while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # stray CRLF between requests
                buf = buf[2:] if buf[:1] == b"\r" else buf[1:]
            if not buf:
                break
            end = buf.find(b"\r\n\r\n")
            elen = 4
            lf = buf.find(b"\n\n")
            if lf >= 0 and (end < 0 or lf < end):
                end, elen = lf, 2
            if end < 0:
                if len(buf) > self.max_header:
                    self.dead = f"request headers longer than {self.max_header} bytes"
                elif not self._plausible(buf):
                    self.dead = "not an HTTP request"
                break
            if end + elen > self.max_header:
                self.dead = f"request headers longer than {self.max_header} bytes"
                break
            head = buf[:end + elen]
            buf = buf[end + elen:]
            req = self._request(head)
            if req is None:
                break
            out.append(req)
            self.requests += 1
        self.buf = buf if self.dead is None else b""
        return out

    def _plausible(self, buf: bytes) -> bool:
        """Could these bytes (no complete header block yet) start a request?"""
        sp = buf.find(b" ")
        method = buf[:sp] if sp >= 0 else buf[:32]
        return 0 < len(method) <= 32 and all(c in _TOKEN for c in method) and (sp >= 0 or len(buf) < 32)

    def _request(self, head: bytes) -> dict[str, bytes] | None:
        lines = head.split(b"\n")
        line = lines[0].rstrip(b"\r")
        parts = line.split(b" ")
        parts = [p for p in parts if p]
        if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
            method, target, proto = parts
        elif len(parts) == 2:  # HTTP/0.9
            (method, target), proto = parts, b""
        else:
            self.dead = "not an HTTP request"
            return None
        if not all(c in _TOKEN for c in method):
            self.dead = "not an HTTP request"
            return None
        headers: list[list[bytes]] = []  # [name, value]; folded lines joined
        for raw in lines[1:]:
            h = raw.rstrip(b"\r")
            if not h:
                continue
            if h[:1] in (b" ", b"\t") and headers:
                headers[-1][1] += b" " + h.strip()
                continue
            name, colon, value = h.partition(b":")
            if not colon:
                continue  # libhtp keeps going past an invalid header line
            headers.append([name.strip(), value.strip()])
        merged: dict[bytes, list[bytes]] = {}
        order: list[bytes] = []
        for name, value in headers:
            k = name.lower()
            if k in merged:
                merged[k][1] += b", " + value
            else:
                merged[k] = [name, value]
                order.append(k)
        req: dict[str, bytes] = {
            "http.method": method, "http.uri.raw": target, "http.uri": normalize_uri(target),
            "http.request_line": line, "http.start": head,
            "http.header": b"".join(merged[k][0] + b": " + merged[k][1] + b"\r\n" for k in order),
            "http.header.raw": head[len(lines[0]) + 1:],
            "http.header_names": b"\r\n" + b"".join(merged[k][0] + b"\r\n" for k in order) + b"\r\n",
        }
        if proto:
            req["http.protocol"] = proto
        host = merged.get(b"host")
        if host is not None:
            req["http.host.raw"] = host[1]
            req["http.host"] = _host(host[1])
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            auth = target.split(b"/", 3)[2]
            req["http.host.raw"] = auth
            req["http.host"] = _host(auth)
        for k, buf_name in _HEADER_BUFFERS.items():
            if k in merged:
                req[buf_name] = merged[k][1]
        te = merged.get(b"transfer-encoding")
        if te is not None and b"chunked" in te[1].lower():
            self.chunked = 1
        else:
            cl = merged.get(b"content-length")
            if cl is not None:
                v = cl[1].strip()
                if not v.isdigit() or len(v) > 15:
                    self.dead = "bad Content-Length"
                else:
                    self.body = int(v)
        return req
