"""Hostile peers against real agent processes over real sockets.

* A man in the middle (tests/mitm_relay.py, its own process) relays a legitimate handshake between
  a node and an agent, then injects a Spawn frame, replays, reorders or modifies a record: the
  agent refuses each (closes that connection, counts ``frame_auth_failures``, logs), the Spawn
  never runs (the same frame sent by a peer that holds the secret does run: the control), and a
  legitimate node's traffic on its own connection is not disturbed at any point.
* A relay that joins a node to itself (its own hello comes back) is refused; with TLS, a relay
  that terminates TLS on both legs with a CA-signed certificate fails the proofs (the handshake is
  bound to the TLS channel).
* With TLS, a TCP connection that never sends a ClientHello is closed within the handshake
  timeout and counted; so is one that sends bytes that are not TLS.
* A flood of 500 connections (tests/flood.py, its own process): the caps refuse what is over them
  at accept, the admitted ones that never speak are closed at the deadline, all counted, and a
  legitimate peer's ask round-trip stays low throughout.
* Slow-loris against the metrics endpoint: no thread per connection, idle clients closed and
  counted, scrapes still served.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clusterkit import Agent, env_with_tests, make_certs, metric
from conftest import SECRET, eventually, need_tool
from e2actors import Actor, ActorRef, AuthError, GetNodeInfo, Node, Spawn, TLSConfig, TransportError
from e2actors.runtime.codec import encode_frame
from e2actors.runtime.transport import ASK
from rawpeer import RawPeer, tcp_connect

TESTS = Path(__file__).resolve().parent


def spawn_frame(name: str, marker: Path) -> bytes:
    """An ASK to ``$system``: spawn a Legacy NF running ``touch MARKER`` (a file appears if it runs)."""
    return encode_frame(ASK, "$system", 7, Spawn("e2actors.nf.instance:NFInstance", name, {
        "pipelet": "e2actors.nf.builtin.legacy:Legacy", "config": {"cmd": ["touch", str(marker)]}, "nf": name}))


def events(agent: Agent, event: str) -> float:
    return metric(agent.metrics(), "e2_node_events_total", event=event)


class Pinger:
    """A legitimate node asking the agent's ``$system`` over its own connection, all along."""

    def __init__(self, node: Node, address: str) -> None:
        self.node, self.ref = node, ActorRef(address, "$system")
        self.rtts: list[float] = []
        self.failures: list[str] = []
        self._stop = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop:
            t0 = time.perf_counter()
            try:
                await self.node.ask(self.ref, GetNodeInfo(), timeout=5)
                self.rtts.append(time.perf_counter() - t0)
            except Exception as exc:
                self.failures.append(repr(exc))
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop = True
        await self._task


@pytest.fixture
def procs():
    ps: list[subprocess.Popen] = []
    yield ps
    for p in ps:
        if p.poll() is None:
            try:
                p.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def start_relay(procs: list, target: str, mode: str, inject: Path | None = None,
                tls: tuple[str, str, str] | None = None) -> str:
    cmd = [sys.executable, str(TESTS / "mitm_relay.py"), "--target", target.removeprefix("tcp://"), "--mode", mode]
    if inject is not None:
        cmd += ["--inject", str(inject)]
    if tls is not None:
        cmd += ["--tls", *tls]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env_with_tests())
    procs.append(p)
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("READY "), line
    return f"tcp://127.0.0.1:{line.split()[1]}"


async def test_man_in_the_middle_cannot_inject_replay_reorder_or_modify(tmp_path: Path, agents, procs) -> None:
    # The agent would run the injected program if the frame got through: Legacy is allowed for
    # the programs of /usr/bin and /bin, so only the frame authentication stands in the way.
    agent = agents("s1", extra=["--allow-legacy", "/usr/bin", "--allow-legacy", "/bin"])
    async with Node("direct", secret=SECRET) as direct:
        pinger = Pinger(direct, agent.address)
        # Control: the same Spawn frame from a peer that holds the secret does run the program.
        control = tmp_path / "control-ran"
        loop = asyncio.get_running_loop()
        peer = await loop.run_in_executor(None, RawPeer, agent.address, SECRET)
        peer.send(spawn_frame("control", control))
        await eventually(control.exists, timeout=15, blocking=True, what="the control Spawn to run its program")
        peer.close()

        marker = tmp_path / "attack-ran"
        inject = tmp_path / "spawn.frame"
        inject.write_bytes(spawn_frame("pwned", marker))
        for mode in ("inject", "replay", "reorder", "modify"):
            before = await loop.run_in_executor(None, events, agent, "frame_auth_failures")
            relay = start_relay(procs, agent.address, mode, inject if mode == "inject" else None)
            # A legitimate node dials what it takes for the agent: the relay. The handshake passes.
            async with Node(f"mgr-{mode}", secret=SECRET, heartbeat_interval=30, heartbeat_timeout=60) as mgr:
                try:
                    await mgr.connect(relay)
                except TransportError:
                    # Injected right after our HELLO: the agent may close before it answers.
                    assert mode == "inject"
                target = ActorRef(agent.address, "$system")
                if mode in ("replay", "modify"):       # record 1: an ask
                    try:
                        await mgr.ask(target, GetNodeInfo(), timeout=3)
                    except Exception:
                        pass  # the replay may close the link before the answer comes back
                elif mode == "reorder":                # records 1 and 2: two tells
                    mgr.send(ActorRef(agent.address, "nobody"), "first")
                    await asyncio.sleep(0.05)
                    mgr.send(ActorRef(agent.address, "nobody"), "second")
                await eventually(lambda: events(agent, "frame_auth_failures") > before,
                                 timeout=15, blocking=True, what=f"the agent to refuse the {mode}d stream")
            relay_proc = procs[-1]
            relay_proc.stdin.close()  # type: ignore[union-attr]
            relay_proc.wait(5)
            assert "ACTION" in relay_proc.stderr.read(), f"the relay did not {mode}"  # type: ignore[union-attr]
        await pinger.stop()
        info = await direct.ask(ActorRef(agent.address, "$system"), GetNodeInfo())
    # ("control" ran, see above; it may be gone by now: its spawner, the raw peer, closed and the
    # agent fences what a lost peer started)
    assert "pwned" not in info.actors
    assert not marker.exists(), "the injected Spawn ran its program"
    assert pinger.failures == [] and len(pinger.rtts) > 10, pinger.failures
    text = agent.metrics()
    assert metric(text, "e2_node_events_total", event="frame_auth_failures") >= 4
    assert metric(text, "e2_node_events_total", event="spawn_refused") == 0  # refused before any frame was read
    assert agent.log_text().count("frame_auth_failures") >= 1


async def test_a_relay_joining_a_node_to_itself_is_refused(procs) -> None:
    async with Node("solo", listen="tcp://127.0.0.1:0", secret=SECRET) as node:
        relay = start_relay(procs, node.address, "relay")
        with pytest.raises(AuthError):
            await node.connect(relay)
        assert node.counters["auth_failures"] >= 1


async def test_tls_deadline_runs_from_accept(tmp_path: Path, agents) -> None:
    need_tool("openssl")
    cert, key, ca = make_certs(tmp_path / "pki")
    agent = agents("s1", extra=["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, "--handshake-timeout", "1"])
    loop = asyncio.get_running_loop()

    def silent_then_closed() -> float:
        s = tcp_connect(agent.address)
        t0 = time.monotonic()
        s.settimeout(10)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
        return time.monotonic() - t0

    held = await loop.run_in_executor(None, silent_then_closed)
    print(f"\na TCP connection that never sends a ClientHello was closed after {held:.2f}s (timeout 1s)")
    assert held < 10
    await eventually(lambda: events(agent, "handshake_timeouts") >= 1, timeout=15, blocking=True, what="the timeout to be counted")

    def not_tls() -> None:
        s = tcp_connect(agent.address)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()

    await loop.run_in_executor(None, not_tls)
    await eventually(lambda: events(agent, "tls_failures") >= 1, timeout=15, blocking=True, what="the failed TLS handshake to be counted")
    # A real TLS peer still gets in.
    async with Node("tls-client", secret=SECRET, tls=TLSConfig(cert, key, ca)) as node:
        info = await node.ask(ActorRef(agent.address, "$system"), GetNodeInfo())
        assert info.name == "s1"


async def test_the_handshake_is_bound_to_the_tls_channel(tmp_path: Path, agents, procs) -> None:
    """A relay that terminates TLS on both legs, with a certificate the CA signed (here the very
    certificate the nodes use), passes the e2actors handshake through untouched: the two TLS
    channels differ, so the keys the two ends derive differ and the proofs fail."""
    need_tool("openssl")
    cert, key, ca = make_certs(tmp_path / "pki")
    agent = agents("s1", extra=["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca])
    relay = start_relay(procs, agent.address, "relay", tls=(cert, key, ca))
    async with Node("tls-client", secret=SECRET, tls=TLSConfig(cert, key, ca)) as node:
        with pytest.raises(AuthError):
            await node.connect(relay)
        assert node.counters["auth_failures"] >= 1
        # Directly, the same node gets in.
        await node.connect(agent.address)
    await eventually(lambda: events(agent, "auth_failures") >= 1, timeout=15, blocking=True, what="the agent to count the bound-channel failure")


async def test_connection_flood_is_capped_and_a_legitimate_peer_keeps_its_latency(agents, procs) -> None:
    agent = agents("s1", extra=["--handshake-timeout", "1"])
    host, port = agent.address.removeprefix("tcp://").rsplit(":", 1)
    async with Node("legit", secret=SECRET) as legit:
        await legit.connect(agent.address)
        pinger = Pinger(legit, agent.address)
        await eventually(lambda: len(pinger.rtts) >= 5, timeout=15, blocking=True, what="a few asks before the flood")
        quiet = list(pinger.rtts)
        flood = subprocess.Popen([sys.executable, str(TESTS / "flood.py"), host, port, "500"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(flood)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, flood.stdout.readline)  # type: ignore[union-attr]
        n_before = len(pinger.rtts)
        # Hold the flood until the admitted connections reach their deadline and are closed.
        await eventually(lambda: events(agent, "handshake_timeouts") >= 25, timeout=15, blocking=True, what="the silent connections' deadline")
        during = pinger.rtts[n_before:]
        flood.stdin.close()  # type: ignore[union-attr]
        closed = await loop.run_in_executor(None, flood.stdout.readline)  # type: ignore[union-attr]
        flood.wait(10)
        await pinger.stop()
    text = agent.metrics()
    refused = metric(text, "e2_node_events_total", event="connections_refused")
    timeouts = metric(text, "e2_node_events_total", event="handshake_timeouts")
    med, worst = statistics.median(during), max(during)
    print(f"\nflood: {line.strip()}, {closed.strip()}; agent refused {refused:.0f} at accept, "
          f"timed out {timeouts:.0f}; "
          f"ask round-trip before: median {statistics.median(quiet) * 1e3:.1f} ms; during: median {med * 1e3:.1f} ms, "
          f"max {worst * 1e3:.1f} ms over {len(during)} asks")
    assert pinger.failures == []
    assert len(during) >= 5
    # One legitimate connection plus 31 flood connections fit under the cap of 32 per address.
    assert refused >= 500 - 32 and timeouts >= 25
    # The bound is 50 ms; the median holds it with room on a loaded 2-core machine (the
    # flood's 500 accepts are a few ms of work), the worst ask is bounded more loosely.
    assert med < 0.050
    assert worst < 1.0


async def test_metrics_slow_loris_gets_no_threads_and_is_closed(agents, procs) -> None:
    agent = agents("s1", extra=["--handshake-timeout", "1"])
    url = agent.metrics_url
    assert url is not None
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)

    def threads() -> int:
        for ln in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
            if ln.startswith("Threads:"):
                return int(ln.split()[1])
        raise AssertionError("no Threads line")

    before = threads()
    flood = subprocess.Popen([sys.executable, str(TESTS / "flood.py"), host, port, "200", "--send",
                              b"GET /metr".hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(flood)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, flood.stdout.readline)  # type: ignore[union-attr]
    assert line.split()[1] == "200", line
    during = threads()
    # A scrape is served while the 200 slow clients are held.
    body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert "e2_node_actors" in body
    # The slow clients are closed at the deadline and counted.
    await eventually(lambda: metric(agent.metrics(), "e2_metrics_http_total", event="idle_closed") >= 200,
                     timeout=15, blocking=True, what="the idle metrics clients to be closed")
    flood.stdin.close()  # type: ignore[union-attr]
    closed = await loop.run_in_executor(None, flood.stdout.readline)  # type: ignore[union-attr]
    flood.wait(10)
    print(f"\nmetrics slow-loris: threads {before} before, {during} with 200 slow clients; {closed.strip()}")
    assert during <= before + 1
    assert int(closed.split()[1]) == 200


async def test_node_caps_and_write_bound_in_process() -> None:
    """The total cap, and a peer that asks and never reads its replies, against an in-process node."""
    async with Node("srv", listen="tcp://127.0.0.1:0", secret=SECRET, max_connections=3,
                    max_frame=2 << 20, max_write_buffer=1) as srv:
        srv.spawn(_Big, "big")
        loop = asyncio.get_running_loop()
        socks = [await loop.run_in_executor(None, tcp_connect, srv.address) for _ in range(5)]
        await eventually(lambda: srv.counters["connections_refused"] >= 2)
        for s in socks:
            s.close()
        await eventually(lambda: srv.admission.total == 0)
        # Asks whose replies pile up unread: the link is dropped once over the bound (here the
        # floor: two of the largest frames plus a flush), counted.
        peer = await loop.run_in_executor(None, RawPeer, srv.address, SECRET)
        frames = b"".join(encode_frame(ASK, "big", i, "x") for i in range(40))
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(4):
            try:
                peer.send(frames)
            except OSError:
                break
            await asyncio.sleep(0.05)
        await eventually(lambda: srv.counters["slow_peers"] >= 1, timeout=20)
        peer.close()


async def test_many_slow_peers_together_are_bounded_node_wide() -> None:
    """Peers that each stay under the per-peer bound but together queue more than the node's
    total: the ones with the most queued are dropped, counted as slow peers."""
    async with Node("srv", listen="tcp://127.0.0.1:0", secret=SECRET, max_frame=2 << 20,
                    max_write_buffer=64 << 20, max_total_write_buffer=6 << 20, heartbeat_interval=0.05) as srv:
        srv.spawn(_Big, "big")
        loop = asyncio.get_running_loop()
        peers = [await loop.run_in_executor(None, RawPeer, srv.address, SECRET) for _ in range(2)]
        frames = b"".join(encode_frame(ASK, "big", i, "x") for i in range(5))  # 5 MB of replies each
        for peer in peers:
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peer.send(frames)
        await eventually(lambda: srv.counters["slow_peers"] >= 1, timeout=20, what="a slow peer dropped")
        assert sum(c.buffered for c in srv._conns if not c.closed) <= 6 << 20
        for peer in peers:
            peer.close()


class _Big(Actor):
    async def on_message(self, msg):
        return b"y" * (1 << 20)



async def test_repeated_failures_are_all_counted_but_logged_at_a_bounded_rate(agents) -> None:
    agent = agents("s1")
    loop = asyncio.get_running_loop()

    def wrong_secret_handshakes(n: int) -> int:
        refused = 0
        for _ in range(n):
            try:
                RawPeer(agent.address, b"not the cluster's secret", hello_frame=False).close()
            except (AuthError, ConnectionError, OSError):
                refused += 1
        return refused

    assert await loop.run_in_executor(None, wrong_secret_handshakes, 300) == 300
    await eventually(lambda: events(agent, "auth_failures") >= 300, timeout=15, blocking=True, what="every failure to be counted")
    lines = [ln for ln in agent.log_text().splitlines() if "auth_failures" in ln]
    print(f"\n300 failed handshakes: counted {events(agent, 'auth_failures'):.0f}, {len(lines)} log lines, "
          f"{sum(len(ln) for ln in lines)} bytes of log")
    assert 1 <= len(lines) <= 10
