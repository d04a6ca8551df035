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

Two points where we part from libpcap, for bounded work on any input:

* A run of terms joined by one operator (``host a or host b or ...``) becomes a *balanced* tree
  of :class:`Or` (or :class:`And`) nodes rather than libpcap's left-leaning one: the same
  packets match (both operators are associative and the terms keep their order), and a run of N
  terms is only about log2(N) levels deep, so runs of any length compile.
* Nesting is bounded: the syntax tree may be at most :data:`MAX_DEPTH` levels deep (each
  parenthesis, ``not``, switch between ``and`` and ``or``, arithmetic operator and unary minus
  adds a level, ``proto[...]`` two; a run of N terms about log2(N)). Deeper input is a
  :class:`FilterError`; libpcap's own parser stops near 10,000 levels ("memory exhausted").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from e2actors.errors import FilterError
from e2actors.packet.filter_lexer import Token, tokenize

__all__ = [
    "parse", "MAX_DEPTH", "Qual", "Node", "And", "Or", "Not", "Prim", "Abbrev", "Cast", "LenCmp", "Vlan",
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
#: Deepest syntax tree accepted (see the module docstring). It keeps every recursive walk over the
#: tree and the IR, and the nesting of the generated Python, well inside Python's own limits.
MAX_DEPTH = 100

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
    column: int = 0


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


class _TooDeep(FilterError):
    """Nesting past :data:`MAX_DEPTH`: final, never retried by the parser's backtracking."""


def _too_deep(expr: str, column: int) -> _TooDeep:
    return _TooDeep(f"expression nested deeper than {MAX_DEPTH} levels", expr, column)


def _balanced(op: type, items: list) -> "Node":
    """``items`` joined by ``op`` (And or Or) as a balanced tree, in order (pairwise, bottom up)."""
    while len(items) > 1:
        nxt = [op(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]


def _column(n: object) -> int:
    """The column of ``n`` or of its first leaf (0 when none is known)."""
    while True:
        c = getattr(n, "column", 0)
        if c:
            return c
        for attr in ("left", "expr", "index"):
            if hasattr(n, attr):
                n = getattr(n, attr)
                break
        else:
            return 0


def check_depth(tree: "Node", expr: str) -> None:
    """Raise :class:`FilterError` if ``tree`` is more than :data:`MAX_DEPTH` levels deep. Walks
    with its own stack: the tree may be arbitrarily deep here (a chain of unary minus signs)."""
    stack = [(tree, 1, 0)]  # node, its depth, the column of the nearest enclosing node that has one
    while stack:
        n, d, outer = stack.pop()
        col = getattr(n, "column", 0) or outer
        if d > MAX_DEPTH:
            raise _too_deep(expr, _column(n) or col)
        if isinstance(n, (And, Or, BinOp, Relation)):
            stack.append((n.right, d + 1, col))
            stack.append((n.left, d + 1, col))
        elif isinstance(n, (Not, Neg)):
            stack.append((n.expr, d + 1, col))
        elif isinstance(n, Load):  # two: the generated offset arithmetic nests once more
            stack.append((n.index, d + 2, col))


class Parser:
    """Parse one expression; use :func:`parse`."""

    #: Open parentheses, brackets and ``not`` around the current token (bounds the recursion).
    #: A class attribute: subclasses with their own ``__init__`` get it too.
    nesting = 0

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

    def enter(self, t: Token) -> None:
        """One more level of nesting at token ``t``; pair with :meth:`leave` (in a ``finally``)."""
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise _too_deep(self.expr, t.column)

    def leave(self) -> None:
        self.nesting -= 1

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
        check_depth(node, self.expr)
        return node

    def expr_(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        node, q = self.term(q)
        run: list = [node]  # terms joined by ``op`` so far (left to right)
        op = ""
        while self.tok.kind in ("AND", "OR"):
            k = self.advance().kind
            if k != op and len(run) > 1:  # libpcap groups to the left: close the run
                run = [_balanced(And if op == "AND" else Or, run)]
            op = k
            right, q = self.term_or_id(q)
            run.append(right)
        return (_balanced(And if op == "AND" else Or, run) if len(run) > 1 else node), q

    def term_or_id(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        """After ``and``/``or``: either a full term or an abbreviated ``id`` inheriting ``q``."""
        if self._starts_id():
            save = self.i
            try:
                node = self.id_(q)
                if self.tok.kind not in BINOPS and self.tok.kind not in RELOPS:
                    return node, q
                # ``(1) + len = 2``: an arithmetic operator cannot follow an id, so the
                # parenthesized value began a relation (bison decides after the ``)``)
                e_id = self.error()
            except _TooDeep:
                raise
            except FilterError as e:
                e_id = e
            self.i = save
            try:
                return self.term(q)
            except _TooDeep:
                raise
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
            self.enter(self.tok)
            try:
                self.advance()
                inner, q2 = self.term(q)
            finally:
                self.leave()
            return Not(inner), q2
        return self.rterm(q)

    def rterm(self, q: Optional[Qual]) -> tuple[Node, Optional[Qual]]:
        t = self.tok
        k = t.kind
        if k == "(":
            save = self.i
            try:
                return self.relation(), None
            except _TooDeep:
                raise
            except FilterError as e:
                e_rel = e
            self.i = save
            self.enter(t)
            self.advance()
            try:
                node, _ = self.expr_(q)
                self.expect(")")
            except _TooDeep:
                raise
            except FilterError as e_expr:
                if e_rel.column > e_expr.column:
                    raise e_rel from None
                raise
            finally:
                self.leave()
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
            self.enter(self.tok)
            try:
                self.advance()
                v = self.pnum()
                self.expect(")")
            finally:
                self.leave()
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
        if k in ("!", "("):
            self.enter(t)
            try:
                self.advance()
                if k == "!":
                    return Not(self.id_(q))
                run: list = [self.id_(q)]
                op = ""
                while self.tok.kind in ("AND", "OR"):
                    kind = self.advance().kind
                    if kind != op and len(run) > 1:
                        run = [_balanced(And if op == "AND" else Or, run)]
                    op = kind
                    run.append(self.id_(q))
                self.expect(")")
                return _balanced(And if op == "AND" else Or, run) if len(run) > 1 else run[0]
            finally:
                self.leave()
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
        stack: list = []  # operands, ("op", kind, column) and ("neg", column) markers

        def reduce_ok(la: Optional[str]) -> Optional[str]:
            # return "neg" or "bin" if the top of the stack should be reduced before ``la``
            if len(stack) >= 2 and isinstance(stack[-2], tuple) and stack[-2][0] == "neg":
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
                stack.append(("neg", self.advance().column))
            stack.append(self.primary())
            la = self.tok.kind if self.tok.kind in BINOPS else None
            while True:
                r = reduce_ok(la)
                if r == "neg":
                    v = stack.pop()
                    stack.append(Neg(v, stack.pop()[1]))
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
            self.enter(t)
            try:
                self.advance()
                v = self.arith()
                self.expect(")")
            finally:
                self.leave()
            return v
        if t.kind in PNAMES and self.peek().kind == "[":
            self.enter(t)
            try:
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
            finally:
                self.leave()
            return Load(t.kind, idx, size, t.column)
        self.unsupported_check(t)
        raise self.error()


def parse(expr: str) -> Node:
    """Parse a pcap-filter expression into a syntax tree; raise FilterError (with a 1-based
    column) on a syntax error or on syntax we do not support."""
    return Parser(expr).parse()
