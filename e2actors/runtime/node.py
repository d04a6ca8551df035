"""``Node``: one OS process, one event loop, the actors it hosts and its links to other nodes.

Local delivery hands the message object to the target's mailbox (no encoding: the zero-copy
path). Remote delivery encodes a frame and queues it on the peer's connection, connecting lazily
and reconnecting with backoff; frames to one peer keep their order. Peers exchange heartbeats; a
peer silent for ``heartbeat_timeout`` seconds is lost: its watched actors deliver ``Terminated``,
asks to it fail and node-event subscribers get ``NodeLost``.

Fencing (``fence_lost_spawners``, what an agent does): the actors a peer had this node spawn belong
to that peer's deployment. When the peer is lost (this node stopped hearing it, or this node
itself was paused longer than the timeout: the peer has declared *us* lost and replaced what runs
here), those actors are stopped at once with the reason ``fenced: ...``, so nothing a manager
already re-placed elsewhere runs twice when a paused process resumes. The other side:
:meth:`Node.quarantine` makes a node (a manager's) ignore what a lost peer still sends (its
queued frames arrive when the link is made again) except replies, until :meth:`Node.release`.

A node owns its connections through :class:`~e2actors.runtime.transport.LinkOwner` (and
``ListenerOwner``): :meth:`Node.on_ready`, :meth:`Node.on_frame` and :meth:`Node.on_lost` are
what the transport calls; the node uses only a connection's public methods.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import importlib
import logging
import os
import ssl as _ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from e2actors._version import __version__
from e2actors.errors import (
    ActorStopped,
    AskTimeout,
    AuthError,
    CodecError,
    E2Error,
    MailboxFull,
    SpawnRefused,
    TransportError,
    remote_error,
)
import e2actors.runtime.transport as transport
from e2actors.runtime.actor import Actor, ActorCell, Ask
from e2actors.runtime.codec import DEFAULT_MAX_FRAME, encode_frame
from e2actors.runtime.mailbox import Mailbox, Overflow
from e2actors.runtime.messages import GetNodeInfo, NodeInfo, NodeLost, NodeUp, Spawn, StopActor, Terminated
from e2actors.runtime.ratelog import RateLimitedLog
from e2actors.runtime.ref import ActorRef
from e2actors.runtime.service import ServiceActor
from e2actors.runtime.supervision import RestartPolicy
from e2actors.runtime.transport import ASK, HEARTBEAT, REPLY, TELL, UNWATCH, WATCH, Admission, Connection

log = logging.getLogger("e2actors.node")
T = TypeVar("T")

SYSTEM = "$system"
#: The shortest interval at which we send heartbeats, whatever timeout a peer states.
MIN_HEARTBEAT_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Mutual TLS between nodes: this node's certificate and key, and the CA that signs peers'."""

    cert: str
    key: str
    ca: str

    def server_context(self) -> _ssl.SSLContext:
        ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.verify_mode = _ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> _ssl.SSLContext:
        ctx = _ssl.create_default_context(_ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        # Nodes are addressed by IP; the peer is authenticated by the CA signature (and the
        # shared secret on top), not by a host name.
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_REQUIRED
        return ctx

    def cert_der(self) -> bytes:
        """This node's certificate (the first in ``cert``) in DER form, for the channel binding."""
        with open(self.cert, encoding="ascii", errors="replace") as f:
            pem = f.read()
        end = "-----END CERTIFICATE-----"
        i = pem.find(end)
        if i < 0:
            raise ValueError(f"{self.cert}: no PEM certificate")
        return _ssl.PEM_cert_to_DER_cert(pem[: i + len(end)])


class _Peer:
    __slots__ = ("address", "conn", "pending", "pending_bytes", "connecting", "last_seen", "lost", "ever_up")

    def __init__(self, address: str, now: float) -> None:
        self.address = address
        self.conn: Connection | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.connecting: asyncio.Task | None = None
        self.last_seen = now
        self.lost = False
        self.ever_up = False


class Node:
    """Hosts actors in this process and links them to actors on other nodes.

    ``listen``: ``tcp://127.0.0.1:0`` (port chosen), ``unix:///path`` or ``mem://name``; without it
    the node still connects out (its address is then ``anon://...``, reachable over its own links).
    ``secret``: the shared secret every peer must prove (required for any link).

    Bounds on what peers can make this node hold (each refusal closes one connection, is counted
    in :attr:`counters` and logged at a limited rate): ``handshake_timeout`` seconds from accept
    to a complete handshake (TLS included); at most ``max_connections`` accepted connections, and
    ``max_connections_per_host`` from one peer address (Unix and in-memory peers count as one
    host, ``local``); ``max_write_buffer`` bytes queued to a peer that does not read, and
    ``max_total_write_buffer`` to all of them together.
    ``confine``: what NF configurations may touch on this node (data directory, Legacy programs;
    :class:`~e2actors.runtime.confine.Confinement`); None: nothing is confined (a local run).
    ``fence_lost_spawners``: stop what a peer spawned here when it is lost (agents; see above).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        listen: str | None = None,
        secret: bytes | str | None = None,
        tls: TLSConfig | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 3.0,
        allow_spawn: tuple[str, ...] = ("e2actors.",),
        cores: int | None = None,
        max_pending_bytes: int = 64 * 1024 * 1024,
        handshake_timeout: float = transport.HANDSHAKE_TIMEOUT,
        max_connections: int = 512,
        max_connections_per_host: int = 32,
        max_write_buffer: int = 32 * 1024 * 1024,
        max_total_write_buffer: int = 256 * 1024 * 1024,
        confine: Any = None,
        remote_spawns: bool = True,
        fence_lost_spawners: bool = False,
    ) -> None:
        self.name = name or f"node-{os.getpid()}"
        self._listen = listen
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.tls = tls
        self.max_frame = max_frame
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.allow_spawn = allow_spawn
        self.cores = cores if cores is not None else (os.cpu_count() or 1)
        self.max_pending_bytes = max_pending_bytes
        self.handshake_timeout = handshake_timeout
        # Room for at least two of the largest frames (a big reply must not look like a stalled peer).
        self.max_write_buffer = max(max_write_buffer, 2 * max_frame + transport.FLUSH_BYTES)
        #: Bytes queued to all peers together (many slow peers, each under its own bound): over
        #: it, the peers with the most queued are dropped (``slow_peers``), checked every tick.
        self.max_total_write_buffer = max_total_write_buffer
        self.confine = confine
        #: Whether ``$system`` spawns actors other nodes ask for (agents: yes; a manager's node: no).
        self.remote_spawns = remote_spawns
        #: Stop the actors a peer spawned here when that peer is lost (see the module docstring).
        self.fence_lost_spawners = fence_lost_spawners
        #: Actor name -> the address of the peer whose Spawn request started it.
        self.spawned_by: dict[str, str] = {}
        self._hb_wake: asyncio.Event | None = None
        self._quarantined: set[str] = set()
        #: Warnings about hostile or broken peers, at a bounded rate (counters count every event).
        self.ratelog = RateLimitedLog(log)
        self._nonces: set[bytes] = set()   # our handshakes in progress (a hello sent back is refused)
        #: Accepted connections, counted against ``max_connections`` and ``max_connections_per_host``.
        self.admission = Admission(max_connections, max_connections_per_host)
        self.version = __version__
        self.address = f"anon://{self.name}-{uuid.uuid4().hex[:12]}"
        self.counters: collections.Counter[str] = collections.Counter()
        self._actors: dict[str, ActorCell] = {}
        self._peers: dict[str, _Peer] = {}
        self._conns: set[Connection] = set()
        self._asks: dict[int, tuple[asyncio.Future, str]] = {}
        self._next_req = 0
        self._next_name = 0
        self._remote_watches: dict[str, dict[ActorRef, set[ActorRef]]] = {}
        self._subscribers: set[ActorRef] = set()
        self._servers: list[Any] = []
        self._hb_task: asyncio.Task | None = None
        # Tasks the node started (reconnects, asks handled inline that suspended): kept until
        # done, cancelled and awaited by stop().
        self._tasks: set[asyncio.Task] = set()
        self._server_ssl = tls.server_context() if tls else None
        self._client_ssl = tls.client_context() if tls else None
        self._tls_cert_der = tls.cert_der() if tls else b""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running = False
        self._hb_frame = encode_frame(HEARTBEAT, None, None, None)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> Node:
        """Start listening (if asked), the heartbeats and the ``$system`` actor."""
        self.loop = asyncio.get_running_loop()
        self.running = True
        if self._listen is not None:
            self._need_secret()
            server, self.address = await transport.listen(self._listen, self, self._server_ssl)
            self._servers.append(server)
        self.spawn_child(None, SystemActor, SYSTEM)
        self._hb_task = self.loop.create_task(self._heartbeats(), name=f"heartbeats:{self.name}")
        return self

    async def stop(self) -> None:
        """Stop every actor (children first), close links and listeners."""
        if not self.running:
            return
        self.running = False
        tops = [c for c in self._actors.values() if c.parent is None]
        for c in tops:
            c.request_stop()
        for c in tops:
            if c.task is not None:
                try:
                    await c.task
                except Exception:  # the actor's own crash handling already logged it
                    pass
        me = asyncio.current_task()
        tasks = [t for t in (self._hb_task, *self._tasks) if t is not None and t is not me]
        for t in tasks:
            t.cancel()
        for s in self._servers:
            s.close()
        for conn in list(self._conns):
            conn.flush()
            conn.close()
        for fut, _addr in self._asks.values():
            if not fut.done():
                fut.set_exception(ActorStopped("node stopped"))
        self._asks.clear()
        await asyncio.gather(*tasks, *(s.wait_closed() for s in self._servers), return_exceptions=True)
        self._servers.clear()
        await asyncio.sleep(0)

    @property
    def max_connections(self) -> int:
        """The cap on connections accepted at once (``admission`` counts them)."""
        return self.admission.max_total

    @property
    def max_connections_per_host(self) -> int:
        """The cap on connections accepted at once from one peer address."""
        return self.admission.max_per_host

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _need_secret(self) -> None:
        if not self.secret:
            raise AuthError("a shared secret is required to link nodes (secret=...)")

    def create_task(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` in a task the node keeps until it is done; :meth:`stop` cancels and awaits
        those still running."""
        task = (self.loop or asyncio.get_running_loop()).create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- actors ---------------------------------------------------------------------------------
    def spawn(self, cls: type[Actor], name: str | None = None, *, restart: RestartPolicy | None = None,
              mailbox_size: int | None = None, overflow: Overflow | None = None, **kwargs: Any) -> ActorRef:
        """Start a top-level actor on this node; returns its ref."""
        return self.spawn_child(None, cls, name, restart, mailbox_size, overflow, kwargs)

    def spawn_child(self, parent: ActorCell | None, cls: type[Actor], name: str | None = None,
                    restart: RestartPolicy | None = None, mailbox_size: int | None = None,
                    overflow: Overflow | None = None, kwargs: dict[str, Any] | None = None) -> ActorRef:
        """Start an actor supervised by ``parent`` (None: a top-level actor), built with ``kwargs``;
        what :meth:`spawn` and :meth:`Actor.spawn <e2actors.runtime.actor.Actor.spawn>` call."""
        if kwargs is None:
            kwargs = {}
        if not self.running:
            raise ActorStopped(f"node {self.name} is not running")
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"{cls!r} is not an Actor subclass")
        if name is None:
            self._next_name += 1
            name = f"{cls.__name__.lower()}-{self._next_name}"
        if name in self._actors:
            raise E2Error(f"an actor named {name!r} already runs on {self.address}")
        try:
            cls.check_spawn(self, kwargs)
        except SpawnRefused as exc:
            self.counters["spawn_refused"] += 1
            self.ratelog.warning("spawn_refused", "%s: refused to spawn %s %s: %s", self.name, cls.__name__, name, exc)
            raise
        ref = ActorRef(self.address, name)
        mb = Mailbox(mailbox_size or cls.mailbox_size, overflow or cls.overflow)
        cell = ActorCell(self, ref, cls, kwargs, parent, restart or cls.restart_policy, mb)
        ref.cached_cell = cell
        self._actors[name] = cell
        if parent is not None:
            parent.children[name] = cell
        cell.start()
        return ref

    def unregister(self, cell: ActorCell) -> None:
        """Forget a stopped actor's cell (the cell calls this when it finishes)."""
        if self._actors.get(cell.ref.name) is cell:
            del self._actors[cell.ref.name]
            self.spawned_by.pop(cell.ref.name, None)

    def _local(self, ref: ActorRef) -> ActorCell | None:
        cell = ref.cached_cell
        if cell is not None and cell.alive:
            return cell
        if ref.node != self.address:
            return None
        cell = self._actors.get(ref.name)
        if cell is not None:
            ref.cached_cell = cell
        return cell

    def ref(self, address: str, name: str) -> ActorRef:
        """A ref to actor ``name`` on the node at ``address`` (``self.address`` for local)."""
        return ActorRef(address, name)

    def system_ref(self, address: str) -> ActorRef:
        """The ``$system`` actor of the node at ``address`` (spawns, stops, describes)."""
        return ActorRef(address, SYSTEM)

    async def stop_actor(self, ref: ActorRef) -> None:
        """Stop a local actor and wait until it has stopped."""
        cell = self._local(ref)
        if cell is None:
            return
        cell.request_stop()
        if cell.task is not None and cell.task is not asyncio.current_task():
            await asyncio.shield(cell.task)

    def fence(self, address: str, reason: str) -> list[str]:
        """Stop every actor the peer at ``address`` spawned here (they stop with ``reason``, which
        their watchers get in ``Terminated``); returns their names. Counted as ``fenced_actors``."""
        names = [n for n, a in self.spawned_by.items() if a == address]
        for n in names:
            cell = self._actors.get(n)
            if cell is not None:
                cell.request_stop(reason)
        if names:
            self.counters["fenced_actors"] += len(names)
            log.warning("%s: fenced %d actor(s) that %s started here (%s): %s", self.name, len(names), address,
                        reason, ", ".join(sorted(names)))
        return names

    def quarantine(self, address: str) -> None:
        """Take no tells, asks or watches from the peer at ``address`` (a lost one, fenced): what
        it still sends is dropped and counted (``quarantined_frames``); replies to our asks pass."""
        self._quarantined.add(address)

    def release(self, address: str) -> None:
        """End :meth:`quarantine` of ``address`` (it was fenced: nothing stale runs there)."""
        self._quarantined.discard(address)

    def is_alive(self, ref: ActorRef) -> bool:
        cell = self._local(ref)
        return cell is not None and cell.alive

    def cell(self, ref: ActorRef) -> ActorCell | None:
        """The local cell behind ``ref`` (for stats and tests), or None."""
        return self._local(ref)

    # --- messaging ------------------------------------------------------------------------------
    def send(self, ref: ActorRef, msg: Any) -> bool:
        """Tell without waiting. False: dropped (full ``drop`` mailbox, or no such actor).
        Raises :class:`MailboxFull` on a full local ``block`` mailbox."""
        cell = ref.cached_cell
        if cell is None or not cell.alive:
            cell = self._local(ref)
            if cell is None:
                if ref.node == self.address:
                    self.counters["dead_letters"] += 1
                    return False
                return self._send_remote(ref.node, encode_frame(TELL, ref.name, None, msg, self.max_frame))
        if cell.urgent and type(msg) in cell.urgent:
            cell.mailbox.put_front(msg)
            return True
        if cell.lossless and type(msg) in cell.lossless:
            cell.mailbox.put_always(msg)
            return True
        return cell.mailbox.put_nowait(msg)

    async def tell(self, ref: ActorRef, msg: Any) -> bool:
        """Tell, waiting for room in a full local ``block`` mailbox or a congested connection."""
        cell = ref.cached_cell
        if cell is None or not cell.alive:
            cell = self._local(ref)
        if cell is not None:
            mb = cell.mailbox
            if len(cell.queue) < mb.capacity:
                return mb.put_nowait(msg)
            return await mb.put(msg)
        if ref.node == self.address:
            self.counters["dead_letters"] += 1
            return False
        frame = encode_frame(TELL, ref.name, None, msg, self.max_frame)
        peer = self._peers.get(ref.node)
        conn = peer.conn if peer is not None else None
        if conn is None:
            return self._send_remote(ref.node, frame)
        conn.send_frame(frame)
        if conn.write_paused:
            try:
                await conn.drain()
            except TransportError:
                pass
        return True

    def congested(self, ref: ActorRef) -> bool:
        """True when the link to ``ref``'s node is backed up (the kernel and our write buffer are
        past their high-water mark): a dataplane sender drops and counts instead of queueing."""
        if ref.node == self.address:
            return False
        peer = self._peers.get(ref.node)
        if peer is None:
            return False
        conn = peer.conn
        if conn is None:
            return peer.pending_bytes > self.max_pending_bytes // 2
        return conn.write_paused

    def link_backlog(self, ref: ActorRef) -> int:
        """Bytes queued on the link to ``ref``'s node (0 for a local actor)."""
        if ref.node == self.address:
            return 0
        peer = self._peers.get(ref.node)
        if peer is None:
            return 0
        return peer.conn.buffered if peer.conn is not None else peer.pending_bytes

    async def drain(self, ref: ActorRef, timeout: float | None = None) -> None:
        """Wait until the link to ``ref``'s node is no longer backed up (or ``timeout``)."""
        peer = self._peers.get(ref.node)
        conn = peer.conn if peer is not None else None
        if conn is None or not conn.write_paused:
            return
        try:
            await asyncio.wait_for(conn.drain(), timeout)
        except (asyncio.TimeoutError, TransportError):
            pass

    async def ask(self, ref: ActorRef, msg: Any, timeout: float | None = 5.0) -> Any:
        """Request/reply with a local or remote actor."""
        loop = self.loop or asyncio.get_running_loop()
        cell = self._local(ref)
        if cell is not None and cell.parked and not cell.busy and not cell.queue and not cell.stopping:
            # The actor is idle: run the handler in this task (an actor asking itself is never
            # parked, so this cannot re-enter the caller).
            done, value = cell.ask_inline(msg, loop)
            if done:
                return value
            fut = value
            req = None
        elif cell is not None:
            fut = loop.create_future()
            item = Ask(msg, fut)
            mb = cell.mailbox
            if cell.urgent and type(msg) in cell.urgent:
                mb.put_front(item)
            elif mb.overflow == "drop":
                if not mb.put_nowait(item):
                    raise MailboxFull(f"{ref}: mailbox full, ask dropped")
            elif len(mb) < mb.capacity:
                mb.put_nowait(item)
            else:
                await mb.put(item)
            req = None
        elif ref.node == self.address:
            raise ActorStopped(f"no actor {ref.name!r} on this node")
        else:
            fut = loop.create_future()
            self._next_req += 1
            req = self._next_req
            self._asks[req] = (fut, ref.node)
            if not self._send_remote(ref.node, encode_frame(ASK, ref.name, req, msg, self.max_frame)):
                self._asks.pop(req, None)
                raise ActorStopped(f"{ref}: cannot reach node {ref.node}")
        if timeout is None:
            return await fut
        handle = loop.call_later(timeout, _expire, fut, ref, timeout)
        try:
            return await fut
        finally:
            handle.cancel()
            if req is not None:
                self._asks.pop(req, None)

    # --- watches and node events ----------------------------------------------------------------
    def watch(self, target: ActorRef, watcher: ActorRef) -> None:
        """Deliver ``Terminated(target, reason)`` to ``watcher`` when ``target`` stops or is lost."""
        cell = self._local(target)
        if cell is not None:
            cell.watchers.add(watcher)
            return
        if target.node == self.address:
            self.send(watcher, Terminated(target, "not found"))
            return
        self._remote_watches.setdefault(target.node, {}).setdefault(target, set()).add(watcher)
        self._send_remote(target.node, encode_frame(WATCH, target.name, None, watcher, self.max_frame))

    def unwatch(self, target: ActorRef, watcher: ActorRef) -> None:
        cell = self._local(target)
        if cell is not None:
            cell.watchers.discard(watcher)
            return
        ws = self._remote_watches.get(target.node, {}).get(target)
        if ws is not None:
            ws.discard(watcher)
            self._send_remote(target.node, encode_frame(UNWATCH, target.name, None, watcher, self.max_frame))

    def subscribe(self, ref: ActorRef) -> None:
        """Send ``NodeUp``/``NodeLost`` messages about peer nodes to ``ref``."""
        self._subscribers.add(ref)

    def unsubscribe(self, ref: ActorRef) -> None:
        self._subscribers.discard(ref)

    def _publish(self, msg: Any) -> None:
        for s in list(self._subscribers):
            try:
                self.send(s, msg)
            except E2Error:
                pass

    # --- links ----------------------------------------------------------------------------------
    def server_connection(self, accepted_at: float, host: str | None) -> Connection:
        """ListenerOwner: a connection for a socket accepted at ``accepted_at`` from ``host``
        (already admitted; None: an in-memory pair, not counted)."""
        conn = Connection(self, self.secret or b"", client=False, max_frame=self.max_frame,
                          accepted_at=accepted_at, host=host, nonces=self._nonces, cert_der=self._tls_cert_der)
        self._conns.add(conn)
        return conn

    def _client_conn(self) -> Connection:
        conn = Connection(self, self.secret or b"", client=True, max_frame=self.max_frame,
                          nonces=self._nonces, cert_der=self._tls_cert_der)
        self._conns.add(conn)
        return conn

    async def connect(self, address: str) -> None:
        """Link to the node at ``address`` now (rather than lazily), raising if it fails."""
        self._need_secret()
        peer = self._peer(address)
        if peer.conn is not None:
            return
        if peer.connecting is not None:
            await asyncio.shield(peer.connecting)
            if peer.conn is not None:
                return
        await transport.connect(address, self._client_conn, self._client_ssl, timeout=self.handshake_timeout)

    def _peer(self, address: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = _Peer(address, self.loop.time() if self.loop else 0.0)
        return peer

    def _send_remote(self, address: str, frame: bytes) -> bool:
        peer = self._peers.get(address) or self._peer(address)
        conn = peer.conn
        if conn is not None:
            conn.send_frame(frame)
            return True
        if peer.pending_bytes + len(frame) > self.max_pending_bytes:
            self.counters["remote_dropped"] += 1
            return False
        if peer.lost:
            # Sending again to a lost node: try it afresh (it may have come back).
            peer.lost = False
            peer.last_seen = self.loop.time() if self.loop else 0.0
        peer.pending.append(frame)
        peer.pending_bytes += len(frame)
        self._ensure_connecting(peer)
        return True

    def _ensure_connecting(self, peer: _Peer) -> None:
        if peer.connecting is None and self.running and not peer.address.startswith("anon://"):
            peer.connecting = self.create_task(self._connect_loop(peer), name=f"connect:{peer.address}")

    async def _connect_loop(self, peer: _Peer) -> None:
        delay = 0.02
        try:
            while self.running and peer.conn is None and not peer.lost:
                try:
                    self._need_secret()
                    await transport.connect(peer.address, self._client_conn, self._client_ssl,
                                            timeout=self.handshake_timeout)
                    return
                except AuthError as exc:
                    self.counters["auth_failures"] += 1
                    self.ratelog.warning("auth_failures", "%s: %s", self.name, exc)
                except (TransportError, OSError) as exc:
                    self.counters["connect_failures"] += 1
                    log.debug("%s: connect to %s failed: %s", self.name, peer.address, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        finally:
            peer.connecting = None

    def on_ready(self, conn: Connection) -> None:
        """LinkOwner: ``conn`` finished its handshake; it becomes the link to its peer (queued
        frames go out on it) unless that peer has a live link already."""
        addr = conn.peer_address
        assert addr is not None
        peer = self._peer(addr)
        peer.last_seen = self.loop.time()  # type: ignore[union-attr]
        if conn.peer_heartbeat_timeout is not None and conn.peer_heartbeat_timeout / 6 < self.heartbeat_interval \
                and self._hb_wake is not None:
            self._hb_wake.set()
        if peer.conn is None or peer.conn.closed:
            peer.conn = conn
            pending, peer.pending, peer.pending_bytes = peer.pending, [], 0
            for frame in pending:
                conn.send_frame(frame)
        was_lost = peer.lost or not peer.ever_up
        peer.lost = False
        peer.ever_up = True
        if was_lost:
            self._publish(NodeUp(addr))

    def on_lost(self, conn: Connection) -> None:
        """LinkOwner: ``conn`` is closed: release its admission; if it was the link to its peer,
        fail the asks in flight on it and reconnect when the peer is still needed."""
        self._conns.discard(conn)
        if conn.host is not None:
            self.admission.release(conn.host)
            conn.host = None
        addr = conn.peer_address
        if addr is None:
            return
        peer = self._peers.get(addr)
        if peer is None or peer.conn is not conn:
            return
        peer.conn = None
        peer.last_seen = max(peer.last_seen, conn.last_recv)
        # Requests in flight on that link cannot be answered any more.
        for req, (fut, a) in list(self._asks.items()):
            if a == addr and not fut.done():
                fut.set_exception(ActorStopped(f"connection to {addr} lost"))
        if self.running and (self._remote_watches.get(addr) or peer.pending):
            self._ensure_connecting(peer)

    def _peer_lost(self, peer: _Peer, reason: str) -> None:
        addr = peer.address
        peer.lost = True
        self.counters["nodes_lost"] += 1
        log.warning("%s: node %s lost: %s", self.name, addr, reason)
        if peer.conn is not None:
            peer.conn.close()
            peer.conn = None
        if peer.pending:
            self.counters["remote_dropped"] += len(peer.pending)
            peer.pending, peer.pending_bytes = [], 0
        for req, (fut, a) in list(self._asks.items()):
            if a == addr and not fut.done():
                fut.set_exception(ActorStopped(f"node {addr} lost: {reason}"))
        for target, watchers in self._remote_watches.pop(addr, {}).items():
            for w in watchers:
                self.send(w, Terminated(target, "node lost"))
        for cell in self._actors.values():
            if cell.watchers:
                cell.watchers = {w for w in cell.watchers if w.node != addr}
        if self.fence_lost_spawners:
            self.fence(addr, f"fenced: {addr} lost ({reason})")
        self._publish(NodeLost(addr, reason))

    async def _heartbeats(self) -> None:
        loop = self.loop
        assert loop is not None
        last = loop.time()
        tick = self.heartbeat_interval
        wake = self._hb_wake = asyncio.Event()
        while self.running:
            if tick > MIN_HEARTBEAT_INTERVAL:
                try:
                    # (woken early when a peer that needs more frequent heartbeats connects)
                    await asyncio.wait_for(wake.wait(), tick)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(tick)
            woken = wake.is_set()
            wake.clear()
            now = loop.time()
            stalled = 0.0 if woken else now - last - tick
            last = now
            if stalled > self.heartbeat_timeout:
                # This process did not run for longer than the timeout (SIGSTOP, a paused VM):
                # its peers have declared it lost, so the ones that spawned actors here have
                # replaced them elsewhere. Fence before anything else runs on; say why.
                self.counters["stalls"] += 1
                log.warning("%s: this node was stalled for %.1fs (longer than the heartbeat timeout)",
                            self.name, stalled)
                if self.fence_lost_spawners:
                    # (their watchers hear ``fenced``: a peer that had not noticed our pause
                    # learns from it that what it started here is gone)
                    for addr in set(self.spawned_by.values()):
                        self.fence(addr, f"fenced: this node was stalled for {stalled:.1f}s")
            self._bound_write_buffers()
            # Each peer gets heartbeats often enough for its own timeout (from its HELLO), even
            # when ours is far longer: a manager with a 1 s timeout must not lose an idle agent
            # that runs with 60 s. (Bounded below: a peer cannot make us send a storm.)
            tick = self.heartbeat_interval
            for conn in list(self._conns):
                if conn.peer_address is not None and not conn.closed:
                    every = self.heartbeat_interval
                    if conn.peer_heartbeat_timeout is not None:
                        every = max(MIN_HEARTBEAT_INTERVAL, min(every, conn.peer_heartbeat_timeout / 6))
                    tick = min(tick, every)
                    if now - conn.hb_sent >= every * 0.9:
                        conn.hb_sent = now
                        conn.send_frame(self._hb_frame)
            for peer in list(self._peers.values()):
                if peer.lost:
                    continue
                if peer.conn is not None:
                    peer.last_seen = max(peer.last_seen, peer.conn.last_recv)
                if now - peer.last_seen > self.heartbeat_timeout:
                    if peer.conn is None and not peer.pending and not self._remote_watches.get(peer.address) \
                            and not any(a == peer.address for _, a in self._asks.values()) \
                            and peer.address not in self.spawned_by.values():
                        continue  # nobody cares about this peer now; it is lost only if used
                    self._peer_lost(peer, f"no heartbeat for {now - peer.last_seen:.1f}s")
                elif peer.conn is None and (peer.pending or self._remote_watches.get(peer.address)):
                    self._ensure_connecting(peer)

    def _bound_write_buffers(self) -> None:
        """Drop the peers with the most bytes queued until all of them together are under
        :attr:`max_total_write_buffer` (each is also bounded alone, by the connection)."""
        conns = [c for c in self._conns if not c.closed]
        total = sum(c.buffered for c in conns)
        if total <= self.max_total_write_buffer:
            return
        for c in sorted(conns, key=lambda c: c.buffered, reverse=True):
            if total <= self.max_total_write_buffer:
                break
            total -= c.buffered
            c.fail(f"peers do not read: over {self.max_total_write_buffer} bytes queued to all of them, "
                   "this one the most", "slow_peers")

    # --- inbound frames -------------------------------------------------------------------------
    def on_frame(self, conn: Connection, kind: int, target: Any, arg: Any, message: Any) -> Awaitable[Any] | None:
        """LinkOwner: deliver one frame from ``conn``'s peer (its fields: :class:`~e2actors.runtime.codec.Frame`).
        An awaitable back: the target's ``block`` mailbox is full and the frame goes in once it is
        done (``conn`` stops reading)."""
        if self._quarantined and kind != REPLY and kind != HEARTBEAT and conn.peer_address in self._quarantined:
            self.counters["quarantined_frames"] += 1
            return None
        if kind == TELL:
            cell = self._actors.get(target) if type(target) is str else None
            if cell is None:
                self.counters["dead_letters"] += 1
                return None
            if cell.urgent and type(message) in cell.urgent:
                cell.mailbox.put_front(message)
                return None
            if cell.lossless and type(message) in cell.lossless:
                cell.mailbox.put_always(message)
                return None
            try:
                cell.mailbox.put_nowait(message)
            except MailboxFull:
                return cell.mailbox.put(message)
            return None
        if kind == ASK:
            return self._ask_in(conn.peer_address or "", target, request=arg, msg=message)
        if kind == REPLY:
            self._reply_in(request=target, ok=arg, value=message)
            return None
        if kind == HEARTBEAT:
            return None
        if kind == WATCH:
            watcher = message
            if not isinstance(watcher, ActorRef) or type(target) is not str:
                raise CodecError("malformed WATCH frame")
            cell = self._actors.get(target)
            if cell is None:
                self.send(watcher, Terminated(ActorRef(self.address, target), "not found"))
            else:
                cell.watchers.add(watcher)
            return None
        if kind == UNWATCH:
            cell = self._actors.get(target) if type(target) is str else None
            if cell is not None:
                cell.watchers.discard(message)
            return None
        raise CodecError(f"unknown frame kind {kind!r}")

    def _ask_in(self, addr: str, target: Any, request: Any, msg: Any) -> Awaitable[Any] | None:
        """An ASK from the node at ``addr``: queue it for ``target``; the reply goes back as REPLY."""
        cell = self._actors.get(target) if type(target) is str else None
        if cell is None:
            self._reply(addr, request, False, ("ActorStopped", f"no actor {target!r} on {self.address}"))
            return None
        item = Ask(msg, None, _ReplyTo(self._reply, addr, request))
        if cell.urgent and type(msg) in cell.urgent:
            cell.mailbox.put_front(item)
            return None
        try:
            if not cell.mailbox.put_nowait(item):
                self._reply(addr, request, False, ("MailboxFull", f"{target}: mailbox full, ask dropped"))
        except MailboxFull:
            return cell.mailbox.put(item)
        return None

    def _reply_in(self, request: Any, ok: Any, value: Any) -> None:
        """A REPLY to our ask number ``request``: resolve its future (unless it timed out)."""
        entry = self._asks.pop(request, None) if type(request) is int else None
        if entry is None:
            return  # timed out already
        fut = entry[0]
        if fut.done():
            return
        if ok is True:
            fut.set_result(value)
        else:
            etype, text, fields = (value + ("", "", None))[:3] if isinstance(value, tuple) else ("Error", str(value), None)
            # e2actors errors keep their type and declared fields (checked there: peer data)
            fut.set_exception(remote_error(str(etype), str(text), fields if isinstance(fields, dict) else None))

    def _reply(self, address: str, req: Any, ok: bool, value: Any) -> None:
        try:
            frame = encode_frame(REPLY, req, ok, value, self.max_frame)
        except CodecError as exc:
            frame = encode_frame(REPLY, req, False, ("CodecError", f"reply could not be encoded: {exc}"))
        self._send_remote(address, frame)

    # --- introspection --------------------------------------------------------------------------
    def actors(self) -> list[ActorRef]:
        return [c.ref for c in self._actors.values()]

    def stats(self) -> dict[str, Any]:
        """Counters, peers and every actor's mailbox, as plain data."""
        return {
            "address": self.address,
            "counters": dict(self.counters),
            "peers": {a: {"connected": p.conn is not None, "lost": p.lost} for a, p in self._peers.items()},
            "actors": {n: {**_stats_dict(c), "restarts": c.restarts, "crashes": c.crashes}
                       for n, c in self._actors.items()},
        }

    def info(self) -> NodeInfo:
        return NodeInfo(self.address, self.name, self.version, os.getpid(), self.cores,
                        tuple(sorted(self._actors)))


class _ReplyTo:
    """Where the reply to an ask from another node goes: that node (``peer``, its address)."""

    __slots__ = ("reply", "peer", "req")

    def __init__(self, reply: Callable[[str, Any, bool, Any], None], peer: str, req: Any) -> None:
        self.reply, self.peer, self.req = reply, peer, req

    def __call__(self, ok: bool, value: Any) -> None:
        self.reply(self.peer, self.req, ok, value)


def _stats_dict(cell: ActorCell) -> dict[str, Any]:
    s = cell.mailbox.stats()
    return {"depth": s.depth, "capacity": s.capacity, "dropped": s.dropped, "processed": s.processed}


def _expire(fut: asyncio.Future, ref: ActorRef, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(AskTimeout(f"no reply from {ref} within {timeout:g}s"))


class SystemActor(ServiceActor):
    """Every node's ``$system`` actor: spawns and stops actors on request, describes the node.

    A bad request (an unknown message, a malformed or refused Spawn) is answered with its error,
    counted and logged, never a crash (see :class:`~e2actors.runtime.service.ServiceActor`): a peer
    cannot spend ``$system``'s restart budget and leave the node unable to spawn."""

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, Spawn):
            ask = self.current_ask
            if not self.node.remote_spawns and (ask is None or ask.remote is not None):
                # A manager's node starts its actors itself: a Spawn from another node (or a
                # tell, which no local caller uses) is refused, whatever the peer's secret.
                self.node.counters["spawn_refused"] += 1
                raise SpawnRefused(f"{self.node.name} takes no spawns from other nodes")
            cls = load_class(msg.cls, self.node.allow_spawn, self.node)
            ref = self.node.spawn(cls, msg.name or None, **dict(msg.kwargs))
            peer = getattr(ask.remote, "peer", None) if ask is not None else None
            if peer:
                self.node.spawned_by[ref.name] = peer  # (fenced if that peer is lost)
            return ref
        if isinstance(msg, StopActor):
            ref = ActorRef(self.node.address, msg.name)
            alive = self.node.is_alive(ref)
            # Stopping from inside our own handler must not wait on ourselves.
            if msg.name != SYSTEM:
                await self.node.stop_actor(ref)
            return alive
        if isinstance(msg, GetNodeInfo):
            return self.node.info()
        raise E2Error(f"$system does not handle {type(msg).__name__}")


def load_class(path: str, allow: tuple[str, ...], node: Node | None = None) -> type:
    """Import ``module:QualName`` if the module is on the allow-list (checked before importing)."""
    module, _, qual = path.partition(":")
    if not module or not qual:
        raise SpawnRefused(f"bad class path {path!r} (module:QualName)")
    if not any(module == p.rstrip(".") or module.startswith(p if p.endswith(".") else p + ".") for p in allow):
        if node is not None:
            node.counters["spawn_refused"] += 1
        log.warning("refused to load %s: module not on the allow-list %s", path, allow)
        raise SpawnRefused(f"{path}: module not on this node's allow-list")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def class_path(cls: type) -> str:
    """The ``module:QualName`` string :func:`load_class` takes."""
    return f"{cls.__module__}:{cls.__qualname__}"


#: The cyclic garbage collector's thresholds in processes that :func:`run` starts.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Make the cyclic garbage collector run less often in a dataplane process.

    Why: packets, batches and messages are freed by reference counting as they go; the collector
    only finds cycles. With Python's default young-generation threshold (700 allocations) it runs
    every few batches and its older generations re-walk every packet a switch holds (streams
    waiting for verdicts, shaper queues, flow tables): in ``benchmarks/switch.py`` that was a
    third to a half of the time of a bytestream NF. Cycles are still collected, in fewer, larger
    passes."""
    gc.set_threshold(*thresholds)


def run(main: Coroutine[Any, Any, T], *, tune: bool = True) -> T:
    """Run ``main`` on uvloop when it is installed, on the default loop otherwise. ``tune``:
    apply :func:`tune_gc` first (a process that runs actors for a living; pass False when
    embedding e2actors in a program that manages its own collector)."""
    if tune:
        tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
