"""Messages between the switch, NF instances and the manager (codec tags 200-299)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import e2actors.packet.wire  # noqa: F401  (registers Packet and Batch with the codec)
from e2actors.nf.pipelet import Verdict
from e2actors.packet.batch import Batch
from e2actors.runtime.codec import message, register
from e2actors.runtime.ref import ActorRef

__all__ = ["ExportState", "FinalStats", "GetStats", "ImportState", "InputDone", "LoadReport", "NFBatch", "NFOutput", "StreamVerdicts",
           "StreamWork"]


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
    ``lost`` count packets dropped by the NF and lost to an error since the previous output;
    ``finished``: ``(origin, packets)`` ingress credits of the packets it is done with (dropped,
    lost, consumed), for the switch to hand back (see :mod:`e2actors.switch.credits`)."""

    instance: str
    seq: int
    outputs: tuple[tuple[str, Batch], ...]
    dropped: int = 0
    lost: int = 0
    error: str = ""
    finished: tuple[tuple[int, int], ...] = ()


@message(202)
@dataclass(frozen=True, slots=True)
class LoadReport:
    """An instance's load, sent to the manager a few times a second."""

    instance: str
    nf: str
    pps: float          # packets/s in over the last interval
    bps: float          # bits/s in
    queue: int          # batches waiting in the mailbox
    drops: int          # batches its full mailbox refused, in total (overload; the NF's own drops are not)
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


@message(206)
@dataclass(frozen=True, slots=True)
class StreamWork:
    """Bytestream work for an NF instance from the switch that reassembles its flows. ``events``:
    ``(kind, flow, direction, arg, carriers)`` tuples (see :class:`~e2actors.nf.stream.StreamJob`),
    to be told to the pipelet in order; ``seq`` >= 0 asks for a :class:`StreamVerdicts` reply.
    ``packets``/``nbytes``: the flows' packets the switch took for this instance since the last
    work (its load); ``released``: ``(port, packets)`` that left by its verdicts since then and
    ``drops``: ``(reason, packets)`` its verdicts dropped (so its counters stay whole)."""

    seq: int
    events: tuple[tuple[Any, ...], ...]
    packets: int = 0
    nbytes: int = 0
    released: tuple[tuple[str, int], ...] = ()
    drops: tuple[tuple[str, int], ...] = ()
    reply_to: ActorRef | None = None


@message(207)
@dataclass(frozen=True, slots=True)
class StreamVerdicts:
    """An instance's answers to :class:`StreamWork` ``seq``: one per event (None, a port name or a
    :class:`~e2actors.nf.pipelet.Verdict`; None also where the pipelet failed)."""

    instance: str
    seq: int
    answers: tuple[Any, ...]


register(Verdict, 208)


@message(209)
@dataclass(frozen=True, slots=True)
class InputDone:
    """The deployment's input ended (manager -> switches and instances, once): replay clocks
    stop waiting for packets and go on with the wall clock, so what is held leaves."""



@message(210)
@dataclass(frozen=True, slots=True)
class FinalStats:
    """An instance's counters as it stops (instance -> its monitor, the manager): what it did and
    the errors it met are in the run's account even when it failed for good."""

    instance: str
    stats: dict[str, Any]
