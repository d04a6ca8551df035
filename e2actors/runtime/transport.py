"""Connections between nodes: handshake, sealed records, framing, coalesced writes, flow control.

One :class:`Connection` (an asyncio Protocol) per TCP, Unix or in-memory link. It speaks:

1. with TLS, the TLS handshake. A listener accepts sockets itself (:class:`_Acceptor`): the
   connection caps apply at accept, before any TLS work, and the deadline runs from the accept, so
   a peer that never sends a ClientHello is closed (and counted) like any slow handshake;
2. the handshake of :mod:`e2actors.runtime.auth` (raw bytes): shared-secret proofs both ways and
   per-connection keys bound to both nonces, both names, both roles and the TLS channel;
3. sealed records (:mod:`e2actors.runtime.records`) holding length-prefixed msgpack frames
   (:mod:`e2actors.runtime.codec`), the first frame being HELLO.

A connection and the node that owns it talk through a small interface: the owner implements
:class:`LinkOwner` (``on_ready``, ``on_frame`` with a frame's fields by name, ``on_lost``; a
listener's owner also :class:`ListenerOwner`), and uses the connection's public ``send_frame``,
``flush``, ``write_paused``, ``buffered``, ``drain`` and ``close``. This module does not import
the node.

Writes made during one event-loop turn go out in one sealed record and one ``write``. Whatever a
peer does wrong closes that one connection, is counted in the owner's ``counters`` and logged
(rate limited), and disturbs nothing else: a handshake not done within ``handshake_timeout`` of the
accept (``handshake_timeouts``), a failed TLS handshake (``tls_failures``), a wrong proof
(``auth_failures``), a record that fails authentication (``frame_auth_failures``: injected,
modified, replayed or reordered), an oversized frame, one that does not decode, an accept past the
connection caps (``connections_refused``), a peer that lets more than ``max_write_buffer`` bytes
pile up unread (``slow_peers``). The in-memory transport pairs two protocols without sockets so
tests can join two nodes in one process.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from e2actors.errors import AuthError, CodecError, TransportError
from e2actors.runtime.auth import Handshake, tls_binding, wire_name
from e2actors.runtime.codec import DEFAULT_MAX_FRAME, FrameDecoder, decode_frame, encode_frame
from e2actors.runtime.ratelog import RateLimitedLog
from e2actors.runtime.records import TAG_SIZE, Opener, RecordError, Sealer

log = logging.getLogger("e2actors.transport")

# Frame kinds ([kind, target, arg, tag, payload]; what target and arg hold: codec.Frame's table).
TELL = 0       # target: actor name
ASK = 1        # target: actor name, arg: request id
REPLY = 2      # target: request id, arg: ok
HEARTBEAT = 3
WATCH = 4      # target: actor name, message: the watcher's ref
UNWATCH = 5    # target: actor name, message: the watcher's ref
HELLO = 6      # target: the sender's address, arg: (its version, its heartbeat timeout), message: its node name

#: Seconds from accept (or connect) to a complete handshake (TLS, proofs, HELLO) by default.
HANDSHAKE_TIMEOUT = 5.0
FLUSH_BYTES = 256 * 1024
#: Plaintext bytes per sealed record at most: a write of more is cut into several records, so the
#: receiver opens and dispatches frames while the rest is still arriving (and buffers one record).
RECORD_BYTES = 16 * 1024


def parse_address(address: str) -> tuple[str, str, int | None]:
    """``tcp://host:port`` -> ("tcp", host, port); ``unix:///path`` -> ("unix", path, None);
    ``mem://name`` -> ("mem", name, None)."""
    u = urlsplit(address)
    if u.scheme == "tcp":
        if u.hostname is None or u.port is None:
            raise TransportError(f"bad tcp address {address!r} (tcp://HOST:PORT)")
        return "tcp", u.hostname, u.port
    if u.scheme == "unix":
        path = u.path or u.netloc
        if not path:
            raise TransportError(f"bad unix address {address!r} (unix:///PATH)")
        return "unix", path, None
    if u.scheme == "mem":
        return "mem", u.netloc or u.path, None
    raise TransportError(f"unsupported address {address!r} (tcp://, unix:// or mem://)")


@runtime_checkable
class LinkOwner(Protocol):
    """What a :class:`Connection` needs from the node that owns it (:class:`~e2actors.runtime.node.Node`
    implements it): who we are, the bounds, where to count and log, and three callbacks."""

    #: Our node's name (sent in the handshake and HELLO), address (HELLO) and version (HELLO).
    name: str
    address: str
    version: str
    #: Seconds without a frame after which we declare a peer lost (sent in HELLO: the peer sends
    #: its heartbeats often enough for it, whatever its own timeout).
    heartbeat_timeout: float
    #: Seconds from accept (or connect) to a complete handshake.
    handshake_timeout: float
    #: Bytes queued to a peer that does not read before its connection is dropped.
    max_write_buffer: int
    #: Events counted (``auth_failures``, ``slow_peers``, ...) and their rate-limited log.
    counters: collections.Counter[str]
    ratelog: RateLimitedLog

    def on_ready(self, conn: Connection) -> None:
        """``conn`` completed its handshake: ``conn.peer_address`` is set; frames may be sent."""

    def on_frame(self, conn: Connection, kind: int, target: Any, arg: Any, message: Any) -> Awaitable[Any] | None:
        """Handle one frame (not HELLO) from ``conn``'s peer, its fields as in
        :class:`~e2actors.runtime.codec.Frame`. An awaitable back: the frame is not taken yet (a
        full mailbox); ``conn`` hands over nothing more until it is done. Raise
        :class:`CodecError` for a frame that makes no sense: ``conn`` is closed."""

    def on_lost(self, conn: Connection) -> None:
        """``conn`` is closed, however it ended (called once, also for a failed handshake)."""


@runtime_checkable
class ListenerOwner(LinkOwner, Protocol):
    """What :func:`listen` needs on top: the caps on accepted connections, and new connections."""

    admission: Admission

    def server_connection(self, accepted_at: float, host: str | None) -> Connection:
        """A :class:`Connection` for a socket accepted at ``accepted_at`` from ``host`` (admitted;
        None: not counted, an in-memory pair)."""


class Admission:
    """Counts accepted connections in total and per peer host against two caps; pure (no I/O).

    ``admit(host)`` counts one or says why not; ``release(host)`` when that connection ends."""

    __slots__ = ("max_total", "max_per_host", "total", "_by_host")

    def __init__(self, max_total: int, max_per_host: int) -> None:
        self.max_total = max_total
        self.max_per_host = max_per_host
        #: Connections admitted and not released yet.
        self.total = 0
        self._by_host: collections.Counter[str] = collections.Counter()

    def admit(self, host: str) -> str | None:
        """Count a connection from ``host`` against the caps; the reason to refuse it, or None."""
        if self.total >= self.max_total:
            return f"over the cap of {self.max_total} connections"
        if self._by_host[host] >= self.max_per_host:
            return f"over the cap of {self.max_per_host} connections from {host}"
        self._by_host[host] += 1
        self.total += 1
        return None

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` ended."""
        self._by_host[host] -= 1
        if self._by_host[host] <= 0:
            del self._by_host[host]
        self.total -= 1

    def from_host(self, host: str) -> int:
        """Connections from ``host`` admitted and not released yet."""
        return self._by_host.get(host, 0)


class Connection(asyncio.Protocol):
    """One authenticated, framed link to a peer node, on behalf of its ``owner``.

    ``nonces``: the owner's set of nonces of its handshakes in progress, shared by all its
    connections (a peer that sends one of ours back is relaying us to ourselves); ``cert_der``:
    the owner's TLS certificate, for the channel binding."""

    def __init__(self, owner: LinkOwner, secret: bytes, client: bool, max_frame: int = DEFAULT_MAX_FRAME,
                 accepted_at: float | None = None, host: str | None = None, *,
                 nonces: set[bytes] | None = None, cert_der: bytes = b"") -> None:
        self.owner = owner
        self.secret = secret
        self.client = client
        self.max_frame = max_frame
        #: When the socket was accepted (the handshake deadline runs from then); None: now.
        self.accepted_at = accepted_at
        self.transport: asyncio.Transport | None = None
        self.peer_address: str | None = None   # set by HELLO
        self.peer_name: str | None = None      # from the handshake
        self.authenticated = False
        self.auth_failed = False
        self.closed = False
        self.closed_by_us = False
        self.ready: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self.last_recv = 0.0
        #: The peer's heartbeat timeout from its HELLO (None: it did not say): we send heartbeats
        #: on this connection often enough for it. ``hb_sent`` is when we last did.
        self.peer_heartbeat_timeout: float | None = None
        self.hb_sent = 0.0
        self.frames_in = 0
        self.frames_out = 0
        #: The admission key (peer host) of an accepted connection, released when it ends.
        self.host = host
        #: True while the transport's write buffer is over its high-water mark (asyncio paused
        #: our writes): senders that can wait ``await drain()``, others drop and count.
        self.write_paused = False
        self._nonces = nonces if nonces is not None else set()
        self._cert_der = cert_der
        self._hs: Handshake | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._decoder = FrameDecoder(max_frame)
        self._wbuf: list[bytes] = []
        self._wbytes = 0
        self._flush_scheduled = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stash: list[bytes] = []
        self._blocked: asyncio.Future | None = None
        self._hs_timer: asyncio.TimerHandle | None = None
        self._gone = False
        self.loop = asyncio.get_running_loop()

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_recv = self.loop.time()
        # The deadline runs from the accept (or connect): TLS, proofs and HELLO all fit in it.
        t0 = self.accepted_at if self.accepted_at is not None else self.last_recv
        self._hs_timer = self.loop.call_at(t0 + self.owner.handshake_timeout, self._handshake_timeout)
        self._begin()

    def _begin(self) -> None:
        """Send our hello (after TLS, so the handshake can be bound to the TLS channel)."""
        try:
            binding = self._binding()
        except (ValueError, OSError) as exc:
            self.fail(f"TLS channel binding unavailable: {exc}", "tls_failures")
            return
        hs = self._hs = Handshake(self.secret, self.client, self.owner.name, binding, own_nonces=self._nonces)
        self._nonces.add(hs.nonce)
        self.transport.write(hs.start())  # type: ignore[union-attr]

    def _binding(self) -> bytes:
        sslobj = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        if sslobj is None:
            return b""
        peer = sslobj.getpeercert(binary_form=True) or b""
        own = self._cert_der
        try:
            unique = sslobj.get_channel_binding("tls-unique")
        except (ValueError, NotImplementedError):
            unique = None
        client_cert, server_cert = (own, peer) if self.client else (peer, own)
        return tls_binding(client_cert, server_cert, unique)

    def _handshake_timeout(self) -> None:
        if self.peer_address is None and not self.closed:
            stage = "proofs" if not self.authenticated else "HELLO"
            self.fail(f"handshake not complete within {self.owner.handshake_timeout:g}s (at {stage})",
                      "handshake_timeouts")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_recv = self.loop.time()
        opener = self._opener
        if opener is None:
            hs = self._hs
            if hs is None:
                return
            try:
                out = hs.feed(data)
            except AuthError as exc:
                reply = getattr(exc, "reply", b"")
                if reply and self.transport is not None:
                    self.transport.write(reply)
                self.fail(str(exc), "auth_failures")
                return
            if out:
                self.transport.write(out)  # type: ignore[union-attr]
            if not hs.done:
                return
            self._authenticated(hs)
            data = hs.rest
            opener = self._opener
            if not data or opener is None:
                return
        try:
            plains = opener.feed(data)
        except RecordError as exc:
            self.fail(str(exc), "frame_auth_failures")
            return
        if not plains:
            return
        try:
            if len(plains) == 1:
                bodies = self._decoder.feed(plains[0])
            else:
                bodies = []
                for p in plains:
                    bodies.extend(self._decoder.feed(p))
        except CodecError as exc:
            self.fail(str(exc), "oversized_frames")
            return
        if self._blocked is not None:
            self._stash.extend(bodies)
            return
        self._dispatch(bodies)

    def _authenticated(self, hs: Handshake) -> None:
        self.authenticated = True
        self.peer_name = hs.peer_name
        self._nonces.discard(hs.nonce)
        self._sealer = Sealer(hs.send_key)
        self._opener = Opener(hs.recv_key, RECORD_BYTES + TAG_SIZE)
        if self.client:
            self._send_hello()

    def _send_hello(self) -> None:
        owner = self.owner
        self.send_frame(encode_frame(HELLO, owner.address, (owner.version, float(owner.heartbeat_timeout)),
                                     owner.name))

    def _hello(self, kind: int, address: Any, arg: Any, name: Any) -> bool:
        """The peer's first frame: HELLO with its address, (version, heartbeat timeout) and node
        name (a bare version string is accepted: a peer that states no timeout). False: closed."""
        if kind != HELLO or not isinstance(address, str) or not isinstance(name, str):
            self.fail("first frame was not HELLO", "codec_errors")
            return False
        if isinstance(arg, tuple):
            if len(arg) != 2 or not isinstance(arg[0], str) or type(arg[1]) not in (int, float) \
                    or not math.isfinite(arg[1]) or arg[1] <= 0:
                self.fail("HELLO carries a bad (version, heartbeat timeout)", "codec_errors")
                return False
            self.peer_heartbeat_timeout = float(arg[1])
        elif not isinstance(arg, str):
            self.fail("HELLO carries a bad version", "codec_errors")
            return False
        if wire_name(name) != self.peer_name:
            self.fail(f"HELLO names {name!r}, the handshake {self.peer_name!r}", "auth_failures")
            return False
        if address == self.owner.address:
            self.fail("peer claims our own address (a relay joining us to ourselves?)", "auth_failures")
            return False
        self.peer_address = address
        if self._hs_timer is not None:
            self._hs_timer.cancel()
        if not self.client:
            self._send_hello()
        self.owner.on_ready(self)
        if not self.ready.done():
            self.ready.set_result(self)
        return True

    def _dispatch(self, bodies: list[bytes]) -> None:
        """Decode and hand over received frames in order (the first one is HELLO)."""
        start = 0
        if self.peer_address is None:
            if not bodies:
                return
            try:
                kind, target, arg, message = decode_frame(bodies[0])
            except CodecError as exc:
                self.fail(str(exc), "codec_errors")
                return
            self.frames_in += 1
            if not self._hello(kind, target, arg, message):
                return
            start = 1
        # The hot loop of every message that arrives: nothing in it but decode and hand over
        # (frames_in is added up once, on the way out).
        on_frame = self.owner.on_frame
        decode = decode_frame
        for i in range(start, len(bodies)):
            try:
                kind, target, arg, message = decode(bodies[i])
            except CodecError as exc:
                self.frames_in += i - start
                self.fail(str(exc), "codec_errors")
                return
            try:
                wait = on_frame(self, kind, target, arg, message)
            except CodecError as exc:
                self.frames_in += i + 1 - start
                self.fail(str(exc), "codec_errors")
                return
            if wait is not None:
                self.frames_in += i + 1 - start
                # The target's block mailbox is full: stop reading from this peer (TCP pushes
                # back on its sender) and carry on, in order, once the message is in.
                self._stash = bodies[i + 1:] + self._stash
                self._blocked = asyncio.ensure_future(self._resume(wait))
                if self.transport is not None:
                    self.transport.pause_reading()
                return
        self.frames_in += len(bodies) - start

    async def _resume(self, wait: Any) -> None:
        try:
            await wait
        finally:
            self._blocked = None
        if self.closed:
            return
        stash, self._stash = self._stash, []
        self._dispatch(stash)
        if self._blocked is None and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None = None) -> None:
        """Forget this connection (once, however it ended)."""
        if self._gone:
            return
        self._gone = True
        self.closed_by_us = self.closed
        self.closed = True
        self.transport = None
        if self._hs_timer is not None:
            self._hs_timer.cancel()
        if self._hs is not None:
            self._nonces.discard(self._hs.nonce)
        if not self.authenticated and not self.client and not self.closed_by_us:
            # The peer went away mid-handshake (a probe, a scanner, a dying peer): counted, not logged.
            self.owner.counters["handshakes_aborted"] += 1
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(TransportError(f"connection to {self.peer_address} lost"))
        self._drain_waiters.clear()
        if not self.ready.done():
            self.ready.set_exception(TransportError(f"connection closed during handshake: {exc or 'EOF'}"))
            self.ready.exception()  # mark retrieved: a refused connect is reported by the caller
        if self._blocked is not None:
            self._blocked.cancel()
        self.owner.on_lost(self)

    def abandon(self) -> None:
        """The socket under this connection failed before it started (a TLS handshake that
        failed, already counted): forget the connection."""
        self.closed = True
        self._lost()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # --- sending ------------------------------------------------------------------------------
    def send_frame(self, frame: bytes) -> None:
        """Queue a frame; every frame queued in this loop turn goes out in one write (or sooner,
        once FLUSH_BYTES have gathered, so a sender that never yields cannot pile up memory)."""
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        self.frames_out += 1
        if self._wbytes >= FLUSH_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Seal and write the frames queued so far now (else at the end of this loop turn)."""
        self._flush_scheduled = False
        buf = self._wbuf
        if not buf:
            return
        self._wbuf = []
        self._wbytes = 0
        t = self.transport
        if t is None or self.closed or self._sealer is None:
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        seal = self._sealer.seal
        if len(data) <= RECORD_BYTES:
            t.write(seal(data))
        else:  # frames may span records: the frame decoder on the other side joins them
            view = memoryview(data)
            t.write(b"".join([seal(view[i:i + RECORD_BYTES]) for i in range(0, len(data), RECORD_BYTES)]))
        # Past the high-water mark (asyncio paused our writers) look at how much is queued.
        if self.write_paused and t.get_write_buffer_size() > self.owner.max_write_buffer:
            # The peer does not read what we send it (e.g. it sends asks and never reads the
            # replies): drop the link rather than grow without bound.
            self.fail(f"peer does not read: over {self.owner.max_write_buffer} bytes queued to it", "slow_peers")

    @property
    def buffered(self) -> int:
        """Bytes queued to the peer and not yet taken by the kernel."""
        t = self.transport
        return self._wbytes + (t.get_write_buffer_size() if t is not None else 0)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self.write_paused:
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def fail(self, reason: str, counter: str) -> None:
        """Close this connection because of bad input or a hostile peer; log (rate limited) and count."""
        self.owner.counters[counter] += 1
        if counter == "auth_failures":
            self.auth_failed = True
        self.owner.ratelog.warning(counter, "%s: closing connection %s (%s): %s", self.owner.name,
                                   self.peer_address or self._peername(), counter, reason)
        self.close()

    def handshake_refused(self) -> bool:
        """Whether the peer refused our proof (it closed after seeing it) or sent a wrong one, as
        opposed to a connection that failed before the proofs (e.g. a dying process)."""
        hs = self._hs
        saw_hello = hs is not None and hs.keys is not None
        return self.auth_failed or (saw_hello and not self.authenticated)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            t = self.transport
            t.abort() if hasattr(t, "abort") else t.close()

    def _peername(self) -> str:
        if self.transport is None:
            return "?"
        p = self.transport.get_extra_info("peername")
        return str(p) if p else "unix/mem peer"


# --- listening and connecting ---------------------------------------------------------------------
def peer_host(peername: Any) -> str:
    """The admission key of a peer: its IP address, or ``local`` (Unix sockets, in memory)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "local"


async def listen(address: str, owner: ListenerOwner, ssl: _ssl.SSLContext | None = None) -> tuple[Any, str]:
    """Start accepting connections for ``owner`` (TLS with ``ssl``); returns (server, the concrete
    address, e.g. with the port chosen). The server has ``close()`` and ``await wait_closed()``."""
    kind, host, port = parse_address(address)
    if kind == "mem":
        if host in _MEM_LISTENERS:
            raise TransportError(f"mem address {address} already in use")
        # In-memory pairs (tests) are not counted against the caps.
        _MEM_LISTENERS[host] = lambda: owner.server_connection(asyncio.get_running_loop().time(), None)
        return _MemServer(host), f"mem://{host}"
    if kind == "tcp":
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    else:
        if os.path.exists(host):
            os.unlink(host)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockaddr = host
    try:
        sock.bind(sockaddr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    acceptor = _Acceptor(sock, owner, ssl)
    if kind == "unix":
        return acceptor, f"unix://{host}"
    h, p = sock.getsockname()[:2]
    h = f"[{h}]" if ":" in h else h
    return acceptor, f"tcp://{h}:{p}"


class _Acceptor:
    """Accepts sockets for an owner: applies its connection caps to each before any work (refused
    sockets are closed at once, counted as ``connections_refused``), then starts TLS if ``ssl``
    is given, under the handshake deadline that runs from the accept (``handshake_timeouts``,
    ``tls_failures``), and hands the socket to a :class:`Connection`."""

    def __init__(self, sock: Any, owner: ListenerOwner, ssl: _ssl.SSLContext | None) -> None:
        self.sock = sock
        self.owner = owner
        self.ssl = ssl
        self.closed = False
        self._handshakes: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"accept:{owner.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        owner = self.owner
        while not self.closed:
            try:
                sock, peer = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: wait a little rather than spin
                if self.closed:
                    return
                owner.counters["accept_errors"] += 1
                owner.ratelog.warning("accept_errors", "%s: accept failed: %s", owner.name, exc)
                await asyncio.sleep(0.1)
                continue
            host = peer_host(peer)
            refused = owner.admission.admit(host)
            if refused:
                sock.close()
                owner.counters["connections_refused"] += 1
                owner.ratelog.warning("connections_refused", "%s: refused a connection from %s: %s",
                                     owner.name, peer or "a local peer", refused)
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                # Small frames (asks, replies) must not wait for Nagle's algorithm.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = loop.create_task(self._start(sock, peer, host, loop.time()))
            self._handshakes.add(t)
            t.add_done_callback(self._handshakes.discard)

    async def _start(self, sock: Any, peer: Any, host: str, t0: float) -> None:
        owner = self.owner
        loop = asyncio.get_running_loop()
        made: list[Connection] = []

        def factory() -> Connection:
            conn = owner.server_connection(t0, host)
            made.append(conn)
            return conn

        ssl = self.ssl
        try:
            await loop.connect_accepted_socket(factory, sock, ssl=ssl,
                                               ssl_handshake_timeout=owner.handshake_timeout if ssl else None)
            return
        except asyncio.CancelledError:
            if not made:
                sock.close()
            raise
        except Exception as exc:  # a TLS handshake that failed or never came
            slow = loop.time() - t0 >= owner.handshake_timeout * 0.9
            counter = "handshake_timeouts" if slow else "tls_failures"
            owner.counters[counter] += 1
            owner.ratelog.warning(counter, "%s: closing connection %s (%s): TLS handshake failed: %s: %s",
                                 owner.name, peer or "a local peer", counter, type(exc).__name__, exc)
        # The event loop's transport owns the socket once the protocol exists, and has closed it.
        if made:
            made[0].abandon()  # counted above: not an aborted handshake as well
        else:
            sock.close()
            owner.admission.release(host)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        for t in list(self._handshakes):
            t.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        """Wait until the accept loop and the handshakes it started have ended (after close)."""
        tasks = [self._task, *self._handshakes]
        await asyncio.gather(*tasks, return_exceptions=True)


async def connect(address: str, factory: Callable[[], Connection], ssl: _ssl.SSLContext | None,
                  server_hostname: str | None = None, timeout: float = HANDSHAKE_TIMEOUT) -> Connection:
    """Connect to ``address`` and complete the handshake within ``timeout`` seconds.

    Raises :class:`TransportError` when nothing answers and :class:`AuthError` when the peer
    closes during the handshake (it refused our proof) or sent a bad proof.
    """
    kind, host, port = parse_address(address)
    loop = asyncio.get_running_loop()
    try:
        if kind == "tcp":
            _, proto = await loop.create_connection(factory, host, port, ssl=ssl,
                                                    server_hostname=(server_hostname or host) if ssl else None,
                                                    ssl_handshake_timeout=timeout if ssl else None)
        elif kind == "unix":
            _, proto = await loop.create_unix_connection(
                factory, host, ssl=ssl, server_hostname=(server_hostname or "localhost") if ssl else None,
                ssl_handshake_timeout=timeout if ssl else None)
    except (OSError, _ssl.SSLError, asyncio.TimeoutError) as exc:
        raise TransportError(f"cannot connect to {address}: {exc or type(exc).__name__}") from None
    if kind == "mem":
        server_factory = _MEM_LISTENERS.get(host)
        if server_factory is None:
            raise TransportError(f"nothing listens on {address}")
        proto = factory()
        peer = server_factory()
        a, b = _MemTransport(loop, proto), _MemTransport(loop, peer)
        a.other, b.other = b, a
        peer.connection_made(b)
        proto.connection_made(a)
    try:
        return await asyncio.wait_for(proto.ready, timeout + 1)  # type: ignore[union-attr]
    except (asyncio.TimeoutError, TransportError) as exc:
        # The peer refused us if it closed after seeing our proof, or if its own proof was wrong;
        # a close before its hello is just a failed connection (e.g. a dying process).
        refused = proto.handshake_refused()  # type: ignore[union-attr]
        proto.close()  # type: ignore[union-attr]
        if refused:
            raise AuthError(f"{address}: handshake failed (wrong shared secret?): {exc}") from None
        raise TransportError(f"{address}: {exc}") from None


_MEM_LISTENERS: dict[str, Callable[[], Connection]] = {}


class _MemServer:
    def __init__(self, name: str) -> None:
        self.name = name

    def close(self) -> None:
        _MEM_LISTENERS.pop(self.name, None)

    async def wait_closed(self) -> None:
        return None


class _MemTransport(asyncio.Transport):
    """Delivers written bytes to the paired protocol on the next loop turn. Bytes still go through
    the handshake, framing and codec, so two in-process nodes exercise everything but sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proto: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._proto = proto
        self.other: _MemTransport | None = None
        self._closing = False
        self._reading = True
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self._closing or self.other is None:
            return
        self._loop.call_soon(self.other.deliver, bytes(data))

    def deliver(self, data: bytes) -> None:
        """Bytes the paired transport wrote: to our protocol (or held while reading is paused)."""
        if self._closing:
            return
        if not self._reading:
            self._pending.append(data)
            return
        self._proto.data_received(data)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        pending, self._pending = self._pending, []
        for d in pending:
            self.deliver(d)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._proto.connection_lost, None)
        if self.other is not None:
            self.other.close()

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
