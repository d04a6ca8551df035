"""Recursive-descent parser for the pcap-filter language, following libpcap's ``grammar.y``.

The parser builds a syntax tree; :mod:`e2actors.packet.filter_compile` turns it into a predicate.
Points of libpcap's grammar that we reproduce on purpose:

* ``and`` and ``or`` have the *same* precedence and group to the left: ``a or b and c`` is
  ``(a or b) and c``; ``not`` binds tighter.
* Abbreviations: after ``and``/``or`` (and inside ``( )`` that follow one) a bare value — a
  number, an address, a name, ``not`` value, or a parenthesized list of them — takes the
  qualifiers of the primitive before it: ``src port 80 or 443``, ``host a and not b``,
  ``port 80 or (443 or 8080)``. A parenthesized expression passes on the qualifiers that were in
  force before its ``(``.
* Arithmetic: ``|`` < ``&`` < ``<< >>`` < ``+ -`` < ``* /`` < unary ``-``, all left-associative;
  ``%`` and ``^`` have *no* precedence in libpcap's grammar, so bison always shifts on them:
  ``a % b * c`` is ``a % (b * c)`` and ``a + b ^ c`` is ``a + (b ^ c)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from e2actors.errors import FilterError
from e2actors.packet.filter_lexer import Token, tokenize

__all__ = [
    "parse", "Qual", "Node", "And", "Or", "Not", "Prim", "Abbrev", "Cast", "LenCmp", "Vlan",
    "Relation", "Num", "Len", "Load", "BinOp", "Neg", "Empty",
]

PNAMES = {
    "link", "ip", "arp", "rarp", "sctp", "tcp", "udp", "icmp", "igmp", "igrp", "pim", "vrrp",
    "carp", "atalk", "aarp", "decnet", "lat", "sca", "moprc", "mopdl", "ip6", "icmp6", "ah",
    "esp", "iso", "esis", "isis", "l1", "l2", "iih", "lsp", "snp", "psnp", "csnp", "clnp", "stp",
    "ipx", "netbeui", "radio",
}
DQUALS = {"src", "dst", "addr1", "addr2", "addr3", "addr4", "ra", "ta"}
AQUALS = {"host", "net", "port", "portrange"}
BINOPS = {"+", "-", "*", "/", "%", "&", "|", "^", "LSH", "RSH"}
RELOPS = {">": ">", "GEQ": ">=", "=": "==", "LEQ": "<=", "<": "<", "NEQ": "!="}
# bison precedence of the arithmetic operators; None: no precedence (always shift)
PREC: dict[str, Optional[int]] = {
    "|": 1, "&": 2, "LSH": 3, "RSH": 3, "+": 4, "-": 4, "*": 5, "/": 5, "%": None, "^": None,
}
UNSUPPORTED = {
    "protochain": "'protochain'", "gateway": "'gateway'", "byte": "'byte'",
    "inbound": "'inbound'", "outbound": "'outbound'", "ifindex": "'ifindex'", "mpls": "'mpls'",
    "pppoed": "'pppoed'", "pppoes": "'pppoes'", "geneve": "'geneve'", "llc": "'llc'",
    "type": "802.11 'type'", "subtype": "802.11 'subtype'", "dir": "802.11 'dir'",
    "pf": "pflog fields", "mtp": "MTP fields", "lane": "ATM", "metac": "ATM", "bcc": "ATM",
    "oam": "ATM", "oamf4": "ATM", "oamf4ec": "ATM", "oamf4sc": "ATM", "sc": "ATM",
    "ilmic": "ATM", "vpi": "ATM", "vci": "ATM", "connectmsg": "ATM", "metaconnect": "ATM",
}


@dataclass(frozen=True)
class Qual:
    """The qualifiers of a primitive: protocol, direction, address kind (libpcap's ``struct qual``).

    Each is a keyword kind or ``"default"``; e.g. ``tcp src port`` is ``Qual("tcp", "src", "port")``.
    """

    proto: str = "default"
    dir: str = "default"
    addr: str = "default"


# --- syntax tree ---------------------------------------------------------------------------------
@dataclass
class And:
    left: "Node"
    right: "Node"


@dataclass
class Or:
    left: "Node"
    right: "Node"


@dataclass
class Not:
    expr: "Node"


@dataclass
class Prim:
    """A value with qualifiers: ``kind`` is NUM, HID, HID6, EID or ID; ``mask`` is a prefix length
    (int) or a dotted netmask (str) for ``A/LEN`` and ``A mask M``. ``qual`` None: no qualifier
    could be inherited (a syntax error in libpcap)."""

    qual: Optional[Qual]
    kind: str
    value: object
    column: int
    mask: object = None
    mask_column: int = 0


@dataclass
class Abbrev:
    """A protocol name on its own: ``tcp``, ``ip6``, ``arp``..."""

    proto: str
    column: int


@dataclass
class Cast:
    """``[proto] broadcast`` or ``[proto] multicast``."""

    proto: str
    what: str
    column: int


@dataclass
class LenCmp:
    """``less N`` (op ``<=``) or ``greater N`` (op ``>=``)."""

    op: str
    value: int


@dataclass
class Vlan:
    vid: Optional[int]
    column: int


@dataclass
class Num:
    value: int


@dataclass
class Len:
    pass


@dataclass
class Load:
    proto: str
    index: "Arith"
    size: int
    column: int


@dataclass
class BinOp:
    op: str
    left: "Arith"
    right: "Arith"
    column: int


@dataclass
class Neg:
    expr: "Arith"


@dataclass
class Relation:
    op: str
    left: "Arith"
    right: "Arith"


@dataclass
class Empty:
    """The empty expression: matches every packet."""


Arith = Union[Num, Len, Load, BinOp, Neg]
Node = Union[And, Or, Not, Prim, Abbrev, Cast, LenCmp, Vlan, Relation, Empty]


class _Backtrack(Exception):
    pass


class Parser:
    """Parse one expression; use :func:`parse`."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = tokenize(expr)
        self.i = 0

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def advance(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "EOF":
            self.i += 1
        return t

    def error(self, msg: str = "syntax error", tok: Optional[Token] = None) -> FilterError:
        t = tok or self.tok
        if msg == "syntax error":
            msg = "syntax error: unexpected end of expression" if t.kind == "EOF" else \
                f"syntax error at {t.text!r}"
        return FilterError(msg, self.expr, t.column)

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.error()
        return self.advance()

    def unsupported_check(self, t: Token) -> None:
        if t.kind in UNSUPPORTED:
            raise self.error(f"unsupported filter syntax: {UNSUPPORTED[t.kind]} ({t.text!r})", t)

    # --- grammar ---------------------------------------------------------------------------------
    def parse(self) -> Node:
        if self.tok.kind == "EOF":
            return Empty()
        node, _q = self.expr_(None)
        if self.tok.kind != "EOF":
            raise self.error()
        return node

    def expr_(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        node, q = self.term(q)
        while self.tok.kind in ("AND", "OR"):
            op = self.advance().kind
            right, q = self.term_or_id(q)
            node = And(node, right) if op == "AND" else Or(node, right)
        return node, q

    def term_or_id(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        """After ``and``/``or``: either a full term or an abbreviated ``id`` inheriting ``q``."""
        if self._starts_id():
            save = self.i
            try:
                return self.id_(q), q
            except FilterError as e:
                e_id = e
            self.i = save
            try:
                return self.term(q)
            except FilterError as e_term:
                if e_id.column > e_term.column:
                    raise e_id from None
                raise
        return self.term(q)

    def _starts_id(self, k: int = 0) -> bool:
        t = self.peek(k)
        if t.kind in ("HID", "HID6", "EID", "ID", "("):
            return True
        if t.kind == "NUM":
            nxt = self.peek(k + 1).kind
            return nxt not in BINOPS and nxt not in RELOPS
        if t.kind == "!":
            return self._starts_id(k + 1)
        return False

    def term(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        if self.tok.kind == "!":
            self.advance()
            inner, q2 = self.term(q)
            return Not(inner), q2
        return self.rterm(q)

    def rterm(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        t = self.tok
        k = t.kind
        if k == "(":
            save = self.i
            try:
                return self.relation(), None
            except FilterError as e:
                e_rel = e
            self.i = save
            self.advance()
            try:
                node, _ = self.expr_(q)
                self.expect(")")
            except FilterError as e_expr:
                if e_rel.column > e_expr.column:
                    raise e_rel from None
                raise
            return node, q
        if k in PNAMES:
            nk = self.peek().kind
            if nk == "[":
                return self.relation(), None
            if nk in DQUALS or nk in AQUALS or nk in ("proto", "protochain", "gateway"):
                self.advance()
                return self.head_id(k, t)
            if nk in ("broadcast", "multicast"):
                self.advance()
                c = self.advance()
                return Cast(k, c.kind, t.column), None
            self.advance()
            return Abbrev(k, t.column), None
        if k in DQUALS or k in AQUALS or k in ("proto", "protochain", "gateway"):
            return self.head_id("default", t)
        if k in ("broadcast", "multicast"):
            self.advance()
            return Cast("default", k, t.column), None
        if k in ("less", "greater"):
            self.advance()
            n = self.expect("NUM")
            return LenCmp("<=" if k == "less" else ">=", n.value), None
        if k == "vlan":
            self.advance()
            if self.tok.kind in ("NUM", "("):
                return Vlan(self.pnum(), t.column), None
            return Vlan(None, t.column), None
        if k in ("NUM", "len", "-"):
            return self.relation(), None
        self.unsupported_check(t)
        raise self.error()

    def pnum(self) -> int:
        if self.tok.kind == "(":
            self.advance()
            v = self.pnum()
            self.expect(")")
            return v
        return self.expect("NUM").value  # type: ignore[return-value]

    def head_id(self, pqual: str, first: Token) -> tuple[Node, Optional[Qual]]:
        """``pqual dqual aqual | pqual dqual | pqual aqual | pqual proto | ...`` then an ``id``."""
        dqual, aqual = "default", "default"
        t = self.tok
        if t.kind in ("proto", "protochain", "gateway"):
            self.unsupported_check(t)
            self.advance()
            q = Qual(pqual, "default", t.kind)
            return self.id_(q), q
        if t.kind in DQUALS:
            self.advance()
            dqual = t.kind
            if t.kind in ("src", "dst") and self.tok.kind in ("AND", "OR") \
                    and self.peek().kind == ("dst" if t.kind == "src" else "src"):
                dqual = "or" if self.advance().kind == "OR" else "and"
                self.advance()
            if dqual in ("addr1", "addr2", "addr3", "addr4", "ra", "ta"):
                raise self.error(f"unsupported filter syntax: 802.11 address qualifier {t.text!r}", t)
        if self.tok.kind in AQUALS:
            aqual = self.advance().kind
        q = Qual(pqual, dqual, aqual)
        return self.id_(q), q

    def id_(self, q: Optional[Qual]) -> Node:
        """An ``id``: a value taking the qualifiers ``q``."""
        t = self.tok
        k = t.kind
        if k == "!":
            self.advance()
            return Not(self.id_(q))
        if k == "(":
            self.advance()
            node = self.id_(q)
            while self.tok.kind in ("AND", "OR"):
                op = self.advance().kind
                right = self.id_(q)
                node = And(node, right) if op == "AND" else Or(node, right)
            self.expect(")")
            return node
        if k == "NUM":
            self.advance()
            return Prim(q, "NUM", t.value, t.column)
        if k == "ID":
            self.advance()
            return Prim(q, "ID", t.value, t.column)
        if k == "EID":
            self.advance()
            return Prim(q, "EID", t.value, t.column)
        if k in ("HID", "HID6"):
            self.advance()
            if self.tok.kind == "/":
                self.advance()
                n = self.expect("NUM")
                return Prim(q, k, t.value, t.column, n.value, n.column)
            if k == "HID" and self.tok.kind == "mask":
                self.advance()
                m = self.expect("HID")
                return Prim(q, k, t.value, t.column, m.value, m.column)
            return Prim(q, k, t.value, t.column)
        self.unsupported_check(t)
        raise self.error()

    # --- arithmetic ------------------------------------------------------------------------------
    def relation(self) -> Relation:
        left = self.arith()
        t = self.tok
        if t.kind not in RELOPS:
            raise self.error()
        self.advance()
        right = self.arith()
        return Relation(RELOPS[t.kind], left, right)

    def arith(self) -> "Arith":
        """Shift-reduce parse of an arithmetic expression with bison's conflict resolution."""
        stack: list = []  # operands, ("op", kind, column) and ("neg",) markers

        def reduce_ok(la: Optional[str]) -> Optional[str]:
            # return "neg" or "bin" if the top of the stack should be reduced before ``la``
            if len(stack) >= 2 and stack[-2] == ("neg",):
                if la is None or PREC[la] is not None:
                    return "neg"
                return None
            if len(stack) >= 3 and isinstance(stack[-2], tuple) and stack[-2][0] == "op":
                p1 = PREC[stack[-2][1]]
                if la is None:
                    return "bin"
                p2 = PREC[la]
                if p1 is not None and p2 is not None and p1 >= p2:
                    return "bin"
            return None

        while True:
            while self.tok.kind == "-":
                self.advance()
                stack.append(("neg",))
            stack.append(self.primary())
            la = self.tok.kind if self.tok.kind in BINOPS else None
            while True:
                r = reduce_ok(la)
                if r == "neg":
                    v = stack.pop()
                    stack.pop()
                    stack.append(Neg(v))
                elif r == "bin":
                    rhs = stack.pop()
                    _, op, col = stack.pop()
                    lhs = stack.pop()
                    stack.append(BinOp(op, lhs, rhs, col))
                else:
                    break
            if la is None:
                break
            t = self.advance()
            stack.append(("op", t.kind, t.column))
        assert len(stack) == 1
        return stack[0]

    def primary(self) -> "Arith":
        t = self.tok
        if t.kind == "NUM":
            self.advance()
            return Num(t.value)  # type: ignore[arg-type]
        if t.kind == "len":
            self.advance()
            return Len()
        if t.kind == "(":
            self.advance()
            v = self.arith()
            self.expect(")")
            return v
        if t.kind in PNAMES and self.peek().kind == "[":
            self.advance()
            self.advance()
            idx = self.arith()
            size = 1
            if self.tok.kind == ":":
                self.advance()
                st = self.expect("NUM")
                size = st.value  # type: ignore[assignment]
                if size not in (1, 2, 4):
                    raise self.error("data size must be 1, 2, or 4", st)
            self.expect("]")
            return Load(t.kind, idx, size, t.column)
        self.unsupported_check(t)
        raise self.error()


def parse(expr: str) -> Node:
    """Parse a pcap-filter expression into a syntax tree; raise FilterError (with a 1-based
    column) on a syntax error or on syntax we do not support."""
    return Parser(expr).parse()
