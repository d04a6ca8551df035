"""Supervision policy, kept pure: when a child crashes, restart it, stop it, or escalate.

One-for-one: only the crashed child is affected. A child may restart at most ``max_restarts`` times
within ``within`` seconds; each restart waits a backoff that doubles from ``backoff`` up to
``backoff_max``. Past the limit the policy's ``on_exhausted`` applies: ``escalate`` (the parent
fails in turn and its own supervisor decides) or ``stop``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

Decision = Literal["restart", "stop", "escalate"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a parent treats a crashed child. ``strategy="stop"`` never restarts."""

    max_restarts: int = 3
    within: float = 10.0
    backoff: float = 0.01
    backoff_max: float = 1.0
    strategy: Literal["restart", "stop", "escalate"] = "restart"
    on_exhausted: Literal["escalate", "stop"] = "escalate"


class RestartTracker:
    """Counts a child's recent restarts and decides what its next crash leads to."""

    __slots__ = ("policy", "_times")

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: deque[float] = deque()

    def on_crash(self, now: float) -> tuple[Decision, float]:
        """Return ``(decision, delay_seconds)`` for a crash at time ``now``."""
        p = self.policy
        if p.strategy != "restart":
            return p.strategy, 0.0
        times = self._times
        while times and now - times[0] > p.within:
            times.popleft()
        if len(times) >= p.max_restarts:
            return p.on_exhausted, 0.0
        delay = min(p.backoff * (2 ** len(times)), p.backoff_max) if p.backoff > 0 else 0.0
        times.append(now)
        return "restart", delay
