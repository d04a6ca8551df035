"""What an actor needs from the node it runs on: :class:`ActorHost`.

:class:`~e2actors.runtime.node.Node` implements it; :mod:`e2actors.runtime.actor` names only this
protocol, so the actor layer does not import the node (which builds on actors): the runtime has
no import cycle.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

from e2actors.runtime.mailbox import Overflow
from e2actors.runtime.ref import ActorRef
from e2actors.runtime.supervision import RestartPolicy

__all__ = ["ActorHost"]

T = TypeVar("T")


@runtime_checkable
class ActorHost(Protocol):
    """The node an actor runs on, as the actor and its cell use it (``Actor.node``)."""

    #: The node's name and address (``tcp://...``, ``unix://...``, ``anon://...``).
    name: str
    address: str
    #: Node events (crashes, restarts, dead letters, refused spawns, ...).
    counters: collections.Counter[str]
    #: Modules actors may be loaded from on this node (``Spawn`` requests, pipelets).
    allow_spawn: tuple[str, ...]
    #: What NF configurations may touch here (a :class:`~e2actors.runtime.confine.Confinement`), or None.
    confine: Any
    #: Cores this node offers.
    cores: int

    def send(self, ref: ActorRef, msg: Any) -> bool: ...

    async def tell(self, ref: ActorRef, msg: Any) -> bool: ...

    async def ask(self, ref: ActorRef, msg: Any, timeout: float | None = 5.0) -> Any: ...

    # (``parent`` is an ActorCell or None, ``cls`` an Actor subclass: named loosely here, since
    # the actor module imports this one)
    def spawn_child(self, parent: Any, cls: type, name: str | None = None,
                    restart: RestartPolicy | None = None, mailbox_size: int | None = None,
                    overflow: Overflow | None = None, kwargs: dict[str, Any] | None = None) -> ActorRef: ...

    def watch(self, target: ActorRef, watcher: ActorRef) -> None: ...

    def unwatch(self, target: ActorRef, watcher: ActorRef) -> None: ...

    def unregister(self, cell: Any) -> None: ...

    def create_task(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]: ...

    def is_alive(self, ref: ActorRef) -> bool: ...

    def link_backlog(self, ref: ActorRef) -> int: ...

    def subscribe(self, ref: ActorRef) -> None: ...
