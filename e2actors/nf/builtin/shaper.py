"""``Shaper``: token-bucket traffic shaping per traffic class, with a bounded queue.

Config::

    rate: 100Mbit          # bits per second (bit, kbit, Mbit, Gbit; SI units)
    burst: 1Mbit           # bucket depth in bits
    queue: 1000            # packets queued per class before dropping
    classes:               # optional: the first class whose filter matches takes the packet
      - {name: video, filter: "tcp port 443", rate: 20Mbit, burst: 500kbit}
      - {name: bulk, filter: "tcp port 80", rate: 5Mbit}

A packet leaves at once if its class's bucket holds enough tokens (its wire length in bits) and
nothing of its class waits; otherwise it joins the class's queue, released in order as tokens
accrue (every ``timer_interval``); a full queue drops (``queue full``). Time is the runner's
clock: packet time in tests, wall time live.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from e2actors.errors import ConfigError, FilterError
from e2actors.nf.config import config_number
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.filter import compile_filter
from e2actors.packet.packet import Packet

__all__ = ["Shaper", "parse_rate"]

_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
          "bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}


def parse_rate(v: Any, key: str = "rate") -> float:
    """Bits (per second) from ``100Mbit``, ``1.5 gbit``, ``500kbit`` or a number (``key``: the
    config key it came from, for the error)."""
    if isinstance(v, (int, float)):
        return float(v)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(v))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError("Shaper", key, f"bad rate {v!r}: use a number of bits or a unit: bit, kbit, Mbit, Gbit")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


class _Class:
    __slots__ = ("name", "match", "rate", "burst", "tokens", "last", "queue", "limit", "sent_bits")

    def __init__(self, name: str, match: Any, rate: float, burst: float, limit: int, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ConfigError("Shaper", "rate", f"class {name}: rate and burst must be positive")
        self.name, self.match, self.rate, self.burst, self.limit = name, match, rate, burst, limit
        self.tokens = burst
        self.last = now
        self.queue: deque[Packet] = deque()
        self.sent_bits = 0.0

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def drain(self, now: float, out: list[Packet]) -> None:
        """Send queued packets at the instants the bucket allows them, up to ``now``.

        Departures are computed, not sampled: however coarse the timer, a backlog leaves at exactly
        ``rate`` (a bucket only caps idle accumulation at ``burst``, never a busy period).
        """
        q = self.queue
        while q:
            need = min(q[0].wirelen * 8, self.burst)
            t = self.last if self.tokens >= need else self.last + (need - self.tokens) / self.rate
            if t > now:
                break
            self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
            self.last = t
            pkt = q.popleft()
            self.tokens -= pkt.wirelen * 8
            self.sent_bits += pkt.wirelen * 8
            out.append(pkt)
        self.refill(now)


@dataclass
class ShaperConfig:
    """The Shaper's config (checked at plan time; rates such as ``100Mbit`` or bits/s)."""

    rate: str | int | float = "100Mbit"
    burst: str | int | float | None = None
    queue: int = 1000
    #: ``{filter, rate, burst, queue, name}`` mappings.
    classes: list[dict[str, Any]] = field(default_factory=list)


class Shaper(Pipelet):
    config_schema = ShaperConfig
    ports = ("out",)
    affinity = "none"
    cost_pps = 300_000
    timer_interval = 0.001

    setup_is_pure = True  # only reads its config: the planner checks it by running setup

    async def setup(self, config: dict[str, Any]) -> None:
        now = self.now
        limit = config_number("Shaper", config, "queue", 1000, minimum=0)
        rate = parse_rate(config.get("rate", "100Mbit"))
        burst = parse_rate(config.get("burst", max(rate / 100, 12_000 * 8)), "burst")
        self.classes: list[_Class] = []
        for i, c in enumerate(config.get("classes", ()) or ()):
            if not isinstance(c, dict) or "filter" not in c:
                raise ConfigError("Shaper", "classes", f"class {i + 1}: needs a filter")
            r = parse_rate(c.get("rate", rate), "classes")
            try:
                q = config_number("Shaper", c, "queue", limit, minimum=0)
            except ConfigError as exc:
                raise ConfigError("Shaper", "classes", f"class {i + 1}: queue: {exc.reason}") from None
            try:
                flt = compile_filter(c["filter"])
            except FilterError as exc:
                raise ConfigError("Shaper", "classes", f"class {i + 1}: filter: {exc}") from None
            self.classes.append(_Class(str(c.get("name", f"class{i + 1}")), flt, r,
                                       parse_rate(c.get("burst", burst), "classes"), q, now))
        self.default = _Class("default", None, rate, burst, limit, now)

    def _class_of(self, pkt: Packet) -> _Class:
        for c in self.classes:
            if c.match(pkt):
                return c
        return self.default

    async def process(self, batch: Batch) -> None:
        now = self.now
        out = self._default_out
        for pkt in batch.packets:
            c = self._class_of(pkt)
            if c.queue:
                c.drain(now, out)  # earlier packets of the class first
            else:
                c.refill(now)
            bits = pkt.wirelen * 8
            # A packet larger than the bucket goes when the bucket is full (tokens may go negative).
            if not c.queue and c.tokens >= min(bits, c.burst):
                c.tokens -= bits
                c.sent_bits += bits
                out.append(pkt)
            elif len(c.queue) < c.limit:
                c.queue.append(pkt)
            else:
                self.drop(pkt, "queue full")

    def on_timer(self) -> None:
        now = self.now
        out = self._default_out
        for c in (*self.classes, self.default):
            if c.queue:
                c.drain(now, out)

    def pending(self) -> int:
        return sum(len(c.queue) for c in (*self.classes, self.default))
