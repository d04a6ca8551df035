"""Actors: ``Actor`` (what users subclass) and ``ActorCell`` (the runtime's shell around one).

An actor handles one message at a time from its bounded mailbox, in its own asyncio task. A cell
outlives restarts: the mailbox, the ref and the watchers stay; a new instance of the actor class is
built from the same arguments. Supervision decisions come from :mod:`e2actors.runtime.supervision`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from e2actors.errors import ActorStopped, E2Error
from e2actors.runtime.host import ActorHost
from e2actors.runtime.mailbox import Mailbox, MailboxStats, Overflow
from e2actors.runtime.messages import Terminated, Tick
from e2actors.runtime.ref import ActorRef
from e2actors.runtime.supervision import RestartPolicy, RestartTracker


log = logging.getLogger("e2actors.actor")


class Ask:
    """A request waiting for its reply; also the reply handle (``send``/``fail``).

    Local asks resolve a future directly (no encoding); remote asks send a REPLY frame back. An ask
    handled in the asker's task may have no future yet: the reply is then kept in ``value`` or
    ``error`` until the asker reads it.
    """

    __slots__ = ("msg", "fut", "remote", "done", "deferred", "value", "error")

    def __init__(self, msg: Any, fut: asyncio.Future | None, remote: Callable[[bool, Any], None] | None = None):
        self.msg = msg
        self.fut = fut
        self.remote = remote
        self.done = False
        self.deferred = False
        self.value: Any = None
        self.error: BaseException | None = None

    def send(self, value: Any = None) -> None:
        """Reply with ``value`` (only the first reply counts)."""
        if self.done:
            return
        self.done = True
        if self.fut is not None:
            if not self.fut.done():
                self.fut.set_result(value)
        elif self.remote is not None:
            self.remote(True, value)
        else:
            self.value = value

    def fail(self, exc: BaseException) -> None:
        """Reply with an error: the asker's ``await ask(...)`` raises it."""
        if self.done:
            return
        self.done = True
        if self.fut is not None:
            if not self.fut.done():
                self.fut.set_exception(exc)
        elif self.remote is not None:
            fields = exc.wire_fields() if isinstance(exc, E2Error) else {}
            self.remote(False, (type(exc).__name__, str(exc), fields) if fields else (type(exc).__name__, str(exc)))
        else:
            self.error = exc


class _Signal:
    __slots__ = ("kind", "arg")

    def __init__(self, kind: str, arg: Any = None) -> None:
        self.kind = kind
        self.arg = arg


_STOP = _Signal("stop")


class Timer:
    """A one-shot or periodic timer that puts a message in its actor's mailbox."""

    __slots__ = ("_cell", "_msg", "_interval", "_handle", "_next", "cancelled")

    def __init__(self, cell: ActorCell, msg: Any, delay: float, interval: float | None) -> None:
        self._cell = cell
        self._msg = msg
        self._interval = interval
        loop = asyncio.get_running_loop()
        self._next = loop.time() + delay
        self._handle = loop.call_at(self._next, self._fire)
        self.cancelled = False

    def _fire(self) -> None:
        if self.cancelled or not self._cell.alive:
            return
        try:
            self._cell.mailbox.put_nowait(self._msg)
        except E2Error:
            pass  # a full block mailbox: this tick is skipped, the next one comes
        if self._interval is not None:
            loop = asyncio.get_running_loop()
            # Schedule from the planned time, not from now, so periodic timers do not drift.
            self._next = max(self._next + self._interval, loop.time())
            self._handle = loop.call_at(self._next, self._fire)
        else:
            self._cell.timers.discard(self)

    def cancel(self) -> None:
        self.cancelled = True
        self._handle.cancel()
        self._cell.timers.discard(self)


class Actor:
    """Subclass and override ``on_message``; ``on_start`` and ``on_stop`` may be sync or async.

    Class attributes set the mailbox: ``mailbox_size`` and ``overflow`` (``block``: senders that
    ``await tell`` wait, ``drop``: a full mailbox drops and counts). ``restart_policy`` is how the
    parent treats this actor when it crashes.
    """

    mailbox_size: int = 1000
    overflow: Overflow = "block"
    restart_policy: RestartPolicy = RestartPolicy()
    #: Message types that skip the queue (control messages that must not wait behind a backlog of
    #: data, such as a switch's new table). They are never dropped for lack of room.
    urgent: frozenset[type] = frozenset()
    #: Message types never dropped for lack of room, queued in order past the bound: their number
    #: must be bounded by the protocol (e.g. a switch's NF outputs: one per batch it sent out).
    lossless: frozenset[type] = frozenset()

    # Set by the runtime before on_start.
    ref: ActorRef
    node: ActorHost
    name: str
    parent: ActorRef | None
    _cell: ActorCell

    # --- lifecycle hooks ------------------------------------------------------------------------
    @classmethod
    def check_spawn(cls, node: ActorHost, kwargs: dict[str, Any]) -> None:
        """Called before the actor is created: raise to refuse a spawn (bad or unsafe arguments),
        so the spawner gets the error instead of an actor that fails to start."""

    def on_start(self) -> Awaitable[None] | None:
        """Called once in the actor's task before its first message (and after each restart)."""
        return None

    async def on_message(self, msg: Any) -> Any:
        """Handle one message. For an ask, the return value is the reply unless ``reply`` was used."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(msg).__name__}")

    def on_stop(self) -> Awaitable[None] | None:
        """Called once when the actor stops (also before a restart replaces this instance)."""
        return None

    # --- messaging ------------------------------------------------------------------------------
    def send(self, ref: ActorRef, msg: Any) -> bool:
        """Tell without waiting. Returns False when a ``drop`` mailbox dropped the message;
        raises :class:`MailboxFull` on a full local ``block`` mailbox."""
        return self.node.send(ref, msg)

    async def tell(self, ref: ActorRef, msg: Any) -> bool:
        """Tell, waiting for room when the target's mailbox (or the connection) is full."""
        return await self.node.tell(ref, msg)

    async def ask(self, ref: ActorRef, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send ``msg`` and wait for the reply. Raises :class:`AskTimeout`, :class:`ActorStopped`
        or, for a remote handler that raised, :class:`RemoteError`."""
        return await self.node.ask(ref, msg, timeout=timeout)

    def next_queued(self, types: frozenset[type]) -> Any:
        """Take the next message from this actor's mailbox now if its type is one of ``types``
        (else None): an actor that batches its input (a switch coalescing what several messages
        bring) handles a run of them in one turn. Never an ask or a system signal."""
        cell = self._cell
        q = cell.queue
        if q and type(q[0]) in types:
            return cell.mailbox.get_nowait()
        return None

    def remind(self, msg: Any) -> None:
        """Put ``msg`` in this actor's own mailbox now, past its bound (for a message the actor
        keeps at most one of pending, e.g. a tick its own I/O asks for: never dropped)."""
        self._cell.mailbox.put_always(msg)

    def count_queued(self, types: frozenset[type] | tuple[type, ...]) -> int:
        """How many messages whose type is one of ``types`` wait in this actor's mailbox."""
        return sum(1 for m in self._cell.queue if type(m) in types)

    @property
    def current_ask(self) -> Ask | None:
        """The ask being handled now (None while handling a tell): its ``send``/``fail`` reply."""
        return self._cell.current_ask

    def reply(self, value: Any = None) -> None:
        """Reply to the ask being handled now (instead of returning the value)."""
        cur = self._cell.current_ask
        if cur is None:
            raise E2Error("reply() outside the handling of an ask")
        cur.send(value)

    def defer_reply(self) -> Ask:
        """Keep the current ask open past this handler; call ``.send(v)``/``.fail(e)`` later."""
        cur = self._cell.current_ask
        if cur is None:
            raise E2Error("defer_reply() outside the handling of an ask")
        cur.deferred = True
        return cur

    # --- timers, children, watches --------------------------------------------------------------
    def every(self, interval: float, msg: Any = None, *, name: str = "tick", delay: float | None = None) -> Timer:
        """Put ``msg`` (default ``Tick(name)``) in this actor's mailbox every ``interval`` seconds."""
        t = Timer(self._cell, msg if msg is not None else Tick(name), interval if delay is None else delay, interval)
        self._cell.timers.add(t)
        return t

    def after(self, delay: float, msg: Any = None, *, name: str = "tick") -> Timer:
        """Put ``msg`` (default ``Tick(name)``) in this actor's mailbox once, after ``delay``."""
        t = Timer(self._cell, msg if msg is not None else Tick(name), delay, None)
        self._cell.timers.add(t)
        return t

    def spawn(self, cls: type[Actor], name: str | None = None, *, restart: RestartPolicy | None = None,
              mailbox_size: int | None = None, overflow: Overflow | None = None, **kwargs: Any) -> ActorRef:
        """Start a child actor supervised by this one; returns its ref."""
        return self.node.spawn_child(self._cell, cls, name, restart, mailbox_size, overflow, kwargs)

    def watch(self, ref: ActorRef) -> None:
        """Get a :class:`Terminated` message when ``ref`` stops or its node is lost."""
        self.node.watch(ref, self.ref)

    def unwatch(self, ref: ActorRef) -> None:
        self.node.unwatch(ref, self.ref)

    def stop(self) -> None:
        """Stop this actor after the current message."""
        self._cell.request_stop()

    @property
    def children(self) -> list[ActorRef]:
        return [c.ref for c in self._cell.children.values()]

    @property
    def mailbox(self) -> MailboxStats:
        return self._cell.mailbox.stats()

    @property
    def carry(self) -> dict[str, Any]:
        """A dict that outlives this actor's restarts (a restart builds a new instance of the class):
        what must survive a crash — counters, the errors seen — goes here."""
        return self._cell.carry

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted this actor."""
        return self._cell.restarts


async def _maybe_await(x: Any) -> None:
    if inspect.isawaitable(x):
        await x


class ActorCell:
    """The runtime side of one actor: mailbox, task, supervision, watchers. Not public."""

    __slots__ = ("node", "ref", "cls", "kwargs", "actor", "mailbox", "queue", "parent", "children", "watchers",
                 "timers", "tracker", "task", "alive", "stopping", "current_ask", "stop_reason", "restarts",
                 "crashes", "parked", "busy", "_busy_waiter", "urgent", "lossless", "carry", "__weakref__")

    def __init__(self, node: ActorHost, ref: ActorRef, cls: type[Actor], kwargs: dict[str, Any], parent: ActorCell | None,
                 policy: RestartPolicy, mailbox: Mailbox) -> None:
        self.node = node
        self.ref = ref
        self.cls = cls
        self.kwargs = kwargs
        self.actor: Actor | None = None
        self.mailbox = mailbox
        #: The mailbox's queued items (``Mailbox.items``), read on the hot paths without a call.
        self.queue = mailbox.items
        self.parent = parent
        self.children: dict[str, ActorCell] = {}
        self.watchers: set[ActorRef] = set()
        self.timers: set[Timer] = set()
        self.tracker = RestartTracker(policy)
        self.task: asyncio.Task | None = None
        self.alive = True
        self.stopping = False
        self.current_ask: Ask | None = None
        self.stop_reason = "stopped"
        self.restarts = 0
        self.crashes = 0
        self.urgent = cls.urgent
        self.lossless = cls.lossless
        self.parked = False   # the actor's task waits on an empty mailbox
        self.busy = False     # an ask is being handled in the asker's task (see ask_inline)
        self._busy_waiter: asyncio.Future[None] | None = None
        self.carry: dict[str, Any] = {}  # what the actor keeps across its restarts (Actor.carry)

    def _new_actor(self) -> Actor:
        actor = self.cls(**self.kwargs)
        actor.ref = self.ref
        actor.node = self.node
        actor.name = self.ref.name
        actor.parent = self.parent.ref if self.parent is not None else None
        actor._cell = self
        self.actor = actor
        return actor

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"actor:{self.ref.name}")

    def request_stop(self, reason: str | None = None) -> None:
        if not self.stopping:
            self.stopping = True
            if reason is not None:
                self.stop_reason = reason
            self.mailbox.put_front(_STOP)

    async def _run(self) -> None:
        mb = self.mailbox
        q = self.queue
        try:
            actor = self._new_actor()
            await _maybe_await(actor.on_start())
        except Exception as exc:
            if not await self._crashed(exc, "on_start"):
                await self._finish()
                return
        while True:
            if not q:
                self.parked = True
                try:
                    await mb.wait()
                finally:
                    self.parked = False
                continue
            if self.busy:
                # An ask runs in its asker's task; one message at a time, so wait for it.
                w = self._busy_waiter = asyncio.get_running_loop().create_future()
                await w
                continue
            item = mb.get_nowait()
            t = type(item)
            actor = self.actor
            if t is Ask:
                self.current_ask = item
                try:
                    result = await actor.on_message(item.msg)  # type: ignore[union-attr]
                except Exception as exc:
                    self.current_ask = None
                    item.fail(exc)
                    if not await self._crashed(exc, item.msg):
                        break
                    continue
                self.current_ask = None
                if not item.done and not item.deferred:
                    item.send(result)
            elif t is _Signal:
                if item.kind == "stop":
                    break
                if item.kind == "crashed":  # an inline ask's handler raised
                    if not await self._crashed(*item.arg):
                        break
                elif item.kind == "escalated":
                    if not await self._crashed(item.arg, "a child's escalated failure"):
                        break
            else:
                try:
                    await actor.on_message(item)  # type: ignore[union-attr]
                except Exception as exc:
                    if not await self._crashed(exc, item):
                        break
        await self._finish()

    # --- asks handled in the asker's task ------------------------------------------------------
    # Node.ask takes this path only when the actor's task is parked on an empty mailbox and no
    # other ask is running inline: the ask would be the very next message anyway, so order and
    # one-message-at-a-time both hold.
    def ask_inline(self, msg: Any, loop: asyncio.AbstractEventLoop) -> tuple[bool, Any]:
        """Handle an ask by running the handler in the caller's task, with no task switch.

        Returns ``(True, reply)`` when the handler finished without suspending (the common case),
        else ``(False, future)``. A handler that suspends is carried on in a task of its own, so
        cancelling the asker never cancels the actor's handler; the actor stays busy (its loop
        waits) until it ends. Errors are raised here as they would be from a normal ask.
        """
        item = Ask(msg, None)
        self.busy = True
        self.current_ask = item
        self.mailbox.processed += 1
        try:
            coro = self.actor.on_message(msg)  # type: ignore[union-attr]
            yielded = coro.send(None)
        except StopIteration as stop:
            result = stop.value
        except Exception as exc:
            self._inline_done(item, None, exc)
            raise
        else:
            self.current_ask = None
            fut = item.fut = loop.create_future()
            # The node keeps the task (and cancels it if it stops first); the actor waits for it.
            self.node.create_task(self._drive(coro, yielded, item), name=f"ask:{self.ref.name}")
            return False, fut
        self.current_ask = None
        self.busy = False
        w = self._busy_waiter
        if w is not None:  # the loop woke meanwhile (the handler told this actor something)
            self._busy_waiter = None
            if not w.done():
                w.set_result(None)
        if item.done:
            if item.error is not None:
                raise item.error
            return True, item.value
        if item.deferred:
            fut = item.fut = loop.create_future()
            return False, fut
        return True, result

    async def _drive(self, coro: Any, yielded: Any, item: Ask) -> None:
        try:
            while True:
                await _Resume(yielded)
                self.current_ask = item
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:
                    self._inline_done(item, stop.value, None)
                    return
                self.current_ask = None
        except asyncio.CancelledError:
            coro.close()
            self._inline_done(item, None, ActorStopped(f"{self.ref} stopped while handling an ask"), crash=False)
            raise
        except Exception as exc:
            self._inline_done(item, None, exc)

    def _inline_done(self, item: Ask, result: Any, exc: BaseException | None, crash: bool = True) -> None:
        self.current_ask = None
        self.busy = False
        if exc is not None:
            item.fail(exc)
            if crash:
                self.mailbox.put_front(_Signal("crashed", (exc, item.msg)))
        elif not item.done and not item.deferred:
            item.send(result)
        w = self._busy_waiter
        if w is not None:
            self._busy_waiter = None
            if not w.done():
                w.set_result(None)

    async def _crashed(self, exc: BaseException, msg: Any) -> bool:
        """Apply the restart policy. True: carry on (restarted). False: the actor stops."""
        self.crashes += 1
        self.node.counters["actor_crashes"] += 1
        decision, delay = self.tracker.on_crash(time.monotonic())
        log.warning("actor %s crashed on %s: %r -> %s", self.ref, _short(msg), exc, decision,
                    exc_info=log.isEnabledFor(logging.DEBUG))
        if self.stopping:
            return False
        if decision == "restart":
            await self._stop_instance()
            if delay:
                await asyncio.sleep(delay)
            if self.stopping:
                return False
            self.restarts += 1
            self.node.counters["actor_restarts"] += 1
            try:
                actor = self._new_actor()
                await _maybe_await(actor.on_start())
            except Exception as exc2:
                return await self._crashed(exc2, "on_start")
            return True
        self.stop_reason = f"failed: {type(exc).__name__}: {exc}"
        if decision == "escalate":
            if self.parent is not None and self.parent.alive:
                self.parent.mailbox.put_front(_Signal("escalated", exc))
            else:
                log.error("actor %s failed and has no supervisor to escalate to: stopped (%r)", self.ref, exc)
        return False

    async def _stop_instance(self) -> None:
        """Stop the current instance's children and timers and call its on_stop (restart or stop)."""
        for t in list(self.timers):
            t.cancel()
        children = list(self.children.values())
        for c in children:
            c.request_stop()
        for c in children:
            if c.task is not None:
                await asyncio.shield(c.task)
        actor = self.actor
        if actor is not None:
            self.actor = None
            try:
                await _maybe_await(actor.on_stop())
            except Exception as exc:
                log.warning("actor %s: on_stop raised %r", self.ref, exc)

    async def _finish(self) -> None:
        self.stopping = True
        await self._stop_instance()
        self.alive = False
        dead = self.mailbox.drain()
        for item in dead:
            if type(item) is Ask:
                item.fail(ActorStopped(f"{self.ref} stopped before replying"))
            elif type(item) is not _Signal:
                self.node.counters["dead_letters"] += 1
        self.node.unregister(self)
        if self.parent is not None:
            self.parent.children.pop(self.ref.name, None)
        term = Terminated(self.ref, self.stop_reason)
        for w in self.watchers:
            try:
                self.node.send(w, term)
            except E2Error:
                pass
        self.watchers.clear()


class _Resume:
    """Re-yield a future that a manually stepped coroutine yielded, so the driving task waits on it
    exactly as if the coroutine had been a task's own (None means: yield to the loop once)."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any) -> None:
        self.fut = fut

    def __await__(self) -> Any:
        yield self.fut


def _short(msg: Any) -> str:
    s = repr(msg)
    return s if len(s) <= 120 else s[:117] + "..."
