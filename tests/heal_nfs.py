"""Pipelets for the tests of upgrades and failures (workers import this module by name)."""

from __future__ import annotations

import os

from e2actors.nf.builtin.nat import NAT
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch


class NAT2(NAT):
    """The NAT, version 2: the same translation; packets it handled carry ``meta["ver"] = 2``."""

    async def process(self, batch: Batch) -> None:
        for pkt in batch.packets:
            out = self._translate(pkt)
            if out is not None:
                out.meta["ver"] = 2
                self.emit(out)


class Crasher(Pipelet):
    """Passes packets on; raises on a batch holding a packet whose payload starts with ``boom``."""

    affinity = "none"

    async def process(self, batch: Batch) -> None:
        for p in batch.packets:
            if p.payload_len > 0 and p.data[p.payload_offset:p.payload_offset + 4] == b"boom":
                raise RuntimeError("boom")
        for p in batch.packets:
            self.emit(p)


class Tagger(Pipelet):
    """Tags each packet with ``meta["tag"] = config["tag"]`` and ``meta["pid"]`` (its process)."""

    async def setup(self, config: dict) -> None:
        self.tag = config.get("tag", "t")

    async def process(self, batch: Batch) -> None:
        for p in batch.packets:
            p.meta["tag"] = self.tag
            p.meta["pid"] = os.getpid()
            self.emit(p)
