"""Pipelets for the scaling tests and benchmark (workers import this module by name)."""

from __future__ import annotations

import time

from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch


class Burner(Pipelet):
    """CPU-bound: spends ``cost_us`` microseconds on each packet, tags it with this instance."""

    affinity = "flow"
    cost_pps = 20_000

    async def setup(self, config: dict) -> None:
        self.cost = float(config.get("cost_us", 50)) / 1e6

    async def process(self, batch: Batch) -> None:
        # CPU time, not wall time: a descheduled burner does no work, as a real NF would.
        clock = time.thread_time
        for p in batch.packets:
            end = clock() + self.cost
            while clock() < end:
                pass
            p.meta["inst"] = self.name
            self.emit(p)
