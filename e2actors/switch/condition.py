"""E2 conditions: the pcap-filter language plus what an NFV policy needs beyond headers.

A condition labels a policy edge (and a switch route). It is a pcap-filter expression (exactly
libpcap's language and semantics, see :mod:`e2actors.packet.filter`) in which three more
primaries may appear wherever a pcap primitive may, combined with ``and``/``or``/``not``/``( )``
(``&&``, ``||``, ``!`` too) under the pcap rules (``and`` and ``or`` have the same precedence and
group to the left; ``not`` binds tighter)::

    meta.KEY == VALUE          meta.KEY != VALUE         (also a single "=")
    meta.KEY < N   <= N   > N   >= N                     (numbers only)
    meta.KEY in (V1, V2, ...)
    meta.KEY exists
    domain NAME                                         (NAME: a word such as youtube.com, or quoted)

``KEY`` is letters, digits, ``_`` and ``-``. ``VALUE`` is a ``"double"`` or ``'single'`` quoted
string (backslash escapes the quote and itself), an integer (decimal, or hex with ``0x``; a
leading ``-`` is allowed), a decimal number with a fraction (``0.5``), ``true`` or ``false``.

Semantics. Metadata tests read the packet's metadata dict (``Packet.meta_if_any``; absent = empty) and
are typed: a string equals only a string, ``true``/``false`` only a bool, a number only an int or
float (never a bool). ``!=`` is exactly ``not ==`` (true when the key is missing); ``<``... are
false when the key is missing or not a number; ``in`` is true when ``==`` holds for one of the
values. ``domain NAME`` is true when the host of the packet's flow (HTTP Host or TLS SNI, passed
by the caller, see :func:`normalize_host`) equals NAME or ends with ``"." + NAME``, ignoring case
and a trailing dot: ``domain youtube.com`` matches ``www.youtube.com``, not ``notyoutube.com``.
With no host (``host=None``) every ``domain`` test is false.

``domain`` is a keyword only where it starts a primary and is followed by a name: ``port domain``
and ``udp port 53 or domain`` keep their pcap meaning (the DNS port), and ``\\domain`` is always
the pcap word. A word starting with ``meta.`` is always a metadata key.

Everything else is pcap-filter, unchanged: abbreviations (``tcp and (src port 80 or 443) and not
meta.verdict == "unsafe"``), ``vlan`` shifting what follows, and BPF's rule that a load past the
captured bytes rejects the packet (the condition is false) unless the outcome was already decided
(``tcp or ip[100] = 1``). A pure pcap expression matches exactly what :func:`compile_filter` (and
tcpdump) matches. The empty condition is always true.

Errors raise :class:`~e2actors.errors.FilterError` with the 1-based column in the whole condition
text, for the E2 parts and the pcap parts alike.

Flow invariance (``Condition.flow_invariant``): True when the result can only depend on what is
the same for every packet of one direction of a flow, so a switch may cache it per flow:
protocol names (``tcp``, ``ip6``...), ``host``/``net``/``port``/``portrange``/``proto``,
``ether host/src/dst`` and link-layer ``broadcast``/``multicast`` (these read MAC addresses:
``uses_macs`` tells a cache to put them in its key), ``ip``/``ip6`` ``broadcast``/``multicast``,
``vlan [ID]``, ``ether proto``, and ``domain`` (the flow's host is per flow). Not invariant:
every byte-load relation (``tcp[13] & 2 != 0``, ``ip[8] < 64``), ``len``, ``less``/``greater``,
and metadata tests. What stays the caller's duty (see :mod:`e2actors.switch.classifier`): the
flow key must pin the header layout the pcap code reads — the classifier caches only unfragmented
IP packets, IPv6 ones only without extension headers, never non-IP frames.

The whole condition compiles to one generated Python function, like a filter
(``Condition.source`` shows it).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional

from e2actors.errors import FilterError
from e2actors.packet import filter_parser as P
from e2actors.packet.filter_compile import CodeGen, Compiler
from e2actors.packet.filter_lexer import Token, lex_token

__all__ = ["CODE_NAMES", "Condition", "LOAD_ERRORS", "compile_condition", "normalize_host", "parse_condition",
           "MetaTest", "Domain", "tokenize_condition"]

#: What generated condition code may raise on a short or odd packet (the test is then false).
LOAD_ERRORS = (IndexError, struct.error, ZeroDivisionError)
_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_NAN = math.nan
_EMPTY: dict = {}


def _lsh(a: int, b: int) -> int:
    return (a << b) & 0xFFFFFFFF if b < 32 else 0


#: The names the code generated from the filter compiler's IR runs with (its loads and shifts).
CODE_NAMES: dict[str, Any] = {"_ERRORS": LOAD_ERRORS, "_u16": _u16, "_u32": _u32, "_lsh": _lsh}


def _num(x: Any) -> Any:
    """A metadata value as a number for comparisons; NaN (compares false) if it is not one."""
    t = type(x)
    return x if t is int or t is float else _NAN


def normalize_host(host: Optional[str | bytes]) -> Optional[str]:
    """The form a condition expects for a flow's host: lowercase, no ``:port``, no trailing dot.

    ``"WWW.YouTube.com:443"`` -> ``"www.youtube.com"``; ``"[2001:db8::1]:80"`` -> ``"2001:db8::1"``;
    None or an empty name -> None."""
    if host is None:
        return None
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        h = h[1:end] if end > 0 else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    h = h.rstrip(".")
    return h or None


# --- lexer -----------------------------------------------------------------------------------------
_RE_META = re.compile(r"meta\.([A-Za-z0-9_-]+)")
_RE_VALUE_NUM = re.compile(r"-?(?:0[xX][0-9A-Fa-f]+|[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)")
_WORD = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_META_OPS = {"=", "NEQ", "<", "LEQ", ">", "GEQ"}


def _value_position(toks: list[Token]) -> bool:
    """True if the next token is a metadata value (after ``meta.K OP``, ``in (`` or a ``,``)."""
    # Minus signs in front of a value position keep it one (walked back in a loop, not by
    # recursion: a long run of them is hostile input, not a reason to overflow the stack).
    end = len(toks)
    while end and toks[end - 1].kind == "-":
        end -= 1
    if end == 0:
        return False
    last = toks[end - 1]
    if last.kind in _META_OPS:
        return end >= 2 and toks[end - 2].kind == "META"
    if last.kind == ",":
        return True
    if last.kind == "(":
        return end >= 3 and toks[end - 2].kind == "ID" and toks[end - 2].text == "in" \
            and toks[end - 3].kind == "META"
    return False


def tokenize_condition(text: str) -> list[Token]:
    """Tokens of a condition: the pcap-filter tokens plus ``META`` (value: the key), ``STRING``
    (value: the unquoted text), ``VALUE`` (a metadata number), ``,`` and ``domain``."""
    toks: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        col = i + 1
        if c in " \t\r\n":
            i += 1
            continue
        if c in "\"'":
            j, out = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n and text[j + 1] in (c, "\\"):
                    j += 1
                out.append(text[j])
                j += 1
            if j >= n:
                raise FilterError("unterminated string", text, col)
            toks.append(Token("STRING", "".join(out), col, text[i:j + 1]))
            i = j + 1
            continue
        if c == ",":
            toks.append(Token(",", ",", col, ","))
            i += 1
            continue
        if text.startswith("meta.", i):
            m = _RE_META.match(text, i)
            if not m:
                raise FilterError("expected a metadata key (letters, digits, _ and -) after "
                                  "'meta.'", text, col + 5)
            if m.end() < n and text[m.end()] == ".":
                raise FilterError("a metadata key is letters, digits, _ and -", text,
                                  m.end() + 1)
            toks.append(Token("META", m.group(1), col, m.group(0)))
            i = m.end()
            continue
        if _value_position(toks):
            m = _RE_VALUE_NUM.match(text, i)
            if m and (m.end() >= n or text[m.end()] not in _WORD):
                s = m.group(0)
                neg = s.startswith("-")
                body = s[1:] if neg else s
                if body[:2] in ("0x", "0X"):
                    v: Any = int(body, 16)
                elif any(ch in body for ch in ".eE"):
                    v = float(body)
                else:
                    v = int(body, 10)
                toks.append(Token("VALUE", -v if neg else v, col, s))
                i = m.end()
                continue
        tok, i = lex_token(text, i)
        toks.append(tok)
    toks.append(Token("EOF", None, n + 1, ""))
    # ``domain NAME``: a keyword only when a name follows (else it is pcap's port name)
    for k, t in enumerate(toks[:-1]):
        if t.kind == "ID" and t.text == "domain" and toks[k + 1].kind in ("ID", "HID", "STRING"):
            toks[k] = Token("domain", "domain", t.column, t.text)
    return toks


# --- syntax tree -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetaTest:
    """``meta.KEY OP ...``: ``op`` is one of ``== != < <= > >= in exists``; ``values`` the
    constants (one for a comparison, several for ``in``, none for ``exists``)."""

    key: str
    op: str
    values: tuple
    column: int


@dataclass(frozen=True)
class Domain:
    """``domain NAME`` (``name`` lowercased, without a trailing dot)."""

    name: str
    column: int


_OPS = {"=": "==", "NEQ": "!=", "<": "<", "LEQ": "<=", ">": ">", "GEQ": ">="}


class _Parser(P.Parser):
    """libpcap's grammar (the base class) with the E2 primaries added to ``rterm``."""

    def __init__(self, text: str) -> None:  # noqa: D107 - replaces the pcap tokenizer
        self.expr = text
        self.toks = tokenize_condition(text)
        self.i = 0

    def rterm(self, q):  # type: ignore[override]
        t = self.tok
        if t.kind == "META":
            return self.meta_test(), None
        if t.kind == "domain":
            self.advance()
            nt = self.advance()
            name = str(nt.value).strip().lower().rstrip(".")
            if not name or any(ch.isspace() for ch in name):
                raise self.error("a domain name cannot be empty or contain spaces", nt)
            return Domain(name, t.column), None
        if t.kind == "ID" and t.text == "domain":
            raise self.error("expected a domain name after 'domain'", self.peek())
        if t.kind in ("STRING", ","):
            raise self.error()
        return super().rterm(q)

    def meta_test(self) -> MetaTest:
        key_tok = self.advance()
        t = self.tok
        if t.kind in _OPS:
            self.advance()
            op = _OPS[t.kind]
            v = self.meta_value()
            if op in ("<", "<=", ">", ">=") and not _is_number(v):
                raise self.error(f"'{t.text}' compares numbers", self.toks[self.i - 1])
            return MetaTest(key_tok.value, op, (v,), key_tok.column)  # type: ignore[arg-type]
        if t.kind == "ID" and t.text == "in":
            self.advance()
            self.expect("(")
            vals = [self.meta_value()]
            while self.tok.kind == ",":
                self.advance()
                vals.append(self.meta_value())
            self.expect(")")
            return MetaTest(key_tok.value, "in", tuple(vals), key_tok.column)  # type: ignore[arg-type]
        if t.kind == "ID" and t.text == "exists":
            self.advance()
            return MetaTest(key_tok.value, "exists", (), key_tok.column)  # type: ignore[arg-type]
        raise self.error(f"expected ==, !=, <, <=, >, >=, in or exists after {key_tok.text!r}"
                         + ("" if t.kind == "EOF" else f", not {t.text!r}"), t)

    def meta_value(self) -> Any:
        t = self.tok
        if t.kind in ("STRING", "VALUE"):
            self.advance()
            return t.value
        if t.kind == "ID" and t.text in ("true", "false"):
            self.advance()
            return t.text == "true"
        raise self.error("expected a value: a quoted string, a number, true or false"
                         + ("" if t.kind == "EOF" else f", not {t.text!r}"), t)


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def parse_condition(text: str) -> P.Node:
    """The syntax tree of a condition (pcap nodes plus :class:`MetaTest` and :class:`Domain`)."""
    if not isinstance(text, str):
        raise TypeError("a condition must be a str")
    return _Parser(text).parse()


# --- IR and code generation --------------------------------------------------------------------------
class _Compiler(Compiler):
    def node(self, n):  # type: ignore[override]
        if isinstance(n, MetaTest):
            if n.op == "!=":
                return ("not", ("meta", n.key, "==", n.values))
            return ("meta", n.key, n.op, n.values)
        if isinstance(n, Domain):
            return ("domain", n.name)
        return super().node(n)


def _meta_eq(key: str, values: tuple) -> str:
    get = f"m.get({key!r})"
    parts = []
    strs = tuple(v for v in values if isinstance(v, str))
    nums = tuple(v for v in values if _is_number(v))
    if strs:
        parts.append(f"({get}=={strs[0]!r})" if len(strs) == 1 else f"({get} in {strs!r})")
    if nums:
        parts.append(f"(_num({get})=={nums[0]!r})" if len(nums) == 1
                     else f"(_num({get}) in {nums!r})")
    for b in sorted({v for v in values if isinstance(v, bool)}):
        parts.append(f"({get} is {b!r})")
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


class _CGen(CodeGen):
    """The pcap generator plus the E2 atoms. ``bound``: generate domain atoms as the bound
    variable (see :meth:`Condition.eval3`) instead of tests of ``h``."""

    def __init__(self, reused=None, bound: bool = False) -> None:
        super().__init__(reused)
        self.bound = bound
        self.neg = False  # inside an odd number of ``not``

    def bool(self, ir, av):  # type: ignore[override]
        t = ir[0]
        if t == "not":
            self.neg = not self.neg
            try:
                return f"(not {self.bool(ir[1], av)})"
            finally:
                self.neg = not self.neg
        if t == "meta":
            key, op, values = ir[1], ir[2], ir[3]
            if op == "exists":
                return f"({key!r} in m)"
            if op in ("==", "in"):
                return _meta_eq(key, values)
            return f"(_num(m.get({key!r})){op}{values[0]!r})"
        if t == "domain":
            if self.bound:
                return "(not u)" if self.neg else "u"
            name = ir[1]
            return f"(h is not None and (h=={name!r} or h.endswith({'.' + name!r})))"
        return super().bool(ir, av)


def _gen(ir: tuple, bound: bool = False) -> str:
    first = _CGen(None, bound)
    first.bool(ir, {})
    return _CGen(first.hits, bound).bool(ir, {})


def _walk(ir: tuple):
    yield ir
    if ir[0] in ("and", "or"):
        yield from _walk(ir[1])
        yield from _walk(ir[2])
    elif ir[0] == "not":
        yield from _walk(ir[1])


_TEMPLATE = """\
def {signature}:
    d = p.data
{prelude}    try:
        if {expr}:
            return True
        return False
    except _ERRORS:
        return False
"""


# --- flow invariance --------------------------------------------------------------------------------
def _invariance(n: Any) -> tuple[bool, bool]:
    """(flow invariant, reads MAC addresses) of a syntax tree."""
    if isinstance(n, (P.And, P.Or)):
        a, am = _invariance(n.left)
        b, bm = _invariance(n.right)
        return a and b, am or bm
    if isinstance(n, P.Not):
        return _invariance(n.expr)
    if isinstance(n, P.Prim):
        q = n.qual
        if q is None:
            return False, False
        macs = n.kind == "EID" or q.proto == "link" and q.addr in ("host", "default")
        return q.addr in ("default", "host", "net", "port", "portrange", "proto"), macs
    if isinstance(n, P.Cast):
        return True, n.proto in ("default", "link")
    if isinstance(n, (P.Abbrev, P.Vlan, P.Empty, Domain)):
        return True, False
    return False, False  # Relation, LenCmp, MetaTest, anything new


class Condition:
    """A compiled condition: ``cond(pkt, host=None) -> bool``.

    ``pkt`` is a :class:`~e2actors.packet.packet.Packet` (``.data``, ``.wirelen`` and, when the
    condition tests metadata, ``.meta_if_any``); ``host`` the flow's host as :func:`normalize_host`
    gives it, or None. Attributes: ``text``, ``source`` (the generated Python), ``uses_domain``,
    ``uses_meta``, ``uses_len``, ``uses_macs``, ``flow_invariant``, ``always`` (the condition is
    true for every packet, e.g. the empty one) and ``fn`` (the raw function, for hot loops).
    """

    __slots__ = ("text", "source", "fn", "bound", "uses_domain", "uses_meta", "uses_len",
                 "uses_macs", "flow_invariant", "always", "ir")

    def __init__(self, text: str, netmask: int = 0) -> None:
        self.text = text
        tree = parse_condition(text)
        ir = _Compiler(text, netmask).node(tree)
        self.ir = ir
        kinds = {x[0] for x in _walk(ir)}
        self.uses_domain = "domain" in kinds
        self.uses_meta = "meta" in kinds
        self.always = ir == ("T",)
        self.flow_invariant, self.uses_macs = _invariance(tree)
        expr = _gen(ir)
        self.uses_len = bool(re.search(r"\bw\b", expr))
        prelude = ""
        if self.uses_len:
            prelude += "    w = p.wirelen\n"
        if self.uses_meta:
            prelude += "    m = p.meta_if_any or _EMPTY\n"
        src = _TEMPLATE.format(signature="cond(p, h=None)", expr=expr, prelude=prelude)
        if self.uses_domain:
            src += "\n" + _TEMPLATE.format(signature="bound(p, u)", expr=_gen(ir, bound=True), prelude=prelude)
        self.source = src
        ns: dict[str, Any] = {**CODE_NAMES, "_num": _num, "_EMPTY": _EMPTY}
        exec(compile(src, f"<condition {text!r}>", "exec"), ns)
        self.fn = ns["cond"]
        self.bound = ns.get("bound")

    def __call__(self, pkt: Any, host: Optional[str] = None) -> bool:
        return self.fn(pkt, host)

    def eval3(self, pkt: Any, host: Optional[str] = None) -> Optional[bool]:
        """True, False, or None when the outcome depends on a host that is not known yet
        (``host`` None and the condition tests ``domain``). Three-valued (Kleene) logic with each
        ``domain`` test unknown: evaluated with every domain literal false and then true; equal
        results are definite."""
        if host is not None or self.bound is None:
            return self.fn(pkt, host)
        lo = self.bound(pkt, False)
        if lo:
            return True
        return None if self.bound(pkt, True) else False

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def compile_condition(text: str, netmask: int = 0) -> Condition:
    """Compile an E2 condition (see the module docstring); raise FilterError with the column."""
    return Condition(text, netmask)
