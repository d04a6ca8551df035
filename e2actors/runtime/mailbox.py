"""Bounded mailboxes with a stated overflow policy.

``block``: a sender that uses ``await put`` waits for room (backpressure); ``put_nowait`` raises
:class:`MailboxFull`. ``drop``: a message that finds the mailbox full is dropped and counted, like a
full NIC ring; neither call ever waits. Nothing ever grows without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from e2actors.errors import MailboxFull

Overflow = Literal["block", "drop"]


@dataclass(frozen=True, slots=True)
class MailboxStats:
    """A snapshot of one mailbox, read directly by metrics."""

    depth: int
    capacity: int
    dropped: int
    processed: int
    overflow: str


class Mailbox:
    """A bounded FIFO for one actor; one consumer (the actor), any number of producers."""

    __slots__ = ("_q", "capacity", "overflow", "dropped", "processed", "_getter", "_putters", "closed")

    def __init__(self, capacity: int = 1000, overflow: Overflow = "block") -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        if overflow not in ("block", "drop"):
            raise ValueError(f"unknown overflow policy {overflow!r} (block or drop)")
        self._q: deque[Any] = deque()
        self.capacity = capacity
        self.overflow: Overflow = overflow
        self.dropped = 0
        self.processed = 0
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    @property
    def items(self) -> deque[Any]:
        """The queued items, oldest first: a live view for the consumer to test and peek at (add
        and take only through the methods, which keep the waiters and counters right)."""
        return self._q

    def stats(self) -> MailboxStats:
        return MailboxStats(len(self._q), self.capacity, self.dropped, self.processed, self.overflow)

    def put_nowait(self, item: Any) -> bool:
        """Enqueue without waiting. Returns False when dropped (``drop`` policy, full).

        Raises :class:`MailboxFull` on a full ``block`` mailbox.
        """
        q = self._q
        if len(q) >= self.capacity:
            if self.overflow == "drop":
                self.dropped += 1
                return False
            raise MailboxFull(f"mailbox full ({self.capacity} messages)")
        q.append(item)
        g = self._getter
        if g is not None:
            self._getter = None
            if not g.done():
                g.set_result(None)
        return True

    async def put(self, item: Any) -> bool:
        """Enqueue, waiting for room on a ``block`` mailbox. Returns False when dropped."""
        while len(self._q) >= self.capacity:
            if self.overflow == "drop" or self.closed:
                self.dropped += 1
                return False
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                raise
        return self.put_nowait(item)

    def put_always(self, item: Any) -> None:
        """Enqueue at the back ignoring the bound: for messages whose number is bounded elsewhere
        (replies to requests this actor made) and that must never be dropped."""
        self._q.append(item)
        g = self._getter
        if g is not None:
            self._getter = None
            if not g.done():
                g.set_result(None)

    def put_front(self, item: Any) -> None:
        """Put an internal item at the head, ignoring the bound (used for system signals)."""
        self._q.appendleft(item)
        g = self._getter
        if g is not None:
            self._getter = None
            if not g.done():
                g.set_result(None)

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters:
            p = putters.popleft()
            if not p.done():
                p.set_result(None)
                return

    def get_nowait(self) -> Any:
        """Dequeue one item; raises IndexError when empty."""
        item = self._q.popleft()
        self.processed += 1
        if self._putters:
            self._wake_putter()
        return item

    async def wait(self) -> None:
        """Wait until at least one item is queued."""
        if self._q:
            return
        fut = asyncio.get_running_loop().create_future()
        self._getter = fut
        try:
            await fut
        finally:
            if self._getter is fut:
                self._getter = None

    async def get(self) -> Any:
        while not self._q:
            await self.wait()
        return self.get_nowait()

    def drain(self) -> list[Any]:
        """Remove and return everything queued (used when an actor stops)."""
        items = list(self._q)
        self._q.clear()
        self.closed = True
        while self._putters:
            p = self._putters.popleft()
            if not p.done():
                p.set_result(None)
        return items
