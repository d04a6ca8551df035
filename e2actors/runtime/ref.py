"""``ActorRef``: the location-transparent name of an actor.

A ref is plain data, the address of the node that hosts the actor plus the actor's name on that
node, so it can travel inside messages to other nodes and still work there. ``send`` and ``ask``
take refs whether the actor is local or remote; the node decides how to deliver.
"""

from __future__ import annotations

from typing import Any


class ActorRef:
    """The address of one actor: ``node`` (the hosting node's address) and ``name``.

    Equality and hashing use only ``(node, name)``.
    """

    __slots__ = ("node", "name", "cached_cell", "_hash")

    def __init__(self, node: str, name: str) -> None:
        self.node = node
        self.name = name
        #: The local actor cell behind this ref, cached by the node that resolved it so local
        #: sends skip the registry lookup (may be stale: the node checks it is alive). Never sent
        #: on the wire; None elsewhere.
        self.cached_cell: Any = None
        self._hash = hash((node, name))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ActorRef) and self.name == other.name and self.node == other.node
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"ActorRef({self.node!r}, {self.name!r})"

    def __str__(self) -> str:
        return f"{self.node}/{self.name}"

    def __reduce__(self) -> tuple:
        return (ActorRef, (self.node, self.name))
