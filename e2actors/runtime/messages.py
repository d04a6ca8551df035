"""The runtime's own message types (tags 1-99)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from e2actors.runtime.codec import message
from e2actors.runtime.ref import ActorRef


@message(1)
@dataclass(frozen=True, slots=True)
class Terminated:
    """Delivered to a watcher when the watched actor stops or its node is lost.

    ``reason``: ``"stopped"``, ``"failed: ..."``, ``"not found"`` or ``"node lost"``.
    """

    ref: ActorRef
    reason: str


@message(2)
@dataclass(frozen=True, slots=True)
class NodeLost:
    """Delivered to node-event subscribers when a peer node misses its heartbeats."""

    node: str
    reason: str


@message(3)
@dataclass(frozen=True, slots=True)
class NodeUp:
    """Delivered to node-event subscribers when a peer node connects and authenticates."""

    node: str


@message(4)
@dataclass(frozen=True, slots=True)
class Spawn:
    """Ask a node's ``$system`` actor to start an actor: ``cls`` is ``module:QualName``.

    The node refuses classes outside its allow-list. Replies with the new actor's ref.
    """

    cls: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@message(5)
@dataclass(frozen=True, slots=True)
class StopActor:
    """Ask a node's ``$system`` actor to stop one of its actors. Replies True if it was running."""

    name: str


@message(6)
@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's description, the reply to ``GetNodeInfo``."""

    address: str
    name: str
    version: str
    pid: int
    cores: int
    actors: tuple[str, ...]


@message(7)
@dataclass(frozen=True, slots=True)
class GetNodeInfo:
    """Ask a node's ``$system`` actor for its :class:`NodeInfo`."""


@message(8)
@dataclass(frozen=True, slots=True)
class Tick:
    """A timer's message when the timer was started without one of its own."""

    name: str
