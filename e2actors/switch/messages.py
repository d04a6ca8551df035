"""Messages to and between switches (codec tags 320-339)."""

from __future__ import annotations

from dataclasses import dataclass

from e2actors.packet.batch import Batch
from e2actors.runtime.codec import message
from e2actors.switch.table import SwitchTable

__all__ = ["CloseInputs", "Credit", "Drained", "GetSwitchStats", "GetTraces", "RemoteBatch", "SetTable", "SwitchLoad"]


@message(320)
@dataclass(frozen=True, slots=True)
class SetTable:
    """Install a new table (ask; the reply is the installed version)."""

    table: SwitchTable


@message(321)
@dataclass(frozen=True, slots=True)
class RemoteBatch:
    """Packets handed from one server's switch to another's: ``target`` is ``inst:NAME`` (deliver
    to that local instance), ``port:NAME`` (send out of that local port) or ``nf:NAME`` (balance
    there). Metadata travels inside the packets."""

    target: str
    batch: Batch
    source: str = ""


@message(322)
@dataclass(frozen=True, slots=True)
class GetSwitchStats:
    """Ask a switch for its counters (reply: a dict)."""


@message(323)
@dataclass(frozen=True, slots=True)
class Drained:
    """A draining instance has no flows left (switch -> manager): it may stop."""

    nf: str
    instance: str
    server: str


@message(324)
@dataclass(frozen=True, slots=True)
class GetTraces:
    """Ask a switch for the traces of sampled packets that ended there (reply: a list)."""

    clear: bool = False


@message(325)
@dataclass(frozen=True, slots=True)
class Credit:
    """Ingress credits handed back to the switch that holds the origins: ``(origin, packets)``
    pairs for packets finished elsewhere (see :mod:`e2actors.switch.credits`)."""

    credits: tuple[tuple[int, int], ...]


@message(326)
@dataclass(frozen=True, slots=True)
class SwitchLoad:
    """What a switch sees of its local instances' load (switch -> manager, a few times a
    second): packets waiting in the switch for each, and packets dropped for lack of room since
    the last report. The autoscaler counts the drops as overload."""

    server: str
    backlog: tuple[tuple[str, int], ...]
    congestion: tuple[tuple[str, int], ...]


@message(327)
@dataclass(frozen=True, slots=True)
class CloseInputs:
    """Read no more from the input ports (ask; the end of a live run): what is in the deployment
    still goes its way, so the run's account closes exactly."""
