"""e2actors: the E2 design for network function virtualization, on asyncio actors.

The public surface lives here; see README.md for a tour and docs/architecture.md for how it is
built (layers, glossary, actors).
"""

from __future__ import annotations

from e2actors._version import __version__
from e2actors.errors import (
    ActorStopped,
    AskTimeout,
    AuthError,
    ChangeFailed,
    CodecError,
    ConfigError,
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
    "Actor", "ActorRef", "ActorStopped", "AskTimeout", "AuthError", "ChangeFailed", "CodecError", "ConfigError",
    "E2Error", "FilterError",
    "GetNodeInfo", "Mailbox", "MailboxFull", "MailboxStats", "Node", "NodeInfo", "NodeLost", "NodeUp",
    "PcapError", "RemoteError", "RestartPolicy", "Spawn", "SpawnRefused", "StopActor", "TLSConfig",
    "Terminated", "Tick", "TransportError", "__version__", "message", "register", "run",
]


# The manager's names pull in networkx and scipy: load them on first use, so that processes that
# never plan (agents, workers, NF authors' tests) start fast.
_LAZY = {
    "Hardware": "e2actors.manager.hardware",
    "Manager": "e2actors.manager.manager",
    "Traffic": "e2actors.manager.manager",
    "Plan": "e2actors.manager.plan",
    "make_plan": "e2actors.manager.plan",
    "Policy": "e2actors.manager.policy",
}


def __getattr__(name: str):  # PEP 562
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'e2actors' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
