"""Rate-limited warnings: a hostile peer that fails a thousand handshakes a second must not write
megabytes of log. Pure code (the clock is a parameter).

Each *key* (a kind of failure: ``auth_failures``, ``handshake_timeouts``, ...) may log ``burst``
messages per ``period`` seconds; past that, messages are counted, not written, and the next one
written says how many were left out. Counters (``node.counters``) still count every event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """``warning(key, fmt, *args)``: log unless ``key`` already logged ``burst`` times this period."""

    def __init__(self, logger: logging.Logger, burst: int = 5, period: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self.clock = clock
        self._windows: dict[str, list] = {}   # key -> [window start, logged, suppressed]

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log this one, how many were suppressed since the last one logged)."""
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.period:
            suppressed = w[2] if w is not None else 0
            self._windows[key] = [now, 1, 0]
            return True, suppressed
        if w[1] < self.burst:
            w[1] += 1
            return True, 0
        w[2] += 1
        return False, 0

    def warning(self, key: str, fmt: str, *args: object) -> bool:
        """Log a warning for ``key`` if its budget allows; returns whether it was written."""
        ok, suppressed = self.allow(key)
        if not ok:
            return False
        if suppressed:
            fmt += " (%d similar messages suppressed in the last %gs)"
            args = (*args, suppressed, self.period)
        self.logger.warning(fmt, *args)
        return True

    def suppressed(self) -> int:
        """Messages held back in the current windows (for tests and stats)."""
        return sum(w[2] for w in self._windows.values())
