"""Messages between the switch, NF instances and the manager (codec tags 200-299)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import e2actors.packet.wire  # noqa: F401  (registers Packet and Batch with the codec)
from e2actors.packet.batch import Batch
from e2actors.runtime.codec import message

__all__ = ["ExportState", "GetStats", "ImportState", "LoadReport", "NFBatch", "NFOutput"]


@message(200)
@dataclass(frozen=True, slots=True)
class NFBatch:
    """Packets for an NF instance. ``seq`` numbers the batches of one sender."""

    batch: Batch
    seq: int = 0


@message(201)
@dataclass(frozen=True, slots=True)
class NFOutput:
    """What an instance emitted for batch ``seq``: ``(port, batch)`` pairs. ``dropped`` and
    ``lost`` count packets dropped by the NF and lost to an error since the previous output."""

    instance: str
    seq: int
    outputs: tuple[tuple[str, Batch], ...]
    dropped: int = 0
    lost: int = 0
    error: str = ""


@message(202)
@dataclass(frozen=True, slots=True)
class LoadReport:
    """An instance's load, sent to the manager a few times a second."""

    instance: str
    nf: str
    pps: float          # packets/s in over the last interval
    bps: float          # bits/s in
    queue: int          # batches waiting in the mailbox
    drops: int          # total packets dropped (mailbox full + by the NF)
    busy: float         # fraction of wall time spent processing, 0..1
    flows: int          # flows in the pipelet's flow table
    held: int           # packets held inside (shaper queue, stream gaps)
    packets: int        # total packets in
    ts: float


@message(203)
@dataclass(frozen=True, slots=True)
class ExportState:
    """Ask an instance for its pipelet's state (reply: a msgpack-safe dict)."""


@message(204)
@dataclass(frozen=True, slots=True)
class ImportState:
    """Give an instance state exported by another (reply: True)."""

    data: dict[str, Any]


@message(205)
@dataclass(frozen=True, slots=True)
class GetStats:
    """Ask an instance for its counters (reply: a dict)."""
