"""``Counter``: counts packets and bytes per input port and per flow, and passes everything on."""

from __future__ import annotations

from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch

__all__ = ["Counter"]


class Counter(Pipelet):
    ports = ("out",)
    affinity = "flow"
    cost_pps = 1_000_000

    async def process(self, batch: Batch) -> None:
        flows, now, c = self.flows, self.now, self.counters
        out = self._default_out
        nbytes = 0
        for pkt in batch.packets:
            n = pkt.wirelen
            nbytes += n
            key = pkt.flow_key
            e = flows.touch(key, now)
            if e is None:
                flows.set(key, [1, n], now)
                c["flows"] += 1
            else:
                e[0] += 1
                e[1] += n
            c["port:" + pkt.port] += 1
            out.append(pkt)
        c["packets"] += len(batch.packets)
        c["bytes"] += nbytes

    def flow_counts(self) -> dict:
        """``flow key -> (packets, bytes)`` of the flows still tracked."""
        return {k: tuple(v) for k, v in self.flows.items()}
