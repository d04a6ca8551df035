"""Rebalancing: moving an instance from the busiest server to the least busy one.

The choice is pure (:func:`pick_rebalance`, over the instances' recent busy fractions kept by a
:class:`BusyTracker`); :func:`rebalance` makes the move it picks as a transaction
(:func:`e2actors.manager.changes.move`: the instance's state goes with it, no packet is lost).
"""

from __future__ import annotations

from e2actors.manager.changes import move
from e2actors.manager.deployment import Deployment
from e2actors.manager.plan import Plan
from e2actors.manager.policy import IN, OUT

__all__ = ["BusyTracker", "pick_rebalance", "rebalance"]


class BusyTracker:
    """Each instance's last reported busy fraction (0..1) and when it came."""

    def __init__(self) -> None:
        self._busy: dict[str, tuple[float, float]] = {}

    def report(self, instance: str, busy: float, now: float) -> None:
        self._busy[instance] = (busy, now)

    def recent(self, now: float, max_age: float) -> dict[str, float]:
        """Instance -> busy fraction, for the reports younger than ``max_age`` seconds."""
        return {i: b for i, (b, t) in self._busy.items() if now - t < max_age}

    def clear(self) -> None:
        """Forget every report (measure afresh after a change)."""
        self._busy.clear()


def pick_rebalance(plan: Plan, busy: dict[str, float], servers: list[str], states: dict[str, str],
                   threshold: float = 0.3) -> tuple[str, str, str] | None:
    """One move that evens out the servers' load, or None. ``busy``: instance -> busy fraction
    (0..1, from load reports). A server's load is the sum over its instances. The move takes the
    instance from the busiest server to the least busy one with a free core, choosing the instance
    that brings the two closest together, and only if the gap exceeds ``threshold`` and shrinks.
    Returns ``(instance, from, to)``."""
    hw = plan.hardware
    cand = [s for s in servers if s in hw.servers and hw.servers[s].cores > 0]
    if len(cand) < 2:
        return None
    load = {s: 0.0 for s in cand}
    used = {s: 0 for s in cand}
    movable: dict[str, list[str]] = {s: [] for s in cand}
    for i, s in plan.assignment.items():
        if s not in load or i in (IN, OUT):
            continue
        used[s] += plan.graph.cores.get(i, 0)
        load[s] += busy.get(i, 0.0)
        if plan.graph.cores.get(i, 0) and states.get(i, "running") == "running":
            movable[s].append(i)
    hi = max(cand, key=lambda s: (load[s], s))
    targets = [s for s in cand if s != hi and used[s] < hw.servers[s].cores]
    if not targets:
        return None
    lo = min(targets, key=lambda s: (load[s], s))
    gap = load[hi] - load[lo]
    if gap <= threshold:
        return None
    best = None
    for i in movable[hi]:
        b = busy.get(i, 0.0)
        new_gap = abs((load[hi] - b) - (load[lo] + b))
        if new_gap < gap - 1e-9 and (best is None or new_gap < best[0]):
            best = (new_gap, i)
    return None if best is None else (best[1], hi, lo)


async def rebalance(dep: Deployment, busy: dict[str, float], threshold: float = 0.3) -> tuple[str, str, str] | None:
    """Make one rebalancing move if the servers' load is uneven (see :func:`pick_rebalance`);
    returns ``(instance, from, to)`` or None."""
    plan = dep.plan
    if plan is None:
        return None
    choice = pick_rebalance(plan, busy, list(dep.servers), dict(dep.states), threshold)
    if choice is None:
        return None
    inst, src, dst = choice
    load = {s: sum(b for i, b in busy.items() if plan.assignment.get(i) == s) for s in (src, dst)}
    await move(dep, inst, dst, why=f"rebalance: busy {src} {load[src]:.2f} vs {dst} {load[dst]:.2f}")
    return choice
