"""The link between a connection and its owner: ``transport.Connection`` needs nothing but the
:class:`~e2actors.runtime.transport.LinkOwner` interface (here implemented by a bare owner, not a
Node) over real TCP and the in-memory pair; frames arrive with named fields, in order, and an
owner that cannot take a frame yet holds the rest back. And a node's stop leaves none of the tasks
it started (accept loop, handshakes, reconnects, asks handled inline) running."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Awaitable
from typing import Any

import pytest

from conftest import SECRET, eventually
from e2actors import Actor, ActorRef, Node
from e2actors.errors import TransportError
from e2actors.runtime import transport
from e2actors.runtime.codec import Frame, encode_frame
from e2actors.runtime.ratelog import RateLimitedLog
from e2actors.runtime.transport import ASK, REPLY, TELL, Admission, Connection, LinkOwner, ListenerOwner


class Owner:
    """A link owner that is not a node: it records what its connections tell it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = f"anon://{name}"
        self.version = "test"
        self.heartbeat_timeout = 3.0
        self.handshake_timeout = 5.0
        self.max_write_buffer = 1 << 20
        self.counters: collections.Counter[str] = collections.Counter()
        self.ratelog = RateLimitedLog(logging.getLogger("test.links"))
        self.admission = Admission(8, 8)
        self.ready: list[Connection] = []
        self.lost: list[Connection] = []
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        #: Kinds of frame this owner cannot take yet: on_frame hands back this future instead.
        self.hold: asyncio.Future[None] | None = None
        self.nonces: set[bytes] = set()

    def on_ready(self, conn: Connection) -> None:
        self.ready.append(conn)

    def on_frame(self, conn: Connection, kind: int, target: Any, arg: Any, message: Any) -> Awaitable[Any] | None:
        frame = Frame(kind, target, arg, message)
        if frame.message == "hold" and self.hold is not None:
            hold, self.hold = self.hold, None

            async def take_later() -> None:
                await hold
                self.frames.put_nowait(frame)

            return take_later()
        self.frames.put_nowait(frame)
        return None

    def on_lost(self, conn: Connection) -> None:
        self.lost.append(conn)
        if conn.host is not None:
            self.admission.release(conn.host)

    def server_connection(self, accepted_at: float, host: str | None) -> Connection:
        return Connection(self, SECRET, client=False, accepted_at=accepted_at, host=host, nonces=self.nonces)

    def client_connection(self) -> Connection:
        return Connection(self, SECRET, client=True, nonces=self.nonces)



def test_node_implements_the_link_owner_interface() -> None:
    node = Node("n", secret=SECRET)
    assert isinstance(node, LinkOwner) and isinstance(node, ListenerOwner)
    assert isinstance(Owner("o"), ListenerOwner)


def test_node_implements_the_actor_host_interface() -> None:
    # What actors use of their node is the ActorHost protocol (the actor module names only it).
    from e2actors.runtime.host import ActorHost

    node = Node("n", secret=SECRET)
    assert isinstance(node, ActorHost)
    missing = [m for m in ("send", "tell", "ask", "spawn_child", "watch", "unwatch", "unregister", "create_task",
                           "is_alive", "link_backlog", "subscribe") if not callable(getattr(node, m, None))]
    assert not missing


@pytest.mark.parametrize("kind", ["tcp", "mem"])
async def test_a_connection_needs_only_its_owner_interface(kind: str) -> None:
    server, client = Owner("server"), Owner("client")
    listener, address = await transport.listen("tcp://127.0.0.1:0" if kind == "tcp" else "mem://links-test", server)
    try:
        conn = await transport.connect(address, client.client_connection, None)
        await eventually(lambda: len(server.ready) == 1)
        assert client.ready == [conn] and conn.peer_address == server.address
        back = server.ready[0]
        assert back.peer_address == client.address and back.peer_name == "client"
        # Frames in both directions, fields by name.
        conn.send_frame(encode_frame(TELL, "sink", None, {"n": 1}))
        conn.send_frame(encode_frame(ASK, "echo", 7, ("a", b"\x00")))
        back.send_frame(encode_frame(REPLY, 7, True, "done"))
        f1, f2 = await server.frames.get(), await server.frames.get()
        assert (f1.kind, f1.target, f1.arg, f1.message) == (TELL, "sink", None, {"n": 1})
        assert (f2.kind, f2.target, f2.arg, f2.message) == (ASK, "echo", 7, ("a", b"\x00"))
        r = await client.frames.get()
        assert (r.kind, r.target, r.arg, r.message) == (REPLY, 7, True, "done")
        # An owner that cannot take a frame yet: nothing after it is handed over until it is
        # taken, then the rest follow in order.
        hold = server.hold = asyncio.get_running_loop().create_future()
        seen = back.frames_in
        for m in ["before", "hold", "after-1", "after-2"]:
            conn.send_frame(encode_frame(TELL, "sink", None, m))  # one record: they arrive together
        assert (await server.frames.get()).message == "before"
        assert server.frames.empty() and back.frames_in == seen + 2  # "hold" handed over, no more
        hold.set_result(None)
        assert [(await server.frames.get()).message for _ in range(3)] == ["hold", "after-1", "after-2"]
        assert not conn.write_paused and conn.buffered == 0
        conn.close()
        await eventually(lambda: server.lost == [back] and client.lost == [conn])
        assert server.admission.total == 0 and not server.counters and not client.counters
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_hello_with_the_owners_own_address_is_refused_and_counted() -> None:
    server, client = Owner("server"), Owner("client")
    listener, address = await transport.listen("mem://links-own-address", server)
    try:
        client.address = server.address  # a relay joining the server to itself
        with pytest.raises(TransportError):
            await transport.connect(address, client.client_connection, None, timeout=2.0)
        await eventually(lambda: server.counters["auth_failures"] == 1)
        assert server.ready == [] and len(server.lost) == 1
    finally:
        listener.close()


class Slow(Actor):
    def __init__(self, go: asyncio.Event) -> None:
        self.go = go

    async def on_message(self, msg: Any) -> Any:
        if msg == "wait":
            await self.go.wait()  # suspends: the ask is carried on in a task of the node's
        return msg


async def test_stop_leaves_none_of_the_tasks_the_node_started() -> None:
    before = asyncio.all_tasks()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"tcp://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
    node = Node("n", listen="tcp://127.0.0.1:0", secret=SECRET, heartbeat_interval=0.05)
    try:
        await node.start()
        go = asyncio.Event()
        slow = node.spawn(Slow, "slow", go=go)
        assert await node.ask(slow, "x") == "x"
        asking = asyncio.ensure_future(node.ask(slow, "wait", timeout=None))
        node.send(ActorRef(dead, "x"), "hello")  # a reconnect loop that keeps failing
        # A client that never starts its handshake: the listener's handshake is in progress.
        loop = asyncio.get_running_loop()
        host, port = node.address[len("tcp://"):].rsplit(":", 1)
        idle = await loop.run_in_executor(None, socket.create_connection, (host, int(port)))
        await eventually(lambda: node.counters["connect_failures"] >= 1 and node.admission.total == 1)
        started = {t.get_name().split(":")[0] for t in asyncio.all_tasks() - before}
        assert {"accept", "heartbeats", "connect", "ask", "actor"} <= started, started
        go.set()
        assert await asking == "wait"
        await node.stop()
        left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
        assert left == []
        idle.close()
    finally:
        closed.close()
        await node.stop()
