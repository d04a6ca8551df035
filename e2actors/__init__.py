"""e2actors: the E2 design for network function virtualization, on asyncio actors.

The public surface lives here; see README.md and DESIGN.md for the architecture.
"""

from __future__ import annotations

from e2actors._version import __version__
from e2actors.errors import (
    ActorStopped,
    AskTimeout,
    AuthError,
    CodecError,
    E2Error,
    FilterError,
    MailboxFull,
    PcapError,
    PlacementError,
    PolicyError,
    RemoteError,
    RuleError,
    SpawnRefused,
    TransportError,
)
from e2actors.manager.hardware import Hardware
from e2actors.manager.manager import Manager, Traffic
from e2actors.manager.plan import Plan, make_plan
from e2actors.manager.policy import Policy
from e2actors.nf.pipelet import DROP, Pipelet, Verdict
from e2actors.packet.batch import Batch
from e2actors.packet.filter import Filter, compile_filter
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import PcapWriter, open_capture, read_packets, write_pcap
from e2actors.runtime import (
    Actor,
    ActorRef,
    GetNodeInfo,
    Mailbox,
    MailboxStats,
    Node,
    NodeInfo,
    NodeLost,
    NodeUp,
    RestartPolicy,
    Spawn,
    StopActor,
    Terminated,
    Tick,
    TLSConfig,
    message,
    register,
    run,
)

__all__ = [
    "Hardware", "Manager", "Plan", "PlacementError", "Policy", "PolicyError", "RuleError", "Traffic", "make_plan",
    "DROP", "Batch", "Filter", "Packet", "PcapWriter", "Pipelet", "Verdict", "compile_filter", "open_capture",
    "read_packets", "write_pcap",
    "Actor", "ActorRef", "ActorStopped", "AskTimeout", "AuthError", "CodecError", "E2Error", "FilterError",
    "GetNodeInfo", "Mailbox", "MailboxFull", "MailboxStats", "Node", "NodeInfo", "NodeLost", "NodeUp",
    "PcapError", "RemoteError", "RestartPolicy", "Spawn", "SpawnRefused", "StopActor", "TLSConfig",
    "Terminated", "Tick", "TransportError", "__version__", "message", "register", "run",
]
