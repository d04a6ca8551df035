"""Checkpoints: the exported state of an NF's instances, taken every so often, so that an instance
re-placed after its server was lost starts from it instead of from nothing.

An NF opts in in its description (``checkpoint: SECONDS`` in the policy): every that many seconds
the manager asks each running instance of it for its state (:meth:`Pipelet.export_state
<e2actors.nf.pipelet.Pipelet.export_state>`, the same state a move carries over) and keeps the
latest one per member. When a server is lost (:mod:`e2actors.manager.recovery`), the replacement
of each of its members gets that member's checkpoint (:meth:`Pipelet.import_state
<e2actors.nf.pipelet.Pipelet.import_state>`) before it takes traffic: a NAT keeps the mappings
of the connections it had seen by then, a parental-control NF the hosts of its flows. What
changed after the checkpoint is lost with the server (flows begun since start fresh). The
replacement's counters start at zero: the lost member's last counters are in the summary already,
so a checkpoint's ``counters`` are not restored (they would count twice).

This module is the bookkeeping (pure, no I/O): what is due, what was taken, what to restore.
The manager asks the instances (:meth:`Manager._checkpoint <e2actors.manager.manager.Manager>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e2actors.manager.instances import nf_of

__all__ = ["Checkpoint", "Checkpoints"]


@dataclass(frozen=True)
class Checkpoint:
    """One member's exported state (``data``) as of ``t`` (``time.monotonic()``)."""

    member: str
    t: float
    data: dict[str, Any]

    def restorable(self) -> dict[str, Any]:
        """What a replacement imports: the state without its counters (see the module docstring)."""
        return {k: v for k, v in self.data.items() if k != "counters"}

    def flows(self) -> int:
        """How many flows the state holds (for events and the summary)."""
        f = self.data.get("flows")
        return len(f) if isinstance(f, (list, tuple)) else 0


class Checkpoints:
    """The latest checkpoint of every member, and per NF when the next round is due."""

    def __init__(self) -> None:
        self._latest: dict[str, Checkpoint] = {}
        self._next: dict[str, float] = {}
        self._busy: set[str] = set()
        #: Per NF: rounds taken, members that did not answer, checkpoints restored.
        self.counts: dict[str, dict[str, int]] = {}

    def _count(self, nf: str, what: str, n: int = 1) -> None:
        c = self.counts.setdefault(nf, {"rounds": 0, "failed": 0, "restored": 0})
        c[what] += n

    def due(self, intervals: dict[str, float], now: float) -> list[str]:
        """The NFs (name -> interval in seconds) whose next round is due at ``now``, marked as
        under way (a round is never taken twice at once: :meth:`done` ends it)."""
        out = []
        for nf, every in intervals.items():
            if nf in self._busy:
                continue
            nxt = self._next.get(nf)
            if nxt is None:
                self._next[nf] = now + every  # the first round one interval after the start
                continue
            if now >= nxt:
                self._busy.add(nf)
                self._next[nf] = now + every
                out.append(nf)
        return out

    def done(self, nf: str, t: float, states: dict[str, Any]) -> None:
        """A round of ``nf`` ended: member -> its exported state (a dict), or the exception its
        ask raised (counted; the member's previous checkpoint stays)."""
        self._busy.discard(nf)
        self._count(nf, "rounds")
        for member, data in states.items():
            if isinstance(data, dict):
                self._latest[member] = Checkpoint(member, t, data)
            else:
                self._count(nf, "failed")

    def get(self, member: str) -> Checkpoint | None:
        """The latest checkpoint of ``member``, if any."""
        return self._latest.get(member)

    def restored(self, nf: str) -> None:
        """A replacement of one of ``nf``'s members imported its checkpoint."""
        self._count(nf, "restored")

    def forget(self, member: str) -> None:
        """``member`` left the deployment for good (scaled in, retired): its checkpoint goes."""
        self._latest.pop(member, None)

    def summary(self, now: float) -> dict[str, Any]:
        """Per NF: rounds, failures, restores, and the age in seconds of each member's latest."""
        out: dict[str, Any] = {}
        for nf, c in sorted(self.counts.items()):
            out[nf] = {**c, "age_seconds": {m: round(now - ck.t, 3) for m, ck in sorted(self._latest.items())
                                            if nf_of(m) == nf}}
        return out
