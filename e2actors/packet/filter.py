"""The pcap-filter language (tcpdump's capture filters), compiled once into fast predicates.

>>> f = compile_filter("tcp port 80 and not host 10.0.0.1")
>>> f(packet)                        # anything with .data (frame bytes) and .wirelen
>>> f.match(frame_bytes, wirelen)    # the same on raw bytes
>>> f.select(packets)                # the matching packets, in order

Matching is exact against libpcap (what tcpdump matches on the same capture) for the supported
subset, because the compiler reproduces libpcap's code generation for Ethernet captures
(see :mod:`e2actors.packet.filter_compile`): IPv4 and IPv6 for ``tcp``/``udp``/``port``, only
first fragments for ports, IHL-relative ``tcp[...]``, ``vlan`` shifting later offsets, and an
out-of-bounds load rejecting the whole packet.

The expression is turned into one Python expression over the frame bytes (constant offsets,
direct indexing, short-circuit ``and``/``or``), compiled with :func:`compile` into a closure. A
run of terms joined by one operator is one flat ``a or b or c`` however long; past 64 terms it is
cut into helper functions, each compiled on its own, so that a 3,000-term expression costs tens of
MB rather than a gigabyte. Nesting is bounded (:data:`MAX_DEPTH`, a :class:`FilterError` beyond).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from e2actors.errors import FilterError
from e2actors.packet.filter_compile import compile_to_ir, ir_to_python
from e2actors.packet.filter_parser import MAX_DEPTH

__all__ = ["compile_filter", "Filter", "DLT_EN10MB", "MAX_DEPTH", "benchmark_filters"]

DLT_EN10MB = 1
_ERRORS = (IndexError, struct.error, ZeroDivisionError)
_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from


def _lsh(a: int, b: int) -> int:
    return (a << b) & 0xFFFFFFFF if b < 32 else 0


_TEMPLATE = """\
def match(d, w):
    try:
        if {expr}:
            return True
        return False
    except _ERRORS:
        return False

def evaluate(d, w):
    try:
        if {expr}:
            return True
        return False
    except _ERRORS:
        return None

def select(packets):
    out = []
    add = out.append
    for p in packets:
        d = p.data
{wline}        try:
            if {expr}:
                add(p)
        except _ERRORS:
            pass
    return out
"""

class Filter:
    """A compiled filter: ``f(packet) -> bool``, ``f.match(data, wirelen)``, ``f.select(packets)``.

    ``expression`` is the source text; ``source`` the generated Python (for the curious).
    """

    __slots__ = ("expression", "source", "match", "select", "evaluate", "_uses_len")

    def __init__(self, expression: str, python_expr: str, helpers: Sequence[str] = ()) -> None:
        self.expression = expression
        self._uses_len = _uses_len(python_expr)
        wline = "        w = p.wirelen\n" if self._uses_len else ""
        self.source = "".join(h + "\n" for h in helpers) + _TEMPLATE.format(expr=python_expr, wline=wline)
        ns: dict[str, Any] = {"_ERRORS": _ERRORS, "_u16": _u16, "_u32": _u32, "_lsh": _lsh}
        name = f"<filter {expression[:100]!r}{'...' if len(expression) > 100 else ''}>"
        for h in helpers:  # one at a time: bounded memory for the compiler, whatever the length
            exec(compile(h, name, "exec"), ns)
        exec(compile(_TEMPLATE.format(expr=python_expr, wline=wline), name, "exec"), ns)
        self.match = ns["match"]
        self.select = ns["select"]
        #: ``evaluate(data, wirelen) -> True | False | None``: like ``match`` but None when the
        #: program aborted (a load past the captured bytes, or a division by zero), which
        #: ``match`` reports as False, as BPF does.
        self.evaluate = ns["evaluate"]

    def __call__(self, packet: Any) -> bool:
        """True if ``packet`` matches. ``packet`` has ``.data`` and ``.wirelen``, or is bytes
        (then its length is the wire length)."""
        if isinstance(packet, (bytes, bytearray, memoryview)):
            return self.match(packet, len(packet))
        return self.match(packet.data, packet.wirelen if self._uses_len else 0)

    def __repr__(self) -> str:
        return f"Filter({self.expression!r})"


def _uses_len(src: str) -> bool:
    """Whether the generated expression reads ``w`` (the only one-letter name but ``d`` in it;
    no second parse of what may be a megabyte of source)."""
    return re.search(r"\bw\b", src) is not None


def compile_filter(expr: str, linktype: Optional[int] = None, netmask: int = 0) -> Filter:
    """Compile a pcap-filter expression into a :class:`Filter`.

    ``linktype`` (a DLT number) defaults to Ethernet, the only one supported. ``netmask`` plays
    the role of tcpdump's netmask for ``ip broadcast`` (tcpdump uses 0 when reading a file).
    Raises :class:`FilterError` (with the 1-based column) on bad or unsupported syntax, and on
    nesting deeper than :data:`~e2actors.packet.filter_parser.MAX_DEPTH` levels (a run of
    terms joined by one operator, ``host a or host b or ...``, may have any length).
    """
    if linktype is not None and linktype != DLT_EN10MB:
        raise FilterError(f"unsupported link type {linktype}: only Ethernet (DLT_EN10MB=1)",
                          expr, 0)
    if not isinstance(expr, str):
        raise TypeError("filter expression must be a str")
    try:
        ir = compile_to_ir(expr, netmask)
        helpers: list[str] = []
        return Filter(expr, ir_to_python(ir, helpers), helpers)
    except RecursionError:
        # MAX_DEPTH keeps the compiler within ~600 frames; a caller already that deep in its
        # own stack gets the same refusal as a too-deep expression rather than a traceback
        raise FilterError(f"expression too deeply nested to compile here (at most {MAX_DEPTH} "
                          "levels, fewer from a deep call stack)", expr, 0) from None


def select(expr: str, packets: Iterable[Any]) -> list[Any]:
    """Convenience: the packets that match ``expr``."""
    return compile_filter(expr).select(packets)


BENCH_EXPRESSIONS = ("tcp port 80", "host 198.18.0.1 and udp", "tcp[tcpflags] & tcp-syn != 0")


def benchmark_filters(packets: list[Any], expressions: Iterable[str] = BENCH_EXPRESSIONS,
                      repeat: int = 3) -> dict[str, float]:
    """Filter rate in packets/s (best of ``repeat`` runs of :meth:`Filter.select`) for each
    expression over ``packets`` (objects with ``.data`` and ``.wirelen``); for benchmarks."""
    import time

    rates: dict[str, float] = {}
    for expr in expressions:
        f = compile_filter(expr)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            f.select(packets)
            best = min(best, time.perf_counter() - t0)
        rates[expr] = len(packets) / best if best > 0 else float("inf")
    return rates
