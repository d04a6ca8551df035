"""A flow table with idle expiry: per-flow entries keyed by the symmetric flow key. Pure code.

Entries are kept in least-recently-used order (an OrderedDict moved to the end on each touch), so
expiring idle flows only ever looks at the front: ``expire(now)`` costs nothing when no flow is
due. A bound on the number of flows evicts the least recently used one, never grows past it.
Time is whatever the caller says it is (packet timestamps for a pcap replay, the clock live).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

V = TypeVar("V")

__all__ = ["FlowTable"]


class FlowTable(Generic[V]):
    """``key -> value`` with a last-seen time per key, idle expiry and a size bound."""

    __slots__ = ("idle_timeout", "max_flows", "_d", "evicted", "expired")

    def __init__(self, idle_timeout: float = 60.0, max_flows: int = 1_000_000) -> None:
        if idle_timeout <= 0 or max_flows < 1:
            raise ValueError("idle_timeout must be > 0 and max_flows >= 1")
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self._d: OrderedDict[Hashable, list] = OrderedDict()  # key -> [value, last_seen]
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._d)

    def get(self, key: Hashable, default: Any = None) -> V | Any:
        e = self._d.get(key)
        return default if e is None else e[0]

    def __getitem__(self, key: Hashable) -> V:
        return self._d[key][0]

    def set(self, key: Hashable, value: V, now: float) -> list[tuple[Hashable, V]]:
        """Insert or replace ``key`` (touching it). Returns the entries evicted to stay in bound."""
        d = self._d
        e = d.get(key)
        if e is not None:
            e[0] = value
            e[1] = now
            d.move_to_end(key)
            return []
        d[key] = [value, now]
        out: list[tuple[Hashable, V]] = []
        while len(d) > self.max_flows:
            k, (v, _t) = d.popitem(last=False)
            self.evicted += 1
            out.append((k, v))
        return out

    def touch(self, key: Hashable, now: float) -> V | None:
        """Mark ``key`` as seen at ``now``; returns its value (None if absent)."""
        e = self._d.get(key)
        if e is None:
            return None
        e[1] = now
        self._d.move_to_end(key)
        return e[0]

    def pop(self, key: Hashable, default: Any = None) -> V | Any:
        e = self._d.pop(key, None)
        return default if e is None else e[0]

    def last_seen(self, key: Hashable) -> float | None:
        e = self._d.get(key)
        return None if e is None else e[1]

    def expire(self, now: float) -> list[tuple[Hashable, V]]:
        """Remove and return the entries idle for longer than ``idle_timeout``."""
        d = self._d
        limit = now - self.idle_timeout
        out: list[tuple[Hashable, V]] = []
        while d:
            k, e = next(iter(d.items()))
            if e[1] > limit:
                break
            d.popitem(last=False)
            out.append((k, e[0]))
        self.expired += len(out)
        return out

    def items(self) -> Iterator[tuple[Hashable, V]]:
        for k, e in self._d.items():
            yield k, e[0]

    def clear(self) -> None:
        self._d.clear()

    def export(self) -> list[tuple[Any, Any, float]]:
        """``[(key, value, last_seen), ...]`` oldest first (msgpack-safe if keys and values are)."""
        return [(k, e[0], e[1]) for k, e in self._d.items()]

    def load(self, entries: Any) -> None:
        """Add entries from :meth:`export` (keys that were lists come back as tuples)."""
        for k, v, t in sorted(entries, key=lambda x: x[2]):
            self.set(_hashable(k), v, t)


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(i) for i in x)
    return x
