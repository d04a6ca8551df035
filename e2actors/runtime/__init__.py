"""The asyncio actor runtime: actors, refs, mailboxes, nodes, transport, codec, supervision."""

from e2actors.runtime.actor import Actor, Ask, Timer
from e2actors.runtime.codec import message, register
from e2actors.runtime.mailbox import Mailbox, MailboxStats
from e2actors.runtime.messages import GetNodeInfo, NodeInfo, NodeLost, NodeUp, Spawn, StopActor, Terminated, Tick
from e2actors.runtime.node import Node, TLSConfig, class_path, load_class, run
from e2actors.runtime.ref import ActorRef
from e2actors.runtime.supervision import RestartPolicy

__all__ = [
    "Actor", "ActorRef", "Ask", "GetNodeInfo", "Mailbox", "MailboxStats", "Node", "NodeInfo", "NodeLost",
    "NodeUp", "RestartPolicy", "Spawn", "StopActor", "TLSConfig", "Terminated", "Tick", "Timer",
    "class_path", "load_class", "message", "register", "run",
]
