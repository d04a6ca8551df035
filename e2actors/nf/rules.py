"""Snort/Suricata-style IDS rules: the parser, the inspection engine and the multi-pattern prefilter.
Pure code (no asyncio).

Parsing (:func:`parse_rules`, :func:`load_rules`) turns rule text into :class:`Rule` objects gathered in
a :class:`RuleSet` (with the rules it skipped and why: :meth:`RuleSet.summary`). Matching has two
stages, as in Suricata: :class:`Matcher` (the *prefilter*) finds every rule pattern in a stream in one
pass (Hyperscan when installed, else ``ahocorasick_rs``); the rules whose patterns were found are then
checked in full by :func:`inspect` (contents with their windows and relative positions, ``pcre``,
``isdataat``, ``byte_test``, ``byte_jump``) on the retained bytes. docs/ids.md is the reference; in short:

- **Header.** Actions ``alert drop reject sdrop log`` (all mean "this flow is unsafe"); ``pass`` and
  others are skipped. Protocols ``tcp udp icmp ip`` and ``http`` (TCP whose client sent an HTTP/1.x
  request). Addresses are parsed for syntax and NOT matched (which side is home is a deployment fact).
  Ports are matched (``any``, lists, ranges, negations, ``$VARS``; unknown variables mean any).
- **Payload keywords.** ``content`` (``|hex|``, escapes, ``!`` negation) with ``nocase depth offset
  distance within startswith endswith rawbytes fast_pattern``; ``pcre`` (RE2: linear time; patterns
  RE2 cannot run, such as look-arounds and back-references, skip the rule); ``isdataat``;
  ``byte_test``; ``byte_jump``; ``dsize`` (the rule is then matched on packets, not the stream).
- **HTTP.** Sticky buffers ``http.uri http.uri.raw http.method http.host http.host.raw http.header
  http.header.raw http.cookie http.user_agent http.protocol http.request_line ...`` and the content
  modifiers ``http_uri http_raw_uri http_method http_host http_raw_host http_header http_raw_header
  http_cookie http_user_agent``; ``pkt_data`` goes back to the payload. Buffers come from
  :mod:`e2actors.nf.http1` (requests only; response buffers skip the rule).
- **Flow.** ``flow:to_server|to_client|from_client|from_server|established|not_established|
  stateless|only_stream|no_stream``; ``flowbits:set|isset|isnotset|unset|toggle|noalert`` (``|`` and
  ``&`` lists); ``noalert``.
- Informational options are accepted: ``msg sid rev gid classtype reference metadata priority target
  tag threshold``. Any other option skips the rule, naming the option (:attr:`RuleSet.skipped`).
- **Bounds** (hostile rule files): a content longer than :data:`MAX_CONTENT` bytes, a pcre longer than
  :data:`MAX_PCRE` characters or a rule longer than :data:`MAX_RULE` characters is a
  :class:`RuleError` naming the file and line; so is any malformed rule (unbalanced quotes, bad hex,
  missing ``sid``...). With ``strict=False`` malformed rules are skipped instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from e2actors.errors import RuleError

__all__ = [
    "ByteJump",
    "ByteTest",
    "Content",
    "HTTP_BUFFERS",
    "IsDataAt",
    "Literals",
    "MATCHERS",
    "MAX_CONTENT",
    "MAX_PCRE",
    "MAX_RULE",
    "Matcher",
    "Pcre",
    "PortSet",
    "Rule",
    "RuleError",
    "RuleSet",
    "SkippedRule",
    "inspect",
    "load_rules",
    "parse_rule",
    "parse_rules",
]

log = logging.getLogger("e2actors.nf.rules")

#: Longest ``content`` accepted, in bytes (Suricata's own limit is 64 KiB; real rules stay under
#: 200 bytes). Longer is a RuleError: one huge pattern made the automaton build block for minutes.
MAX_CONTENT = 4096
#: Longest ``pcre`` pattern accepted, in characters.
MAX_PCRE = 4096
#: Longest rule accepted (after line continuations), in characters.
MAX_RULE = 65536
#: Memory RE2 may use per compiled pcre (bytes); a pattern needing more is skipped.
PCRE_MAX_MEM = 1 << 20

# --- the rule model --------------------------------------------------------------------------------
ANY_SIDE = 0
TO_SERVER = 1  # bytes sent by the client
TO_CLIENT = 2  # bytes sent by the server

PKT = "pkt"  # the payload buffer: a packet's payload, or the reassembled stream of one direction
#: Request buffers filled by :mod:`e2actors.nf.http1` (sticky-buffer names).
HTTP_BUFFERS = frozenset((
    "http.uri", "http.uri.raw", "http.method", "http.host", "http.host.raw", "http.header",
    "http.header.raw", "http.cookie", "http.user_agent", "http.referer", "http.accept",
    "http.accept_lang", "http.accept_enc", "http.content_type", "http.content_len", "http.connection",
    "http.protocol", "http.request_line", "http.start", "http.header_names",
))
_STICKY_ALIASES = {"http_uri": "http.uri", "http_raw_uri": "http.uri.raw", "http_method": "http.method",
                   "http_host": "http.host", "http_raw_host": "http.host.raw", "http_header": "http.header",
                   "http_raw_header": "http.header.raw", "http_cookie": "http.cookie",
                   "http_user_agent": "http.user_agent", "http_request_line": "http.request_line",
                   "http_accept": "http.accept", "http_referer": "http.referer",
                   "http_content_type": "http.content_type", "http_protocol": "http.protocol",
                   "http_start": "http.start", "http_header_names": "http.header_names",
                   "http_connection": "http.connection", "http_content_len": "http.content_len",
                   "http_accept_lang": "http.accept_lang", "http_accept_enc": "http.accept_enc"}
# Snort-style content modifiers: they move the content before them into a buffer.
_CONTENT_MODIFIERS = {"http_uri": "http.uri", "http_raw_uri": "http.uri.raw", "http_method": "http.method",
                      "http_host": "http.host", "http_raw_host": "http.host.raw", "http_header": "http.header",
                      "http_raw_header": "http.header.raw", "http_cookie": "http.cookie",
                      "http_user_agent": "http.user_agent"}
_RESPONSE_BUFFERS = frozenset(("http.stat_code", "http.stat_msg", "http.response_line", "http.response_body",
                               "http.server_body", "http.response_header", "file_data", "file.data",
                               "http.request_body", "http.client_body", "http_client_body", "http_stat_code",
                               "http_stat_msg", "http_server_body", "http.location", "http.server",
                               "http.cookie.raw", "http.response_header.raw", "http.request_header"))
# pcre flags naming a buffer (Suricata's letters).
_PCRE_BUFFER_FLAGS = {"U": "http.uri", "I": "http.uri.raw", "H": "http.header", "D": "http.header.raw",
                      "M": "http.method", "C": "http.cookie", "V": "http.user_agent", "W": "http.host",
                      "Z": "http.host.raw"}


@dataclass(frozen=True, slots=True)
class Content:
    """One ``content`` match. ``depth`` is None when unbounded. ``distance``/``within`` (None: unset)
    make it *relative* to the end of the previous match in its buffer (Suricata: it must start at or
    after ``prev_end + distance`` and end at or before ``prev_end + distance + within``)."""

    pattern: bytes
    nocase: bool = False
    offset: int = 0
    depth: int | None = None
    negated: bool = False
    distance: int | None = None
    within: int | None = None
    endswith: bool = False
    buffer: str = PKT

    @property
    def end_max(self) -> int | None:
        """The (absolute) offset the match must end at or before (None: anywhere)."""
        return None if self.depth is None else self.offset + self.depth

    @property
    def relative(self) -> bool:
        return self.distance is not None or self.within is not None


@dataclass(frozen=True, slots=True)
class Pcre:
    """A ``pcre`` run by RE2 (linear time). ``regex`` is the compiled pattern."""

    source: str
    regex: Any
    relative: bool = False
    negated: bool = False
    buffer: str = PKT


@dataclass(frozen=True, slots=True)
class IsDataAt:
    """``isdataat:N[,relative]``: a byte exists at offset N (from the cursor when relative)."""

    at: int
    relative: bool = False
    negated: bool = False
    buffer: str = PKT


@dataclass(frozen=True, slots=True)
class ByteTest:
    """``byte_test``: read ``nbytes`` at ``offset`` (binary or text), compare with ``value``."""

    nbytes: int
    op: str
    value: int
    offset: int
    relative: bool = False
    big: bool = True
    base: int = 0  # 0: binary; else the number is text in this base
    bitmask: int = 0
    negated: bool = False
    buffer: str = PKT


@dataclass(frozen=True, slots=True)
class ByteJump:
    """``byte_jump``: read ``nbytes`` at ``offset`` and move the cursor by that many bytes."""

    nbytes: int
    offset: int
    relative: bool = False
    big: bool = True
    base: int = 0
    multiplier: int = 1
    align: bool = False
    from_beginning: bool = False
    from_end: bool = False
    post_offset: int = 0
    bitmask: int = 0
    buffer: str = PKT


Element = Union[Content, Pcre, IsDataAt, ByteTest, ByteJump]


@dataclass(frozen=True, slots=True)
class PortSet:
    """Ports as ranges to include (empty: any) and ranges to exclude."""

    include: tuple[tuple[int, int], ...] = ()
    exclude: tuple[tuple[int, int], ...] = ()

    @property
    def is_any(self) -> bool:
        return not self.include and not self.exclude

    def __contains__(self, port: int) -> bool:
        if self.include and not any(lo <= port <= hi for lo, hi in self.include):
            return False
        return not any(lo <= port <= hi for lo, hi in self.exclude)


ANY_PORT = PortSet()


@dataclass(slots=True)
class Rule:
    """One loaded rule. ``contents`` are the payload (``pkt``) contents; ``buffers`` every buffer's
    elements in rule order, ``(buffer, (element, ...))``."""

    sid: int
    msg: str = ""
    rev: int = 0
    gid: int = 1
    action: str = "alert"
    proto: str = "tcp"
    src: str = "any"
    sport: PortSet = ANY_PORT
    dst: str = "any"
    dport: PortSet = ANY_PORT
    bidirectional: bool = False
    side: int = ANY_SIDE
    contents: tuple[Content, ...] = ()
    classtype: str = ""
    source: str = ""
    text: str = ""
    buffers: tuple[tuple[str, tuple[Element, ...]], ...] = ()
    established: bool | None = None  # flow:established (True) / not_established (False)
    dsize: tuple[str, int, int] | None = None  # (op, a, b)
    packet_only: bool = False  # dsize or flow:no_stream: matched on packets, not the stream
    stream_only: bool = False  # flow:only_stream
    flowbits: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (verb, names, all-of) in order
    noalert: bool = False

    @property
    def simple(self) -> bool:
        """Only non-relative positive/negated payload contents (the prefilter's answer is final)."""
        return (len(self.buffers) <= 1 and all(b == PKT for b, _ in self.buffers)
                and all(isinstance(e, Content) and not e.relative and not e.endswith
                        for _, els in self.buffers for e in els)
                and not self.flowbits and self.dsize is None and not self.packet_only)

    @property
    def http(self) -> bool:
        """Matched on HTTP request buffers (not the payload)."""
        return any(b in HTTP_BUFFERS for b, _ in self.buffers) or self.proto == "http"

    def ports_match(self, sport: int, dport: int) -> bool:
        """Do the header's ports match a packet or chunk going from ``sport`` to ``dport``?"""
        if sport in self.sport and dport in self.dport:
            return True
        return self.bidirectional and dport in self.sport and sport in self.dport

    def proto_match(self, proto: int) -> bool:
        p = self.proto
        return p == "ip" or (p in ("tcp", "http") and proto == 6) or (p == "udp" and proto == 17) or (
            p == "icmp" and proto in (1, 58))

    def dsize_match(self, n: int) -> bool:
        if self.dsize is None:
            return True
        op, a, b = self.dsize
        return a < n < b if op == "<>" else _compare(n, op, a)


@dataclass(frozen=True, slots=True)
class SkippedRule:
    source: str
    sid: int | None
    reasons: tuple[str, ...]
    text: str


@dataclass
class RuleSet:
    """Loaded rules, plus the ones skipped (with why) and the disabled (commented-out) count."""

    rules: list[Rule] = field(default_factory=list)
    skipped: list[SkippedRule] = field(default_factory=list)
    disabled: int = 0

    def __len__(self) -> int:
        return len(self.rules)

    def extend(self, other: RuleSet) -> None:
        self.rules.extend(other.rules)
        self.skipped.extend(other.skipped)
        self.disabled += other.disabled

    def skip_reasons(self) -> dict[str, int]:
        """``{reason: number of rules skipped because of it}`` (a rule may have several reasons)."""
        out: dict[str, int] = {}
        for s in self.skipped:
            for r in s.reasons:
                out[r] = out.get(r, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """One line: loaded, skipped (with the share), disabled."""
        n = len(self.rules) + len(self.skipped)
        share = 100.0 * len(self.skipped) / n if n else 0.0
        return (f"{len(self.rules)} rules loaded, {len(self.skipped)} skipped ({share:.1f}%), "
                f"{self.disabled} disabled")


# --- parsing ---------------------------------------------------------------------------------------
ACTIONS = frozenset(("alert", "drop", "reject", "sdrop", "log"))
PROTOS = frozenset(("tcp", "udp", "icmp", "ip", "http"))
# Options with no effect on what matches (see the module docstring).
IGNORED = frozenset(("msg", "sid", "rev", "gid", "classtype", "reference", "metadata", "priority",
                     "target", "tag", "threshold", "rawbytes", "fast_pattern", "http.uri.normalized"))
_FLOW_SIDE = {"to_server": TO_SERVER, "from_client": TO_SERVER, "to_client": TO_CLIENT, "from_server": TO_CLIENT}
_RULE_STARTS = tuple(a + " " for a in ACTIONS) + ("pass ",)
_CONTENT_MODS = frozenset(("nocase", "depth", "offset", "distance", "within", "rawbytes", "fast_pattern",
                           "startswith", "endswith"))
_BYTE_OPS = frozenset(("<", ">", "=", "!", "&", "^", "<=", ">="))


def _split_header(header: str, source: str) -> list[str]:
    """Whitespace-separated tokens, keeping bracketed lists (which may contain spaces) whole."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in header:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise RuleError("unbalanced ']' in the rule header", source)
        if ch.isspace() and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
        elif not (ch.isspace()):
            cur.append(ch)
    if depth:
        raise RuleError("unbalanced '[' in the rule header", source)
    if cur:
        out.append("".join(cur))
    return out


def _split_options(body: str, source: str) -> list[tuple[str, str | None]]:
    """``name:value;`` pairs. ``;`` inside quotes or after a backslash does not end an option."""
    opts: list[tuple[str, str | None]] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t;":
            i += 1
        if i >= n:
            break
        start = i
        in_q = False
        while i < n:
            ch = body[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_q = not in_q
            elif ch == ";" and not in_q:
                break
            i += 1
        if in_q:
            raise RuleError("unterminated quoted string in the rule options", source)
        item = body[start:min(i, n)].strip()
        i += 1
        name, colon, value = item.partition(":")
        name = name.strip().lower()
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise RuleError(f"malformed rule option {item[:40]!r}", source)
        opts.append((name, value.strip() if colon else None))
    return opts


def _unquote(value: str, source: str, what: str) -> str:
    """The text between the quotes of ``"..."`` (escapes kept; the closing quote must end it)."""
    v = value.strip()
    if len(v) < 2 or v[0] != '"':
        raise RuleError(f"{what} must be a quoted string, got {value[:40]!r}", source)
    i = 1
    while i < len(v):
        if v[i] == "\\":
            i += 2
            continue
        if v[i] == '"':
            break
        i += 1
    if i != len(v) - 1:
        raise RuleError(f"{what} must be one quoted string, got {value[:40]!r}", source)
    return v[1:-1]


def _unescape(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _content_bytes(s: str, source: str) -> bytes:
    """Decode a content string: ``|41 42|`` hex runs, backslash escapes, other text as UTF-8."""
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "|":
            j = s.find("|", i + 1)
            if j < 0:
                raise RuleError(f"unterminated hex run in content {s[:40]!r}", source)
            digits = "".join(s[i + 1:j].split())
            if len(digits) % 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise RuleError(f"bad hex {s[i:j + 1][:40]!r} in content", source)
            out += bytes.fromhex(digits)
            i = j + 1
        elif ch == "\\":
            if i + 1 >= n:
                raise RuleError("content ends with a lone backslash", source)
            out += s[i + 1].encode("utf-8", "surrogateescape")
            i += 2
        else:
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
        if len(out) > MAX_CONTENT:
            raise RuleError(f"content longer than {MAX_CONTENT} bytes (the documented bound)", source)
    return bytes(out)


def _int(value: str | None, source: str, what: str, lo: int = -(1 << 31), hi: int = (1 << 32) - 1) -> int:
    s = str(value).strip()
    try:
        v = int(s, 0) if len(s) <= 24 else None
    except ValueError:
        v = None
    if v is None:
        raise RuleError(f"{what} must be an integer, got {str(value)[:40]!r}", source)
    if not lo <= v <= hi:
        raise RuleError(f"{what} {v} out of range [{lo}, {hi}]", source)
    return v


def _is_int(value: str | None) -> bool:
    s = (value or "").strip()
    if s.startswith("-"):
        s = s[1:]
    return s.isdigit() or (s.lower().startswith("0x") and len(s) > 2 and all(c in "0123456789abcdefABCDEF" for c in s[2:]))


def parse_ports(spec: str, vars: Mapping[str, str] | None = None, source: str = "", _depth: int = 0) -> PortSet:
    """Parse a Snort port spec (see the module docstring)."""
    spec = spec.strip()
    if _depth > 8:
        raise RuleError(f"port variables or lists nest too deeply at {spec[:40]!r}", source)
    if spec in ("any", ""):
        return ANY_PORT
    neg = spec.startswith("!")
    if neg:
        spec = spec[1:].strip()
    inc: list[tuple[int, int]] = []
    exc: list[tuple[int, int]] = []
    if spec.startswith("$"):
        val = (vars or {}).get(spec[1:])
        sub = ANY_PORT if val is None else parse_ports(str(val), vars, source, _depth + 1)
        inc, exc = list(sub.include), list(sub.exclude)
    elif spec.startswith("["):
        if not spec.endswith("]"):
            raise RuleError(f"bad port list {spec[:40]!r}", source)
        parts: list[str] = []
        depth, cur = 0, ""
        for ch in spec[1:-1]:
            depth += (ch == "[") - (ch == "]")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        for p in parts:
            if p.strip() == "any":
                inc.append((0, 65535))
                continue
            sub = parse_ports(p, vars, source, _depth + 1)
            if sub.is_any:
                inc.append((0, 65535))
            inc.extend(sub.include)
            exc.extend(sub.exclude)
    else:
        lo_s, colon, hi_s = spec.partition(":")
        try:
            lo = int(lo_s) if lo_s.strip() else 0
            hi = (int(hi_s) if hi_s.strip() else 65535) if colon else lo
        except ValueError:
            raise RuleError(f"bad port {spec[:40]!r}", source) from None
        if not (0 <= lo <= hi <= 65535):
            raise RuleError(f"bad port range {spec[:40]!r}", source)
        inc = [(lo, hi)]
    if neg:
        if exc:  # !(A minus B): coarse, B's exclusions are dropped (documented: a superset)
            return PortSet((), tuple(inc))
        if not inc:
            raise RuleError("'!any' is not a port", source)
        return PortSet((), tuple(inc))
    return PortSet(tuple(inc), tuple(exc))


def _re2() -> Any:
    try:
        import re2  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - google-re2 is a dependency
        return None
    return re2


def _compile_pcre(value: str, source: str, reasons: list[str], cur_buffer: str) -> Pcre | None:
    """``"/pattern/flags"`` (optionally ``!"..."``) to a :class:`Pcre`, or None with a reason."""
    v = value.strip()
    neg = v.startswith("!")
    if neg:
        v = v[1:].strip()
    body = _unquote(v, source, "pcre")
    if len(body) > MAX_PCRE:
        raise RuleError(f"pcre longer than {MAX_PCRE} characters (the documented bound)", source)
    if not body.startswith("/"):
        if body.startswith("m") and len(body) > 1 and not body[1].isalnum():
            delim = body[1]
            body = body[1:]
        else:
            raise RuleError(f"pcre must be /pattern/flags, got {body[:40]!r}", source)
    else:
        delim = "/"
    end = body.rfind(delim)
    if end <= 0:
        raise RuleError(f"pcre must be /pattern/flags, got {body[:40]!r}", source)
    pat, flags = body[1:end], body[end + 1:]
    inline = ""
    relative = False
    buffer = cur_buffer
    anchored = False
    for f in flags:
        if f in "ism":
            inline += f
        elif f == "x":
            reasons.append("pcre flag x")
            return None
        elif f == "R":
            relative = True
        elif f == "A":
            anchored = True
        elif f == "G":
            inline += "U"
        elif f in "EB":
            pass  # E: '$' at the very end only (RE2's default); B: rawbytes, as always
        elif f in _PCRE_BUFFER_FLAGS:
            buffer = _PCRE_BUFFER_FLAGS[f]
        else:
            reasons.append(f"pcre flag {f}")
            return None
    re2 = _re2()
    if re2 is None:
        reasons.append("pcre (google-re2 not installed)")
        return None
    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1
    opts.log_errors = False
    opts.max_mem = PCRE_MAX_MEM
    text = (f"(?{inline})" if inline else "") + ("^(?:" + pat + ")" if anchored else pat)
    try:
        rx = re2.compile(text.encode("utf-8", "surrogateescape"), opts)
    except Exception as e:  # noqa: BLE001 - RE2's error for patterns it cannot run in linear time
        msg = str(e.args[0] if e.args else e)
        if isinstance(e.args[0] if e.args else None, bytes):
            msg = e.args[0].decode("utf-8", "replace")
        kind = ("look-around" if "(?=" in msg or "(?!" in msg or "(?<" in msg else
                "back-reference" if "\\1" in msg or "escape" in msg else "syntax RE2 lacks")
        reasons.append(f"pcre: {kind} (RE2)")
        return None
    return Pcre(body, rx, relative, neg, buffer)


def _byte_args(value: str | None, source: str, what: str) -> list[str]:
    parts = [p.strip() for p in (value or "").split(",")]
    if len(parts) < 2 or any(not p for p in parts):
        raise RuleError(f"{what} needs comma-separated arguments, got {str(value)[:40]!r}", source)
    return parts


def _byte_flags(parts: list[str], source: str, what: str, reasons: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {"relative": False, "big": True, "base": 0, "bitmask": 0, "multiplier": 1,
                           "align": False, "from_beginning": False, "from_end": False, "post_offset": 0}
    string = False
    for p in parts:
        low = p.lower()
        word, _, arg = low.partition(" ")
        if low == "relative":
            out["relative"] = True
        elif low == "big":
            out["big"] = True
        elif low == "little":
            out["big"] = False
        elif low == "string":
            string = True
            out["base"] = out["base"] or 10
        elif low in ("dec", "hex", "oct"):
            out["base"] = {"dec": 10, "hex": 16, "oct": 8}[low]
        elif word == "bitmask":
            out["bitmask"] = _int(arg, source, f"{what} bitmask", 0, (1 << 32) - 1)
        elif word == "multiplier":
            out["multiplier"] = _int(arg, source, f"{what} multiplier", 1, 65535)
        elif word == "post_offset":
            out["post_offset"] = _int(arg, source, f"{what} post_offset", -65535, 65535)
        elif low == "align":
            out["align"] = True
        elif low == "from_beginning":
            out["from_beginning"] = True
        elif low == "from_end":
            out["from_end"] = True
        elif low == "dce":
            reasons.append(f"{what} dce")
            return None
        else:
            raise RuleError(f"{what}: unknown argument {p[:40]!r}", source)
    if out["base"] and not string:
        raise RuleError(f"{what}: dec/hex/oct need 'string'", source)
    return out


def parse_rule(line: str, source: str = "<rule>", vars: Mapping[str, str] | None = None) -> Rule | SkippedRule:
    """Parse one rule line: a :class:`Rule`, or a :class:`SkippedRule` saying which options we lack.

    Raises :class:`RuleError` (naming ``source``) when the line is malformed or exceeds a bound.
    """
    text = line.strip()
    if len(text) > MAX_RULE:
        raise RuleError(f"rule longer than {MAX_RULE} characters (the documented bound)", source)
    lp = text.find("(")
    if lp < 0 or not text.endswith(")"):
        raise RuleError("a rule is '<action> <proto> <src> <sport> -> <dst> <dport> (<options>)'", source)
    header = _split_header(text[:lp], source)
    if len(header) != 7:
        raise RuleError(f"the rule header needs 7 fields, got {len(header)}: {text[:lp].strip()[:60]!r}", source)
    action, proto, src, sport_s, arrow, dst, dport_s = header
    if arrow not in ("->", "<>"):
        raise RuleError(f"direction must be '->' or '<>', got {arrow[:20]!r}", source)
    opts = _split_options(text[lp + 1:-1], source)
    reasons: list[str] = []
    action = action.lower()
    proto = proto.lower()
    if action not in ACTIONS:
        reasons.append(f"action {action[:20]}")
    if proto not in PROTOS:
        reasons.append(f"protocol {proto[:20]}")
    sport = parse_ports(sport_s, vars, source)
    dport = parse_ports(dport_s, vars, source)

    sid: int | None = None
    rule = Rule(sid=0, action=action, proto=proto, src=src, sport=sport, dst=dst, dport=dport,
                bidirectional=arrow == "<>", source=source, text=text)
    # Elements in rule order; a content is a dict until its modifiers are all read.
    els: list[Any] = []
    last_content: dict[str, Any] | None = None
    cur_buffer = PKT
    flowbits: list[tuple[str, tuple[str, ...], bool]] = []
    for name, value in opts:
        if name == "content":
            if value is None:
                raise RuleError("content needs a value", source)
            v = value.strip()
            neg = v.startswith("!")
            if neg:
                v = v[1:].strip()
            q_end = v.rfind('"')
            if q_end > 0 and v[q_end + 1:].strip().startswith(","):
                reasons.append("content modifiers after ',' (Snort 3 syntax)")
                v = v[:q_end + 1]
            pattern = _content_bytes(_unquote(v, source, "content"), source)
            if not pattern:
                raise RuleError("empty content", source)
            last_content = {"pattern": pattern, "negated": neg, "nocase": False, "offset": 0, "depth": None,
                            "distance": None, "within": None, "endswith": False, "startswith": False,
                            "buffer": cur_buffer, "abs": False}
            els.append(last_content)
        elif name in _CONTENT_MODS:
            if last_content is None:
                raise RuleError(f"{name} before any content", source)
            c = last_content
            if name == "nocase":
                c["nocase"] = True
            elif name == "startswith":
                c["startswith"] = True
            elif name == "endswith":
                c["endswith"] = True
            elif name in ("depth", "offset", "distance", "within"):
                if value is None:
                    raise RuleError(f"{name} needs a value", source)
                if not _is_int(value):
                    reasons.append(f"{name} from a variable")
                    continue
                c[name] = _int(value, source, name, -65535, 1 << 20)
                if name in ("depth", "offset"):
                    c["abs"] = True
        elif name in _CONTENT_MODIFIERS:
            if last_content is None:
                raise RuleError(f"{name} before any content", source)
            last_content["buffer"] = _CONTENT_MODIFIERS[name]
        elif name in HTTP_BUFFERS or name in _STICKY_ALIASES:
            cur_buffer = _STICKY_ALIASES.get(name, name)
            last_content = None
        elif name == "pkt_data":
            cur_buffer = PKT
            last_content = None
        elif name in _RESPONSE_BUFFERS:
            reasons.append(f"buffer {name}")
        elif name == "pcre":
            if value is None:
                raise RuleError("pcre needs a value", source)
            p = _compile_pcre(value, source, reasons, cur_buffer)
            if p is not None:
                els.append(p)
            last_content = None
        elif name == "isdataat":
            parts = [p.strip() for p in (value or "").split(",")]
            at_s = parts[0]
            neg = at_s.startswith("!")
            at_s = at_s.lstrip("!").strip()
            if not _is_int(at_s):
                reasons.append("isdataat from a variable")
                continue
            at = _int(at_s, source, "isdataat", 0, 1 << 20)
            rel = False
            for p in parts[1:]:
                if p.lower() == "relative":
                    rel = True
                elif p.lower() != "rawbytes":
                    raise RuleError(f"isdataat: unknown argument {p[:40]!r}", source)
            els.append(IsDataAt(at, rel, neg, cur_buffer))
            last_content = None
        elif name == "byte_test":
            parts = _byte_args(value, source, "byte_test")
            if len(parts) < 4:
                raise RuleError("byte_test needs nbytes, operator, value, offset", source)
            op = parts[1].replace(" ", "")
            neg = op.startswith("!") and len(op) > 1
            if neg:
                op = op[1:]
            if op not in _BYTE_OPS:
                raise RuleError(f"byte_test: bad operator {parts[1][:10]!r}", source)
            if not _is_int(parts[2]) or not _is_int(parts[3]):
                reasons.append("byte_test with a variable")
                continue
            fl = _byte_flags(parts[4:], source, "byte_test", reasons)
            if fl is None:
                continue
            nb = _int(parts[0], source, "byte_test nbytes", 1, 10 if fl["base"] else 8)
            els.append(ByteTest(nb, op, _int(parts[2], source, "byte_test value", -(1 << 63), (1 << 64) - 1),
                                _int(parts[3], source, "byte_test offset", -65535, 65535), fl["relative"],
                                fl["big"], fl["base"], fl["bitmask"], neg, cur_buffer))
            last_content = None
        elif name == "byte_jump":
            parts = _byte_args(value, source, "byte_jump")
            if not _is_int(parts[1]):
                reasons.append("byte_jump with a variable")
                continue
            fl = _byte_flags(parts[2:], source, "byte_jump", reasons)
            if fl is None:
                continue
            nb = _int(parts[0], source, "byte_jump nbytes", 1, 10 if fl["base"] else 8)
            els.append(ByteJump(nb, _int(parts[1], source, "byte_jump offset", -65535, 65535), fl["relative"],
                                fl["big"], fl["base"], fl["multiplier"], fl["align"], fl["from_beginning"],
                                fl["from_end"], fl["post_offset"], fl["bitmask"], cur_buffer))
            last_content = None
        elif name == "dsize":
            d = (value or "").replace(" ", "")
            try:
                if "<>" in d:
                    a, b = d.split("<>")
                    rule.dsize = ("<>", int(a), int(b))
                elif d[:2] in ("<=", ">="):
                    rule.dsize = (d[:2], int(d[2:]), 0)
                elif d[:1] in "<>!":
                    rule.dsize = (d[:1], int(d[1:]), 0)
                else:
                    rule.dsize = ("=", int(d), 0)
            except (ValueError, IndexError):
                raise RuleError(f"bad dsize {str(value)[:40]!r}", source) from None
            rule.packet_only = True
        elif name == "sid":
            sid = _int(value, source, "sid", 0, (1 << 32) - 1)
        elif name == "rev":
            rule.rev = _int(value, source, "rev", 0, (1 << 32) - 1)
        elif name == "gid":
            rule.gid = _int(value, source, "gid", 0, (1 << 32) - 1)
        elif name == "msg":
            rule.msg = _unescape(_unquote(value or "", source, "msg"))
        elif name == "classtype":
            rule.classtype = (value or "").strip()
        elif name == "flow":
            for part in (value or "").split(","):
                p = part.strip().lower()
                if p in _FLOW_SIDE:
                    rule.side = _FLOW_SIDE[p]
                elif p == "established":
                    rule.established = True
                elif p == "not_established":
                    rule.established = False
                elif p == "no_stream":
                    rule.packet_only = True
                elif p == "only_stream":
                    rule.stream_only = True
                elif p != "stateless":
                    reasons.append(f"flow:{p[:20]}")
        elif name == "flowbits":
            verb, _, names = (value or "").partition(",")
            verb = verb.strip().lower()
            names = names.strip()
            if verb == "noalert":
                rule.noalert = True
            elif verb in ("set", "isset", "isnotset", "unset", "toggle"):
                if not names:
                    raise RuleError(f"flowbits:{verb} needs a name", source)
                all_of = "|" not in names
                bits = tuple(b.strip() for b in names.replace("|", "&").split("&") if b.strip())
                if not bits:
                    raise RuleError(f"flowbits:{verb} needs a name", source)
                if not all_of and verb not in ("isset", "isnotset"):
                    raise RuleError(f"flowbits:{verb} does not take an '|' list", source)
                flowbits.append((verb, bits, all_of))
            else:
                reasons.append(f"flowbits:{verb[:20]}")
        elif name == "noalert":
            rule.noalert = True
        elif name in IGNORED:
            pass
        else:
            reasons.append(name[:40])
    if sid is None:
        raise RuleError("the rule has no sid", source)
    rule.sid = sid
    rule.flowbits = tuple(flowbits)
    built: list[Element] = []
    for e in els:
        if not isinstance(e, dict):
            built.append(e)
            continue
        c = e
        rel = c["distance"] is not None or c["within"] is not None
        if rel and c["abs"]:
            reasons.append("offset/depth with distance/within")
            continue
        if c["startswith"]:
            if rel or c["abs"]:
                reasons.append("startswith with offset/depth/distance/within")
                continue
            c["depth"] = len(c["pattern"])
        if c["offset"] < 0:
            raise RuleError("negative offset", source)
        if c["depth"] is not None and c["depth"] < len(c["pattern"]):
            raise RuleError(f"depth {c['depth']} shorter than its content ({len(c['pattern'])} bytes)", source)
        if c["within"] is not None and c["within"] < len(c["pattern"]):
            raise RuleError(f"within {c['within']} shorter than its content ({len(c['pattern'])} bytes)", source)
        built.append(Content(c["pattern"], c["nocase"], c["offset"], c["depth"], c["negated"], c["distance"],
                             c["within"], c["endswith"], c["buffer"]))
    groups: dict[str, list[Element]] = {}
    for e in built:
        groups.setdefault(e.buffer, []).append(e)
    rule.buffers = tuple((b, tuple(v)) for b, v in groups.items())
    rule.contents = tuple(e for e in groups.get(PKT, ()) if isinstance(e, Content))
    has_http = any(b in HTTP_BUFFERS for b in groups)
    if has_http and PKT in groups:
        reasons.append("payload and HTTP buffers in one rule")
    if has_http and rule.proto not in ("tcp", "http", "ip"):
        reasons.append(f"HTTP buffers on protocol {rule.proto}")
    if has_http and rule.side == TO_CLIENT:
        reasons.append("HTTP request buffers with flow:to_client")
    if has_http and rule.packet_only:
        reasons.append("HTTP buffers with dsize/no_stream")
    if rule.packet_only and rule.stream_only:
        reasons.append("flow:only_stream with dsize/no_stream")
    if not reasons and not built and not rule.flowbits and rule.dsize is None and rule.proto != "http":
        reasons.append("no payload keyword")
    if reasons:
        return SkippedRule(source, sid, tuple(dict.fromkeys(reasons)), text)
    return rule


def parse_rules(text: str | Iterable[str], filename: str = "<rules>", vars: Mapping[str, str] | None = None,
                strict: bool = True) -> RuleSet:
    """Parse rule text (a string, or an iterable of lines). Comments (``#``) and blank lines are
    skipped; ``#alert ...`` lines count as :attr:`RuleSet.disabled`; a line ending in ``\\`` goes on on
    the next. Unsupported rules are skipped with a warning; malformed ones raise :class:`RuleError`
    (or, with ``strict=False``, are skipped with reason ``malformed: ...``)."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    rs = RuleSet()
    pending = ""
    start = 0
    for no, raw in enumerate(lines, 1):
        line = str(raw).rstrip("\r\n")
        if pending:
            line = pending + line.lstrip()
        else:
            start = no
        if line.endswith("\\"):
            pending = line[:-1]
            if len(pending) > MAX_RULE:
                raise RuleError(f"rule longer than {MAX_RULE} characters (the documented bound)",
                                f"{filename}:{start}")
            continue
        pending = ""
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if s.lstrip("# ").lower().startswith(_RULE_STARTS):
                rs.disabled += 1
            continue
        source = f"{filename}:{start}"
        try:
            r = parse_rule(s, source, vars)
        except RuleError as e:
            if strict:
                raise
            r = SkippedRule(source, None, (f"malformed: {str(e)[len(source) + 2:] if str(e).startswith(source) else e}",), s)
        if isinstance(r, SkippedRule):
            log.warning("%s: rule sid %s skipped: unsupported %s", source, r.sid, ", ".join(r.reasons))
            rs.skipped.append(r)
        else:
            rs.rules.append(r)
    if pending:
        raise RuleError("the last rule ends with a line continuation '\\'", f"{filename}:{start}")
    return rs


def load_rules(path: str | os.PathLike[str], vars: Mapping[str, str] | None = None, strict: bool = True) -> RuleSet:
    """Load a rules file (see :func:`parse_rules`)."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise RuleError(f"cannot read the rules file: {e.strerror}", p) from None
    rs = parse_rules(text, p, vars, strict)
    if rs.skipped:
        log.warning("%s: %s (%s)", p, rs.summary(),
                    ", ".join(f"{k} x{v}" for k, v in rs.skip_reasons().items()))
    return rs


# --- inspection: one rule's elements against one buffer --------------------------------------------
#: Steps one :func:`inspect` call may take before it gives up (no match): backtracking over many
#: occurrences of a relative content is bounded, like Suricata's inspection recursion limit.
INSPECT_BUDGET = 3000


def _number(buf: bytes, pos: int, nb: int, big: bool, base: int) -> int | None:
    raw = buf[pos:pos + nb]
    if len(raw) < nb:
        return None
    if not base:
        return int.from_bytes(raw, "big" if big else "little")
    digits = "0123456789abcdef"[:base]
    k = 0
    low = raw.lower()
    while k < len(low) and chr(low[k]) in digits:
        k += 1
    if not k:  # strtoul semantics: a number must start here
        return None
    return int(low[:k], base)


def _mask(v: int, mask: int) -> int:
    if mask:
        v &= mask
        v >>= (mask & -mask).bit_length() - 1
    return v


def _compare(v: int, op: str, value: int) -> bool:
    if op == "=":
        return v == value
    if op == "!":
        return v != value
    if op == "<":
        return v < value
    if op == ">":
        return v > value
    if op == "<=":
        return v <= value
    if op == ">=":
        return v >= value
    if op == "&":
        return bool(v & value)
    return bool(v ^ value)  # "^"


class _Inspection:
    """One run of :func:`inspect` (the buffer, its lowercased copy on demand, the step budget)."""

    __slots__ = ("els", "buf", "low", "start", "n", "budget", "backtrack")

    def __init__(self, els: tuple[Element, ...], buf: bytes, start: int) -> None:
        self.els = els
        self.buf = buf
        self.low: bytes | None = None
        self.start = start
        self.n = len(buf)
        self.budget = INSPECT_BUDGET
        # After element i, is some later element relative? Then other occurrences of i may matter.
        rel = [False] * (len(els) + 1)
        for i in range(len(els) - 1, -1, -1):
            e = els[i]
            r = e.relative if isinstance(e, Content) else getattr(e, "relative", False)
            rel[i] = rel[i + 1] or (r and i > 0)
        self.backtrack = [rel[i + 1] for i in range(len(els))] + [False]

    def run(self, i: int, cur: int) -> bool:
        els = self.els
        if i == len(els):
            return True
        self.budget -= 1
        if self.budget < 0:
            return False
        e = els[i]
        n = self.n
        if isinstance(e, Content):
            hay = self.buf
            pat = e.pattern
            if e.nocase:
                if self.low is None:
                    self.low = self.buf.lower()
                hay = self.low
                pat = pat.lower()
            if e.distance is not None or e.within is not None:
                lo = cur + (e.distance or 0)
                hi = n if e.within is None else lo + e.within
                lo = max(lo, 0)
            else:
                lo = max(e.offset - self.start, 0)
                hi = n if e.depth is None else e.offset + e.depth - self.start
            hi = min(hi, n)
            if e.endswith:
                s = n - len(pat)
                pos = s if s >= lo and n <= hi and hay.endswith(pat) else -1
            else:
                pos = hay.find(pat, lo, hi) if hi - lo >= len(pat) else -1
            if e.negated:
                return pos < 0 and self.run(i + 1, cur)
            bt = self.backtrack[i]
            while pos >= 0:
                if self.run(i + 1, pos + len(pat)):
                    return True
                if not bt or e.endswith or self.budget < 0:
                    return False
                self.budget -= 1
                pos = hay.find(pat, pos + 1, hi)
            return False
        if isinstance(e, Pcre):
            base = cur if e.relative else 0
            region = self.buf[base:] if base else self.buf
            m = e.regex.search(region)
            if e.negated:
                return m is None and self.run(i + 1, cur)
            bt = self.backtrack[i]
            while m is not None:
                if self.run(i + 1, base + m.end()):
                    return True
                if not bt or self.budget < 0 or m.start() + 1 > len(region):
                    return False
                self.budget -= 1
                m = e.regex.search(region, m.start() + 1)
            return False
        if isinstance(e, IsDataAt):
            ok = (cur + e.at < n) if e.relative else (self.start + n > e.at)
            return ok != e.negated and self.run(i + 1, cur)
        if isinstance(e, ByteTest):
            pos = (cur if e.relative else -self.start) + e.offset
            v = _number(self.buf, pos, e.nbytes, e.big, e.base) if pos >= 0 else None
            if v is None:
                return False
            ok = _compare(_mask(v, e.bitmask), e.op, e.value)
            return ok != e.negated and self.run(i + 1, cur)
        # ByteJump
        pos = (cur if e.relative else -self.start) + e.offset
        v = _number(self.buf, pos, e.nbytes, e.big, e.base) if pos >= 0 else None
        if v is None:
            return False
        v = _mask(v, e.bitmask) * e.multiplier
        if e.align and v % 4:
            v += 4 - v % 4
        if e.from_beginning:
            at = -self.start + v
        elif e.from_end:
            at = n + v
        else:
            at = pos + e.nbytes + v
        at += e.post_offset
        if at < 0 or at > n:
            return False
        return self.run(i + 1, at)


def inspect(elements: tuple[Element, ...], buf: bytes, start: int = 0) -> bool:
    """Do ``elements`` (one buffer's keywords, in rule order) all match in ``buf``? ``start`` is the
    stream offset of ``buf[0]`` (absolute ``offset``/``depth``/``isdataat`` count from the stream's
    start; bytes before ``start`` are gone). Bounded by :data:`INSPECT_BUDGET` steps."""
    if not elements:
        return True
    return _Inspection(elements, buf, start).run(0, 0)


# --- the prefilter ------------------------------------------------------------------------------------
def hyperscan_available() -> bool:
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True


#: The multi-pattern engine :class:`Matcher` uses by default: ``"hyperscan"`` when the package
#: imports (5-16x ahocorasick-rs here: benchmarks/nf_ids.py), else ``"ahocorasick"``.
DEFAULT_BACKEND = "hyperscan" if hyperscan_available() else "ahocorasick"
#: Every multi-pattern engine (the IDS's ``matcher`` config).
MATCHERS = ("hyperscan", "ahocorasick")


class Literals:
    """A set of byte literals searched in one pass: ``scan(data)`` yields ``(index, start, end)`` of
    every occurrence (overlapping). Case-insensitive literals match any case."""

    def __init__(self, pats: list[tuple[bytes, bool]], backend: str) -> None:
        self.backend = backend
        self.n = len(pats)
        if not pats:
            self._scan = None
            return
        if backend == "hyperscan":
            import hyperscan

            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            flags = [hyperscan.HS_FLAG_CASELESS if nc else 0 for _, nc in pats]
            db.compile(expressions=[p for p, _ in pats], ids=list(range(len(pats))), flags=flags, literal=True)
            lens = [len(p) for p, _ in pats]
            db.scratch = hyperscan.Scratch(db)
            found: list[tuple[int, int, int]] = []
            add = found.append

            def on(i: int, _frm: int, to: int, _flags: int, _ctx: Any) -> None:
                add((i, to - lens[i], to))

            dbscan = db.scan

            def scan(data: bytes) -> list[tuple[int, int, int]]:
                dbscan(data, match_event_handler=on)
                out = found[:]
                found.clear()
                return out

            self._scan = scan
        elif backend == "ahocorasick":
            import ahocorasick_rs

            impl = ahocorasick_rs.Implementation.DFA
            cs = [(i, p) for i, (p, nc) in enumerate(pats) if not nc]
            ci = [(i, p.lower()) for i, (p, nc) in enumerate(pats) if nc]
            acs = ahocorasick_rs.BytesAhoCorasick([p for _, p in cs], implementation=impl) if cs else None
            aci = ahocorasick_rs.BytesAhoCorasick([p for _, p in ci], implementation=impl) if ci else None
            mcs = [i for i, _ in cs]
            mci = [i for i, _ in ci]

            def scan(data: bytes) -> list[tuple[int, int, int]]:
                out: list[tuple[int, int, int]] = []
                if acs is not None:
                    out += [(mcs[k], s, e) for k, s, e in acs.find_matches_as_indexes(data, overlapping=True)]
                if aci is not None:
                    out += [(mci[k], s, e) for k, s, e in aci.find_matches_as_indexes(data.lower(), overlapping=True)]
                return out

            self._scan = scan
        else:
            raise ValueError(f"unknown matcher backend {backend!r} (hyperscan, ahocorasick)")

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        return self._scan(data) if self._scan is not None else []


class Matcher:
    """The prefilter: every payload content of a rule set, matched over streams in one pass.

    A *direction state* is ``[pos, tail, seen, pids]``: the bytes of the stream consumed so far, the
    last ``longest - 1`` bytes (so a pattern split across chunks is found in ``tail + chunk``), the
    content *items* (a pattern with its absolute window) seen so far and the patterns seen so far.
    :meth:`feed` updates it and returns the items first seen in the chunk (and leaves the patterns
    that occur in the chunk's new bytes in :attr:`hits`); :meth:`fired` turns items into the
    *simple* rules (non-relative contents only) that now match; :meth:`candidates` gives the other
    rules worth a full :func:`inspect`: all their positive patterns seen, one of them in this chunk.
    """

    def __init__(self, rules: Iterable[Rule], backend: str | None = None) -> None:
        self.rules: list[Rule] = list(rules)
        self.backend = backend or DEFAULT_BACKEND
        pat_ids: dict[tuple[bytes, bool], int] = {}
        item_ids: dict[tuple[int, int, int | None], int] = {}
        self.item_window: list[tuple[int, int]] = []  # item -> (start_min, end_max or huge)
        self.pat_items: list[list[int]] = []  # pattern -> items
        self.item_rules: list[list[int]] = []  # item -> simple rules where it is a positive content
        self.rule_pos: list[frozenset[int]] = []
        self.rule_neg: list[frozenset[int]] = []
        #: Complex rules: pattern -> rules; rule -> its positive patterns; rules with none.
        self.pat_complex: list[list[int]] = []
        self.rule_pids: list[frozenset[int]] = []
        self.always: list[int] = []
        self.simple: list[bool] = []
        pats: list[tuple[bytes, bool]] = []
        bounded = True
        limit = 0

        def pid_of(c: Content) -> int:
            pat = c.pattern.lower() if c.nocase else c.pattern
            pk = (pat, c.nocase)
            pid = pat_ids.get(pk)
            if pid is None:
                pid = pat_ids[pk] = len(self.pat_items)
                self.pat_items.append([])
                self.pat_complex.append([])
                pats.append(pk)
            return pid

        for ri, r in enumerate(self.rules):
            simple = r.simple
            self.simple.append(simple)
            pos: set[int] = set()
            neg: set[int] = set()
            pids: set[int] = set()
            for c in r.contents:
                pid = pid_of(c)
                if not simple:
                    if not c.negated:
                        pids.add(pid)
                    continue
                ik = (pid, c.offset, c.end_max)
                iid = item_ids.get(ik)
                if iid is None:
                    iid = item_ids[ik] = len(self.item_window)
                    self.item_window.append((c.offset, c.end_max if c.end_max is not None else 1 << 62))
                    self.item_rules.append([])
                    self.pat_items[pid].append(iid)
                (neg if c.negated else pos).add(iid)
                if c.end_max is None:
                    bounded = False
                else:
                    limit = max(limit, c.end_max)
            for iid in pos:
                self.item_rules[iid].append(ri)
            self.rule_pos.append(frozenset(pos))
            self.rule_neg.append(frozenset(neg))
            self.rule_pids.append(frozenset(pids))
            if not simple:
                bounded = False
                if pids:
                    for pid in pids:
                        self.pat_complex[pid].append(ri)
                else:
                    self.always.append(ri)
        self.longest = max((len(p) for p, _ in pats), default=1)
        self.keep = self.longest - 1
        #: No item can match past this stream offset (None: unbounded), so scanning can stop there.
        self.scan_limit: int | None = limit if bounded else None
        self._lit = Literals(pats, self.backend)
        self.patterns = len(pats)
        self.complex = len(self.rules) - sum(self.simple)
        #: Patterns that occurred in the new bytes of the last :meth:`feed`.
        self.hits: set[int] = set()

    @staticmethod
    def new_state() -> list[Any]:
        return [0, b"", set(), set()]

    def feed(self, state: list[Any], data: bytes) -> list[int]:
        """Consume the next ``data`` of a stream direction; return the items first seen in it."""
        pos, tail, seen, pids = state[0], state[1], state[2], state[3]
        state[0] = pos + len(data)
        self.hits = hits = set()
        lim = self.scan_limit
        if lim is not None and pos >= lim:
            return []
        window = tail + data if tail else data
        base = pos - len(tail)  # stream offset of window[0]
        new_from = len(tail)  # matches must end past here (the rest were found in earlier chunks)
        keep = self.keep
        state[1] = window[-keep:] if keep and len(window) > keep else (window if keep else b"")
        found: list[int] = []
        pat_items = self.pat_items
        win = self.item_window
        for k, s, e in self._lit.scan(window):
            if e <= new_from:
                continue
            hits.add(k)
            for iid in pat_items[k]:
                if iid in seen:
                    continue
                lo, hi = win[iid]
                if base + s >= lo and base + e <= hi:
                    seen.add(iid)
                    found.append(iid)
        if hits:
            pids |= hits
        return found

    def fired(self, found: Iterable[int], seen: set[int]) -> list[int]:
        """Simple rules (indexes) whose positive contents are all in ``seen``, completed by
        ``found``, and none of whose negated contents is in ``seen``."""
        out: list[int] = []
        for iid in found:
            for ri in self.item_rules[iid]:
                if ri not in out and self.rule_pos[ri] <= seen and not (self.rule_neg[ri] & seen):
                    out.append(ri)
        return out

    def candidates(self, state: list[Any]) -> list[int]:
        """Complex rules to inspect after the last :meth:`feed` of ``state``: one of their positive
        patterns occurred in the new bytes and all of them were seen (plus the pattern-less ones)."""
        hits = self.hits
        out = list(self.always)
        if hits:
            pids = state[3]
            pc = self.pat_complex
            rp = self.rule_pids
            done: set[int] = set()
            for k in hits:
                for ri in pc[k]:
                    if ri not in done:
                        done.add(ri)
                        if rp[ri] <= pids:
                            out.append(ri)
        return out

    def match_once(self, data: bytes) -> list[int]:
        """Simple rules whose contents all match in ``data`` alone (a UDP datagram, say)."""
        st = self.new_state()
        found = self.feed(st, data)
        return self.fired(found, st[2])
