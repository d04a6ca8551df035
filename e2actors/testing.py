"""Test a pipelet alone, on a capture or a list of packets, with no cluster.

    from e2actors.testing import run_pipelet
    res = run_pipelet(MyNF, "trace.pcap", config={"threshold": 3})
    assert len(res.outputs["out"]) == 10
    assert res.drops["acl deny"] == 2

The pipelet runs under the same :class:`~e2actors.nf.runner.PipeletRunner` as in a deployment,
on packet time (the capture's timestamps), so results are deterministic: bytestream NFs get
reassembled streams, timers fire on packet time, and at the end held packets (a shaper's queue)
are drained by advancing time.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from e2actors.nf.pipelet import Pipelet
from e2actors.nf.runner import PipeletRunner, RunnerStats
from e2actors.packet.batch import DEFAULT_BATCH, Batch
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import read_packets

__all__ = ["PipeletResult", "arun_pipelet", "run_pipelet"]


@dataclass
class PipeletResult:
    """What left the pipelet: ``outputs[port]`` in order, drop reasons, counters, the instance."""

    outputs: dict[str, list[Packet]]
    drops: collections.Counter
    counters: collections.Counter
    stats: RunnerStats
    malformed: int
    pipelet: Pipelet

    def port(self, name: str) -> list[Packet]:
        return self.outputs.get(name, [])

    @property
    def emitted(self) -> int:
        return sum(len(v) for v in self.outputs.values())

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def metadata(self, key: str) -> collections.Counter:
        """How many emitted packets carry each value of ``meta[key]``."""
        c: collections.Counter = collections.Counter()
        for lst in self.outputs.values():
            for p in lst:
                if p.has_meta and key in p.meta:
                    c[p.meta[key]] += 1
        return c


def _packets(src: str | os.PathLike | Iterable[Packet]) -> Iterable[Packet]:
    if isinstance(src, (str, os.PathLike)):
        return read_packets(src, port="in")
    return src


async def arun_pipelet(pipelet: Pipelet | type[Pipelet], packets: str | os.PathLike | Iterable[Packet],
                       config: dict[str, Any] | None = None, batch_size: int = DEFAULT_BATCH,
                       drop_malformed: bool = True) -> PipeletResult:
    """The coroutine behind :func:`run_pipelet`, for use inside a running event loop."""
    nf = pipelet() if isinstance(pipelet, type) else pipelet
    runner = PipeletRunner(nf, clock="packet")
    outputs: dict[str, list[Packet]] = {p: [] for p in nf.ports}
    malformed = 0

    def take(out: dict[str, list[Packet]]) -> None:
        for port, lst in out.items():
            if lst:
                outputs.setdefault(port, []).extend(lst)  # (a pipelet may name its ports in setup)

    first = True
    batch: list[Packet] = []
    try:
        for pkt in _packets(packets):
            if first:
                nf.now = pkt.ts
                await runner.start(config)
                first = False
            if drop_malformed and pkt.reason is not None:
                malformed += 1  # as the switch does: counted and dropped before any NF
                continue
            batch.append(pkt)
            if len(batch) >= batch_size:
                take(await runner.run(Batch(batch)))
                batch = []
        if first:
            await runner.start(config)
        if batch:
            take(await runner.run(Batch(batch)))
        take(await runner.finish())
    finally:
        await runner.stop()
    return PipeletResult(outputs, nf.drops, nf.counters, runner.stats, malformed, nf)


def run_pipelet(pipelet: Pipelet | type[Pipelet], packets: str | os.PathLike | Iterable[Packet],
                config: dict[str, Any] | None = None, batch_size: int = DEFAULT_BATCH,
                drop_malformed: bool = True) -> PipeletResult:
    """Run ``pipelet`` (a class or an instance) over a capture path or packets; see the module doc.

    Inside a running event loop (an async test) use ``await arun_pipelet(...)`` instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_pipelet(pipelet, packets, config, batch_size, drop_malformed))
    raise RuntimeError("run_pipelet() called inside a running event loop: use await arun_pipelet(...)")
