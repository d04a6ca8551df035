"""Edge conditions as the planner sees them: checked when a policy is read, compiled for profiling,
in the switch's condition language (:func:`e2actors.switch.condition.compile_condition`:
pcap-filter plus ``meta.KEY == "v"``, ``meta.KEY in (...)``, ``meta.KEY exists``, ``domain NAME``).
"""

from __future__ import annotations

from collections.abc import Callable

from e2actors.errors import E2Error
from e2actors.switch.condition import compile_condition

__all__ = ["compile_edge_condition", "check_condition", "combine"]


def compile_edge_condition(text: str) -> Callable[..., bool]:
    """A predicate ``f(pkt, host=None)`` for ``text`` (an empty condition always holds); ``host``
    is the flow's HTTP Host / TLS SNI for ``domain`` tests."""
    if not text.strip():
        return lambda pkt, host=None: True
    return compile_condition(text)


def check_condition(text: str) -> None:
    """Raise :class:`E2Error` (with ``column``, 1-based within ``text``, when known) if ``text``
    is not a valid condition."""
    if text.strip():
        compile_condition(text)


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
