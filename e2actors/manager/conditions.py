"""Edge conditions as the planner sees them: checked when a policy is read, compiled for profiling.

The switch's condition language (:func:`e2actors.switch.condition.compile_condition`: pcap-filter
plus ``meta.KEY == "v"``, ``meta.KEY in (...)``, ``meta.KEY exists``, ``domain NAME``) is used when
it is importable; otherwise the plain pcap-filter compiler stands in, so metadata and domain
conditions are rejected until the condition compiler is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2actors.errors import E2Error
from e2actors.packet.filter import compile_filter

__all__ = ["compile_edge_condition", "check_condition", "combine", "have_condition_language"]


def _compiler() -> Callable[[str], Any]:
    try:
        from e2actors.switch.condition import compile_condition  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:
        if e.name not in ("e2actors.switch.condition",):
            raise
        return compile_filter
    return compile_condition


def have_condition_language() -> bool:
    """True when the switch's full condition language (metadata, domains) is available."""
    return _compiler() is not compile_filter


def compile_edge_condition(text: str) -> Callable[..., bool]:
    """A predicate ``f(pkt, host=None)`` for ``text`` (an empty condition always holds); ``host``
    is the flow's HTTP Host / TLS SNI for ``domain`` tests (ignored by plain filters)."""
    if not text.strip():
        return lambda pkt, host=None: True
    f = _compiler()(text)
    try:
        from e2actors.switch.condition import Condition
    except ImportError:  # pragma: no cover
        return lambda pkt, host=None: f(pkt)
    if isinstance(f, Condition):
        return f
    return lambda pkt, host=None: f(pkt)


def check_condition(text: str) -> None:
    """Raise :class:`E2Error` (with ``column``, 1-based within ``text``, when known) if ``text``
    is not a valid condition."""
    if text.strip():
        _compiler()(text)


def error_column(err: E2Error) -> int:
    """The 1-based column a condition error points at (0 when unknown)."""
    return int(getattr(err, "column", 0) or 0)


def combine(*conditions: str) -> str:
    """``a and b``, each parenthesized; empty parts are left out."""
    parts = [c.strip() for c in conditions if c and c.strip()]
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return " and ".join(f"({p})" for p in parts)


def any_of(*conditions: str) -> str:
    """``a or b``; an empty part (always true) makes the whole condition empty."""
    parts = [c.strip() for c in conditions]
    if not parts or any(not p for p in parts):
        return ""
    uniq = list(dict.fromkeys(parts))
    if len(uniq) == 1:
        return uniq[0]
    return " or ".join(f"({p})" for p in uniq)
