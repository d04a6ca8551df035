"""Dynamic scaling decisions, kept pure: load reports in, "scale out / scale in" out.

Per NF group the autoscaler keeps each instance's latest :class:`LoadReport`. A group is
*overloaded* when its instances are on average busier than ``high`` (the fraction of wall time
spent in ``process``) or packets were dropped for lack of room on the way to any of them since the
last look (its full mailbox, or the switch's queue for it: :meth:`Autoscaler.congested`; packets
the NF itself decided to drop are not overload); it is *idle* when
the average is under ``low``. A decision needs the condition to hold for ``sustain`` seconds
(hysteresis: a blip does nothing) and at least ``cooldown`` seconds since the group's last change
(so the effect of a change is seen before the next one), and stays within the NF's min/max.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Autoscaler", "Decision", "ScalingPolicy"]


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    high: float = 0.75
    low: float = 0.15
    sustain: float = 1.0
    cooldown: float = 3.0
    report_ttl: float = 2.0   # reports older than this are stale (the instance is gone or silent)


@dataclass(frozen=True, slots=True)
class Decision:
    nf: str
    kind: Literal["out", "in"]
    target: int
    reason: str


@dataclass
class _Group:
    reports: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # inst -> (t, busy, drops)
    drops_seen: dict[str, int] = field(default_factory=dict)
    congestion: dict[str, int] = field(default_factory=dict)  # inst -> packets dropped for lack of room
    over_since: float | None = None
    idle_since: float | None = None
    last_change: float = -1e18


class Autoscaler:
    """Feed it ``report(nf, instance, busy, drops, now)``; ask ``decide(nf, current, lo, hi, now)``."""

    def __init__(self, policy: ScalingPolicy | None = None) -> None:
        self.policy = policy or ScalingPolicy()
        self.groups: dict[str, _Group] = {}

    def report(self, nf: str, instance: str, busy: float, drops: int, now: float) -> None:
        g = self.groups.setdefault(nf, _Group())
        g.reports[instance] = (now, busy, drops)

    def congested(self, nf: str, instance: str, packets: int) -> None:
        """A switch dropped ``packets`` bound for ``instance`` for lack of room (overload)."""
        g = self.groups.setdefault(nf, _Group())
        g.congestion[instance] = g.congestion.get(instance, 0) + packets

    def forget(self, nf: str, instance: str) -> None:
        g = self.groups.get(nf)
        if g is not None:
            g.reports.pop(instance, None)
            g.drops_seen.pop(instance, None)
            g.congestion.pop(instance, None)

    def changed(self, nf: str, now: float) -> None:
        """The group was resized (by us or by hand): restart its clocks."""
        g = self.groups.setdefault(nf, _Group())
        g.last_change = now
        g.over_since = g.idle_since = None

    def load(self, nf: str, now: float) -> tuple[float, bool, int]:
        """(mean busy fraction, dropped since last look, fresh reports) over fresh reports."""
        g = self.groups.get(nf)
        if g is None:
            return 0.0, False, 0
        fresh = [(i, r) for i, r in g.reports.items() if now - r[0] <= self.policy.report_ttl]
        if not fresh:
            return 0.0, False, 0
        dropping = False
        for inst, (_t, _b, drops) in fresh:
            drops += g.congestion.get(inst, 0)
            if drops > g.drops_seen.get(inst, 0 if inst in g.congestion else drops):
                dropping = True
            g.drops_seen[inst] = drops
        return sum(r[1] for _i, r in fresh) / len(fresh), dropping, len(fresh)

    def decide(self, nf: str, current: int, lo: int, hi: int | None, now: float) -> Decision | None:
        p = self.policy
        g = self.groups.setdefault(nf, _Group())
        busy, dropping, n = self.load(nf, now)
        if n == 0:
            return None
        over = busy > p.high or dropping
        idle = busy < p.low and not dropping
        g.over_since = (g.over_since if g.over_since is not None else now) if over else None
        g.idle_since = (g.idle_since if g.idle_since is not None else now) if idle else None
        if now - g.last_change < p.cooldown:
            return None
        if over and now - g.over_since >= p.sustain and (hi is None or current < hi):  # type: ignore[operator]
            why = f"busy {busy:.0%}" + (" and dropping" if dropping else "")
            return Decision(nf, "out", current + 1, why)
        if idle and now - g.idle_since >= p.sustain and current > lo:  # type: ignore[operator]
            return Decision(nf, "in", current - 1, f"busy {busy:.0%}")
        return None
