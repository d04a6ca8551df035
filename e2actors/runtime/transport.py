"""Connections between nodes: framing, authentication, coalesced writes, flow control.

One :class:`Connection` (an asyncio Protocol) per TCP, Unix or in-memory link. It speaks:

1. the shared-secret handshake of :mod:`e2actors.runtime.auth` (raw bytes, before any frame);
2. length-prefixed msgpack frames (:mod:`e2actors.runtime.codec`), the first being HELLO.

Writes made during one event-loop turn go out in one ``write`` (one syscall for many messages).
A frame over the size limit, one that does not decode, or a failed handshake closes this one
connection, is logged and counted, and disturbs nothing else. The in-memory transport pairs two
protocols without sockets so tests can join two nodes in one process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from e2actors.errors import AuthError, CodecError, TransportError
from e2actors.runtime import auth
from e2actors.runtime.codec import DEFAULT_MAX_FRAME, FrameDecoder, decode_frame_body, encode_frame

if TYPE_CHECKING:
    from e2actors.runtime.node import Node

log = logging.getLogger("e2actors.transport")

# Frame kinds: [kind, a, b, tag, payload]
TELL = 0      # a: target name
ASK = 1       # a: target name, b: request id
REPLY = 2     # a: request id, b: ok
HEARTBEAT = 3
WATCH = 4     # a: target name, message: watcher ref
UNWATCH = 5
HELLO = 6     # a: node address, b: version, message: node name

HANDSHAKE_TIMEOUT = 5.0
FLUSH_BYTES = 256 * 1024
ROLE_CLIENT = b"client"
ROLE_SERVER = b"server"


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


class Connection(asyncio.Protocol):
    """One authenticated, framed link to a peer node."""

    def __init__(self, node: Node, secret: bytes, client: bool, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.node = node
        self.secret = secret
        self.client = client
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self.peer_address: str | None = None   # set by HELLO
        self.authenticated = False
        self.auth_failed = False
        self.closed = False
        self.ready: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self.last_recv = 0.0
        self.frames_in = 0
        self.frames_out = 0
        self._nonce = auth.new_nonce()
        self._peer_nonce: bytes | None = None
        self._hs = bytearray()
        self._decoder = FrameDecoder(max_frame)
        self._wbuf: list[bytes] = []
        self._wbytes = 0
        self._flush_scheduled = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stash: list[bytes] = []
        self._blocked: asyncio.Future | None = None
        self._hs_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_recv = self.loop.time()
        transport.write(auth.hello(self._nonce))  # type: ignore[attr-defined]
        self._hs_timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if self.peer_address is None and not self.closed:
            self.fail("handshake timed out", "auth_failures")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_recv = self.loop.time()
        if not self.authenticated:
            data = self._handshake(data)
            if not data:
                return
        try:
            bodies = self._decoder.feed(data)
        except CodecError as exc:
            self.fail(str(exc), "oversized_frames")
            return
        if self._blocked is not None:
            self._stash.extend(bodies)
            return
        self._dispatch(bodies)

    def _handshake(self, data: bytes) -> bytes:
        """Consume handshake bytes; return whatever follows the handshake."""
        self._hs += data
        if self._peer_nonce is None:
            if len(self._hs) < auth.HELLO_SIZE:
                if not auth.MAGIC.startswith(bytes(self._hs[: len(auth.MAGIC)])):
                    self.fail("peer did not start the e2actors handshake", "auth_failures")
                return b""
            nonce = auth.parse_hello(bytes(self._hs[: auth.HELLO_SIZE]))
            if nonce is None:
                self.fail("peer did not start the e2actors handshake", "auth_failures")
                return b""
            self._peer_nonce = nonce
            del self._hs[: auth.HELLO_SIZE]
            role = ROLE_CLIENT if self.client else ROLE_SERVER
            self.transport.write(auth.proof(self.secret, role, nonce, self._nonce))  # type: ignore[union-attr]
        if len(self._hs) < auth.PROOF_SIZE:
            return b""
        their_role = ROLE_SERVER if self.client else ROLE_CLIENT
        if not auth.check(self.secret, their_role, self._nonce, self._peer_nonce, bytes(self._hs[: auth.PROOF_SIZE])):
            self.fail("peer failed the shared-secret challenge", "auth_failures")
            return b""
        rest = bytes(self._hs[auth.PROOF_SIZE:])
        self._hs = bytearray()
        self.authenticated = True
        if self.client:
            self.send_frame(encode_frame(HELLO, self.node.address, self.node.version, self.node.name))
        return rest

    def _dispatch(self, bodies: list[bytes]) -> None:
        node = self.node
        for i, body in enumerate(bodies):
            try:
                kind, a, b, msg = decode_frame_body(body)
            except CodecError as exc:
                self.fail(str(exc), "codec_errors")
                return
            self.frames_in += 1
            if self.peer_address is None:
                if kind != HELLO or not isinstance(a, str) or not isinstance(msg, str):
                    self.fail("first frame was not HELLO", "codec_errors")
                    return
                self.peer_address = a
                if self._hs_timer is not None:
                    self._hs_timer.cancel()
                if not self.client:
                    self.send_frame(encode_frame(HELLO, node.address, node.version, node.name))
                node._on_connection_ready(self)
                if not self.ready.done():
                    self.ready.set_result(self)
                continue
            try:
                wait = node._on_frame(self, kind, a, b, msg)
            except CodecError as exc:
                self.fail(str(exc), "codec_errors")
                return
            if wait is not None:
                # The target's block mailbox is full: stop reading from this peer (TCP pushes
                # back on its sender) and carry on, in order, once the message is in.
                self._stash = bodies[i + 1:] + self._stash
                self._blocked = asyncio.ensure_future(self._resume(wait))
                if self.transport is not None:
                    self.transport.pause_reading()
                return

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
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.transport = None
        if self._hs_timer is not None:
            self._hs_timer.cancel()
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(TransportError(f"connection to {self.peer_address} lost"))
        self._drain_waiters.clear()
        if not self.ready.done():
            self.ready.set_exception(TransportError(f"connection closed during handshake: {exc or 'EOF'}"))
            self.ready.exception()  # mark retrieved: a refused connect is reported by the caller
        if self._blocked is not None:
            self._blocked.cancel()
        self.node._on_connection_lost(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
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
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        buf = self._wbuf
        if not buf:
            return
        self._wbuf = []
        self._wbytes = 0
        if self.transport is None or self.closed:
            return
        self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    @property
    def write_paused(self) -> bool:
        return self._paused

    @property
    def buffered(self) -> int:
        """Bytes queued to the peer and not yet taken by the kernel."""
        t = self.transport
        return self._wbytes + (t.get_write_buffer_size() if t is not None else 0)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self._paused:
            return
        fut = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def fail(self, reason: str, counter: str) -> None:
        """Close this connection because of bad input; log and count it."""
        self.node.counters[counter] += 1
        if counter == "auth_failures":
            self.auth_failed = True
        log.warning("closing connection %s (%s): %s", self.peer_address or self._peername(), counter, reason)
        self.close()

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
async def listen(address: str, factory: Callable[[], Connection], ssl: _ssl.SSLContext | None) -> tuple[Any, str]:
    """Start a server; returns (server, the concrete address, e.g. with the port chosen)."""
    kind, host, port = parse_address(address)
    loop = asyncio.get_running_loop()
    if kind == "tcp":
        server = await loop.create_server(factory, host, port, ssl=ssl, reuse_address=True)
        sock = server.sockets[0]
        h, p = sock.getsockname()[:2]
        h = f"[{h}]" if ":" in h else h
        return server, f"tcp://{h}:{p}"
    if kind == "unix":
        import os

        if os.path.exists(host):
            os.unlink(host)
        server = await loop.create_unix_server(factory, host, ssl=ssl)
        return server, f"unix://{host}"
    if host in _MEM_LISTENERS:
        raise TransportError(f"mem address {address} already in use")
    _MEM_LISTENERS[host] = factory
    return _MemServer(host), f"mem://{host}"


async def connect(address: str, factory: Callable[[], Connection], ssl: _ssl.SSLContext | None,
                  server_hostname: str | None = None) -> Connection:
    """Connect to ``address`` and complete the handshake.

    Raises :class:`TransportError` when nothing answers and :class:`AuthError` when the peer
    closes during the handshake (it refused our proof) or sent a bad proof.
    """
    kind, host, port = parse_address(address)
    loop = asyncio.get_running_loop()
    try:
        if kind == "tcp":
            _, proto = await loop.create_connection(factory, host, port, ssl=ssl,
                                                    server_hostname=(server_hostname or host) if ssl else None)
        elif kind == "unix":
            _, proto = await loop.create_unix_connection(
                factory, host, ssl=ssl, server_hostname=(server_hostname or "localhost") if ssl else None)
    except (OSError, _ssl.SSLError) as exc:
        raise TransportError(f"cannot connect to {address}: {exc}") from None
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
        return await asyncio.wait_for(proto.ready, HANDSHAKE_TIMEOUT + 1)  # type: ignore[union-attr]
    except (asyncio.TimeoutError, TransportError) as exc:
        # The peer refused us if it closed after seeing our proof, or if its own proof was wrong;
        # a close before its hello is just a failed connection (e.g. a dying process).
        refused = proto.auth_failed or (proto._peer_nonce is not None and not proto.authenticated)  # type: ignore[union-attr]
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
        self._loop.call_soon(self.other._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
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
            self._deliver(d)

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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
