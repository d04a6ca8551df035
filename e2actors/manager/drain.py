"""Drain tracking, pure: which instances are draining and which switches have yet to say so.

Scaling in marks an instance ``draining``: every switch stops giving it new flows and, once the
flows it still has are over, answers with a ``Drained`` notice. The instance is retired when
every server's switch has answered, or when ``overdue`` says a switch never did.

>>> d = DrainTracker()
>>> d.start("ids#3", ["s1", "s2"], now=0.0)
>>> d.drained("ids#3", "s1"), d.drained("ids#3", "s2")
(False, True)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DrainTracker"]

#: Seconds after which a draining instance is retired even if a switch never answered.
DRAIN_LIMIT = 30.0


class DrainTracker:
    """Instances being drained, each with the servers whose switches have not answered."""

    def __init__(self, limit: float = DRAIN_LIMIT) -> None:
        self.limit = limit
        self._pending: dict[str, set[str]] = {}
        self._started: dict[str, float] = {}

    def start(self, instance: str, servers: Iterable[str], now: float) -> None:
        """``instance`` starts draining; each of ``servers`` must answer."""
        self._pending[instance] = set(servers)
        self._started[instance] = now

    def drained(self, instance: str, server: str) -> bool:
        """``server``'s switch says ``instance`` has no flows left there; True when that was the
        last one (the instance can be retired). An instance not draining gives False."""
        pending = self._pending.get(instance)
        if pending is None:
            return False
        pending.discard(server)
        return not pending

    def overdue(self, now: float) -> list[str]:
        """Draining instances past the limit, each reported once (their pending servers are
        given up on: retire them)."""
        late = [i for i, t0 in self._started.items() if now - t0 > self.limit and i in self._pending]
        for i in late:
            self._pending[i] = set()
            del self._started[i]
        return late

    def finish(self, instance: str) -> bool:
        """Stop tracking ``instance``; False if it was not draining (retired already)."""
        self._started.pop(instance, None)
        return self._pending.pop(instance, None) is not None

    def __contains__(self, instance: object) -> bool:
        return instance in self._pending

    def __len__(self) -> int:
        return len(self._pending)
