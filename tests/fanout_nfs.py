"""Pipelets for the fanout and live-overload tests (worker processes import this module by name)."""

from __future__ import annotations

from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from scaling_nfs import Burner


class Directions(Pipelet):
    """Counts TCP flows and how many it saw both ways: a switch process that gets only one
    direction of a connection (an asymmetric fanout) shows up as ``flows`` > ``both ways``."""

    affinity = "flow"
    cost_pps = 500_000

    async def process(self, batch: Batch) -> None:
        flows, now, c = self.flows, self.now, self.counters
        for p in batch.packets:
            if p.proto == 6 and p.sport >= 0:
                seen = flows.touch(p.flow_key, now)
                bit = 1 << p.direction
                if seen is None:
                    flows.set(p.flow_key, bit, now)
                    c["flows"] += 1
                elif not seen & bit:
                    flows.set(p.flow_key, seen | bit, now)
                    c["both ways"] += 1
            self.emit(p)


class Slow(Burner):
    """An overloaded NF: ``scaling_nfs.Burner`` (CPU time per packet, ``cost_us``) sized for
    5,000 packets/s."""

    cost_pps = 5_000
