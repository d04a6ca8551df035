"""Worker and agent loss healed within the run, with real processes.

* A worker (``--workers N``, this run's own process) that misses its heartbeats — killed, or
  paused with SIGSTOP for longer than the timeout — is fenced: the manager kills it (a paused one
  never resumes with its old instances), re-places its instances where there is room, and, in a
  sharded run, the surviving switch takes over the lost one's share of the replayed capture. The
  run exits 1, and every packet of the input is in the account: in = out + counted drops + lost,
  ``lost`` broken down by where the packets were.
* An agent (``e2actors agent``, another machine's process) that is paused fences itself when it
  runs again (it stops what the manager started there); when it answers again the manager makes
  sure nothing of the deployment runs there any more, then re-admits it as fresh capacity (a
  later scale-out lands on it). A killed agent's instances run on the others.

The pure parts (the plan after a loss, a lost shard's account) and the replay port's takeover are
tested without processes first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import Agent, env_with_tests, start_agent
from conftest import SECRET, eventually, eventually_blocking, need_tool
from healkit import SHARD_CHAIN, account, feed, out_frame
from e2actors.manager.diff import heal_lost
from e2actors.manager.hardware import Hardware, PortPlace, Server
from e2actors.manager.manager import Manager, Traffic
from e2actors.manager.plan import make_plan
from e2actors.manager.policy import Policy
from e2actors.manager.recovery import lost_shard_account
from e2actors.packet.pcap import read_packets
from e2actors.packet.traffic import write_pcap
from e2actors.runtime.messages import GetNodeInfo
from e2actors.switch.balancer import shard_of
from e2actors.packet.packet import Packet
from e2actors.runtime.ref import ActorRef
from e2actors.switch.credits import Credits
from e2actors.switch.dataplane import Dataplane
from e2actors.switch.ports import PcapInPort
from e2actors.switch.table import PortSpec, SwitchTable

HB = 1.0  # heartbeat timeout of the manager, its workers and the agents here

TAG = """
name: tagged
nfs:
  tag: {class: "heal_nfs:Tagger", min: %d, max: 3}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: tag}
  - {from: tag, to: out}
"""


# --- pure: the plan after a loss, a lost shard's account -------------------------------------------
def _plan(text: str, servers: list[Server]):
    pol = Policy.from_yaml(text, "policy.yaml")
    hw = Hardware(servers, {"in": PortPlace("in", "main"), "out": PortPlace("out", "main")})
    return make_plan(pol, hw)


def test_heal_places_everything_again_when_there_is_room() -> None:
    plan = _plan(TAG % 2, [Server("main", 0), Server("a", 2), Server("b", 2)])
    lost = plan.assignment["tag#1"]
    h = heal_lost(plan, lost)
    assert set(h.moved) == {i for i, s in plan.assignment.items() if s == lost and i.startswith("tag")}
    assert all(s not in (lost, "main") for s in h.moved.values())
    assert not h.dropped and not h.failed
    assert h.plan.hardware.servers[lost].cores == 0  # (nothing lands there any more)


def test_heal_without_room_leaves_out_what_runs_elsewhere_and_fails_only_the_last() -> None:
    plan = _plan(TAG % 2, [Server("main", 0), Server("a", 1), Server("b", 1)])
    lost = plan.assignment["tag#1"]
    h = heal_lost(plan, lost)
    assert h.moved == {} and h.dropped == ["tag#1"] and not h.failed and "no server has a free core" in h.why
    assert h.plan.instances_of("tag") == ["tag#2"]
    # The last instance of an NF that finds no room fails (its packets are dropped with a reason).
    h2 = heal_lost(h.plan, h.plan.assignment["tag#2"])
    assert h2.failed == ["tag#2"] and not h2.moved


def test_heal_keeps_the_shards_of_a_sharded_plan() -> None:
    from e2actors.manager.shards import shard_hardware

    pol = Policy.from_yaml(TAG % 1, "policy.yaml")
    plan = make_plan(pol, shard_hardware(2, 1))
    h = heal_lost(plan, "w2")
    assert h.plan.hardware.shards == ("w1", "w2")  # (the survivor's port keeps its shard: not replayed over)
    assert h.dropped == ["tag#2"] and h.plan.assignment["tag#1"] == "w1"


def test_a_lost_shard_is_accounted_from_its_last_counters_and_the_survivors() -> None:
    last = {"ports": {"in": {"rx_packets": 1000, "tx_packets": 0, "drops": {}},
                      "out": {"rx_packets": 0, "tx_packets": 700, "drops": {}}},
            "drops": {"malformed": 10}, "credits": {"in_flight": {2: 40}, "written_off": 0}}
    survivor = {"ports": {"in": {"rx_packets": 5000, "shard_seen": [3000, 2600], "adopted": {"1": 1200}}}}
    acc = lost_shard_account(last, [survivor], 1)
    assert acc["in_flight"] == 40
    assert acc["unread"] == 2600 - 1200 - 1000
    # What its NFs finished (dropped or consumed) is the rest of what it read.
    assert acc["switch"]["drops"]["dropped or consumed by the NFs of a lost server (its last counters)"] == 250
    assert acc["switch"]["credits"] == {}
    assert lost_shard_account(None, [survivor], 1)["unread"] == 1400  # (never read: all of it lost)
    assert lost_shard_account(last, [{"ports": {"in": {"rx_packets": 5}}}], 1) is None


def test_credits_written_off_come_back_when_their_packets_were_not_lost() -> None:
    cr = Credits("a")
    cr.configure({1: "a"}, {1: 100})
    cr.admit(1, 100)
    assert cr.room(1) == 0
    assert cr.write_off(1) == 100 and cr.room(1) == 100  # (the window is back at once)
    cr.give_back([(1, 30)])  # 30 of them were elsewhere and finish after all
    cr.finish_counts([(1, 20)])
    assert cr.written_off == 50 and cr.in_flight == 0 and cr.room(1) == 100
    cr.admit(1, 10)
    cr.give_back([(1, 10)])
    assert cr.written_off == 50 and cr.in_flight == 0


def test_a_server_leaving_the_table_writes_off_the_credits_of_what_was_there() -> None:
    def table(v: int, switches: list[str]) -> SwitchTable:
        return SwitchTable(v, "a", (PortSpec("in", "memory", {"origin": 1, "window": 64}),), (), (),
                           {s: ActorRef(f"mem://{s}", f"switch-{s}") for s in switches}, {"in": "a"}, {1: "a"})

    dp = Dataplane("a")
    dp.install(table(1, ["a", "b"]), {}, 0.0)
    dp.admit("in", [Packet(out_frame(k), 0.0, "in") for k in range(40)])
    dp.install(table(2, ["a", "b"]), {}, 0.0)  # (a new table: nothing lost)
    assert dp.credits.in_flight == 40 and dp.credits.written_off == 0
    dp.install(table(3, ["a"]), {}, 0.0)  # b is lost: what of ours was there never finishes
    assert dp.credits.in_flight == 0 and dp.credits.written_off == 40 and dp.credits.room(1) == 64
    dp.credit(((1, 15),))  # 15 were elsewhere: they come back
    assert dp.credits.written_off == 25 and dp.credits.room(1) == 64


# --- the replay port: a surviving shard takes over a lost one's flows ---------------------------
def _trace(tmp_path: Path, flows: int = 300) -> tuple[Path, list[bytes]]:
    cap = tmp_path / "trace.pcap"
    write_pcap(cap, flows=flows, seed=5)
    return cap, [r.data for r in read_packets(str(cap))]


async def _replay(port: PcapInPort, stop_after: int | None = None) -> list[bytes]:
    got: list[bytes] = []
    stopped = asyncio.Event()

    def ingress(_name: str, ps: list[Packet]) -> None:
        got.extend(p.data for p in ps)
        if stop_after is not None and len(got) >= stop_after:
            stopped.set()

    async def gate() -> None:
        if stop_after is not None and len(got) >= stop_after:
            await asyncio.Event().wait()  # (a switch that never gives room again: a lost one)

    await port.open(ingress, gate)
    if stop_after is None:
        await port.finished.wait()
    else:
        await stopped.wait()
        await port.close()
    return got


async def _replay_stamps(port: PcapInPort) -> list[tuple[bytes, float]]:
    got: list[tuple[bytes, float]] = []

    async def gate() -> None:
        return None

    await port.open(lambda _n, ps: got.extend((p.data, p.ts) for p in ps), gate)
    await port.finished.wait()
    return got


@pytest.mark.parametrize("speed", [0.0, 50.0])
async def test_a_surviving_shard_takes_over_a_lost_one_from_its_position(tmp_path: Path, speed: float) -> None:
    cap, frames = _trace(tmp_path)
    mine = [d for d in frames if shard_of(Packet(d, 0.0), 2) == 0]
    theirs = [d for d in frames if shard_of(Packet(d, 0.0), 2) == 1]
    # Shard 2 of 2 reads 100 of its packets (in batches of 16), then is lost.
    lost = PcapInPort("in", str(cap), speed=speed, loop=2, batch=16, shard=[1, 2])
    read_by_lost = await _replay(lost, stop_after=100)
    n_lost = lost.rx_packets
    assert read_by_lost == (theirs * 2)[:n_lost]
    # Shard 1 of 2 has read part of the capture when it is told to take shard 2 over.
    port = PcapInPort("in", str(cap), speed=speed, loop=2, batch=16, shard=[0, 2])
    got: list[bytes] = []
    stamps: list[float] = []

    def ingress(_name: str, ps: list[Packet]) -> None:
        got.extend(p.data for p in ps)
        stamps.extend(p.ts for p in ps)

    async def gate() -> None:
        return None

    params = {"path": str(cap), "shard": [0, 2]}
    await port.open(ingress, gate)
    await eventually(lambda: port.shard_seen[1] > n_lost + 50, timeout=10, poll=0.001)
    assert port.retune(params, {**params, "adopt": [[1, n_lost]]})
    await port.finished.wait()
    seen_at_end = port.shard_seen[1]
    assert seen_at_end == 2 * len(theirs) and port.shard_seen[0] == 2 * len(mine)
    adopted = port.adopted[1]
    kept_theirs = [d for d in got if shard_of(Packet(d, 0.0), 2) == 1]
    assert [d for d in got if shard_of(Packet(d, 0.0), 2) == 0] == mine * 2
    if speed == 0:
        # As fast as possible: the capture is read again for the lost shard's packets, from where
        # it stopped: nothing of its share is skipped, nothing twice.
        assert kept_theirs == (theirs * 2)[n_lost:] and adopted == 2 * len(theirs) - n_lost
        # ... as late as the takeover: their packet times shifted by one constant (each flow keeps
        # its timing), following the first read's (never more than a batch behind it).
        ref = PcapInPort("in", str(cap), loop=2, batch=16, shard=[1, 2])
        ref_got = await _replay_stamps(ref)
        want = [t for _d, t in ref_got][n_lost:]
        shifted = [t for d, t in zip(got, stamps) if shard_of(Packet(d, 0.0), 2) == 1]
        shifts = {round(a - b, 6) for a, b in zip(shifted, want)}
        assert len(shifts) == 1 and next(iter(shifts)) > 0, sorted(shifts)[:5]
        behind = max(max(stamps[:i]) - stamps[i] for i in range(1, len(stamps)))
        assert behind <= max(stamps[i + 16] - stamps[i] for i in range(len(stamps) - 16))
    else:
        # Timed: from now on (what went by during the outage is lost, as on a live link).
        assert 0 < adopted < 2 * len(theirs) - n_lost - 50
        assert kept_theirs == (theirs * 2)[2 * len(theirs) - adopted:]
    # A table that changes more than ``adopt`` reopens the port.
    assert not port.retune(params, {**params, "speed": 2.0})


# --- workers: SIGSTOP longer than the heartbeat timeout, then SIGCONT -------------------------------
async def _deploy(tmp_path: Path, text: str, hardware: Hardware | None = None, **kw):
    pol = tmp_path / "policy.yaml"
    pol.write_text(text)
    kw.setdefault("workers", 2)
    kw.setdefault("worker_cores", 2)
    mgr = Manager(autoscale=False, shards=False, allow=("heal_nfs",), heartbeat_timeout=HB, **kw)
    await mgr.deploy(mgr.plan(Policy.load(pol), hardware), Traffic())
    sw = mgr.node.cell(mgr.servers["main"].switch).actor  # type: ignore[union-attr]
    return mgr, sw.ports["in"], sw.ports["out"]


def _kinds(mgr: Manager) -> list[str]:
    return [e.kind for e in mgr.events]


def _pids_out(out, since: int) -> set[int]:
    return {p.meta.get("pid") for p in out.received[since:]}


async def test_sigstopped_worker_is_fenced_and_its_instances_replaced(tmp_path: Path) -> None:
    mgr, inp, out = await _deploy(tmp_path, TAG % 2)
    try:
        victim = mgr.plan_.assignment["tag#1"]
        survivor = next(s for s in mgr.servers if s not in (victim, "main"))
        proc = mgr.servers[victim].proc
        survivor_pid = mgr.servers[survivor].proc.pid
        frames = [out_frame(k % 400, k // 400) for k in range(4000)]
        task = asyncio.get_running_loop().create_task(feed(inp, frames, 1000))
        await eventually(lambda: len(out.received) >= 300, what="traffic through both workers")
        os.kill(proc.pid, signal.SIGSTOP)
        # Paused longer than the heartbeat timeout: the manager declares it lost and fences it.
        await eventually(lambda: "fenced" in _kinds(mgr), timeout=3 * HB + 5)
        assert proc.poll() == -signal.SIGKILL  # killed (and reaped) while stopped: it cannot resume
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        await eventually(lambda: "recovered" in _kinds(mgr), timeout=5)
        mark = len(out.received)
        await task
        await mgr.wait_done(timeout=15)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    pin, pout, drops = account(s)
    print(f"\nworker paused: {s['lost']} lost ({s['lost_by']}); events: "
          + "; ".join(f"{e['kind']}: {e['detail']}" for e in s["scaling_events"]))
    assert pin == 4000 and pin == pout + drops + s["lost"]
    assert s["lost"] == sum(s["lost_by"].values())
    # Healed: both instances on the survivor, the paused worker out of the run.
    assert s["servers"] == sorted(["main", survivor]) and s["lost_servers"] == [victim]
    assert {i["server"] for i in s["instances"].values() if i["state"] == "running"} == {survivor}
    assert s["instances_per_nf"] == {"tag": 2}
    assert _pids_out(out, mark) == {survivor_pid}
    # The run tells: a server was lost, and the packets it took with it.
    assert any(victim in f for f in s["failures"])
    assert any(e["kind"] == "node-lost" for e in s["errors"])


async def test_a_killed_workers_nat_starts_from_its_checkpoint(tmp_path: Path) -> None:
    # ``checkpoint: 0.2``: the manager keeps each NAT instance's exported state; the replacement
    # placed after its worker was killed imports it, so the connections it had seen keep their
    # external ports (the replies reach their hosts; a fresh NAT would drop them as unknown).
    from healkit import EXT, SERVER, nat_policy, pkts, reply_frame

    text = nat_policy("ckpt").replace("affinity: flow,", "affinity: flow, checkpoint: 0.2,")
    mgr, inp, out = await _deploy(tmp_path, text)
    try:
        assert mgr.plan_.policy.nfs["nat"].checkpoint == 0.2
        victim = mgr.plan_.assignment["nat#1"]
        n = 300
        inp.inject(pkts([out_frame(k) for k in range(n)]))
        await eventually(lambda: len(out.received) >= n, what="the first packets through the NAT")
        ext = {(p.src_str, p.sport) for p in out.received[:n]}
        mapping = {k: p.sport for k, p in enumerate(out.received[:n])}
        assert len(ext) == n and {a for a, _ in ext} == {EXT}
        ck = mgr.deployment.checkpoints
        await eventually(lambda: ck.get("nat#1") is not None and ck.get("nat#1").flows() >= n,
                         what="a checkpoint holding every connection")
        os.kill(mgr.servers[victim].proc.pid, signal.SIGKILL)
        await eventually(lambda: "recovered" in _kinds(mgr), timeout=3 * HB + 5)
        assert "restored" in _kinds(mgr), [(e.kind, e.detail) for e in mgr.events]
        before = len(out.received)
        # The same connections again, in the reverse order (a fresh NAT would number them anew),
        # and a reply to each external port.
        inp.inject(pkts([out_frame(k, 1) for k in reversed(range(n))]))
        inp.inject(pkts([reply_frame(port) for _, port in sorted(ext)]))
        await eventually(lambda: len(out.received) >= before + 2 * n, what="both through the restored NAT")
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    again = [p for p in out.received[before:] if p.src_str == EXT]
    replies = [p for p in out.received[before:] if p.src_str == SERVER]
    assert len(again) == n and len(replies) == n
    assert {int(p.payload[1:]) for p in again} == {1}  # (the second datagram of each connection)
    assert sorted(p.sport for p in again) == sorted(mapping.values())
    assert sorted((p.dst_str, p.dport) for p in replies) == sorted(
        (f"10.0.{k // 250}.{k % 250 + 1}", 1024 + k) for k in range(n))
    restored = [e for e in s["scaling_events"] if e["kind"] == "restored"]
    print(f"\nrestored: {restored[0]['detail']}; checkpoints {s['checkpoints']}")
    assert s["checkpoints"]["nat"]["restored"] == 1 and s["checkpoints"]["nat"]["rounds"] >= 1


# --- a sharded run (`e2actors run --workers 2`): a worker killed or paused mid-replay ---------------
def _worker_pid(run_pid: int, name: str) -> int | None:
    """The pid of worker process ``name`` started by the run ``run_pid`` (None: not yet / gone)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == run_pid and b"agent" in args and name.encode() in args:
            return int(d)
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tcpdump_count(path: Path) -> int:
    r = subprocess.run([need_tool("tcpdump"), "-n", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return len(r.stdout.splitlines())


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSTOP"])
def test_a_lost_worker_s_shard_is_taken_over_and_every_packet_accounted(tmp_path: Path, sig: str) -> None:
    cap = tmp_path / "trace.pcap"
    write_pcap(cap, flows=3000, seed=3)
    n_cap = _tcpdump_count(cap)
    loops = 6
    (tmp_path / "policy.yaml").write_text(SHARD_CHAIN)
    out = tmp_path / "out.pcap"
    run = subprocess.Popen([sys.executable, "-m", "e2actors", "run", "policy.yaml", "--traffic", str(cap),
                            "--loop", str(loops), "--workers", "2", "--worker-cores", "2", "--no-autoscale",
                            "--heartbeat-timeout", str(HB), "--out-pcap", str(out), "--json"],
                           cwd=tmp_path, env=env_with_tests(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        w2 = eventually_blocking(lambda: _worker_pid(run.pid, "w2"), timeout=20, what="worker w2 started")
        part = Path(f"{out}.w2")
        # Mid-replay: w2 has written part of its share of the output.
        eventually_blocking(lambda: part.exists() and part.stat().st_size > 256 * 1024, timeout=20,
                            what="traffic through w2", poll=0.01)
        os.kill(w2, getattr(signal, sig))
        if sig == "SIGSTOP":
            # Paused longer than the heartbeat timeout: the run fences it (kills its own child).
            eventually_blocking(lambda: not _alive(w2), timeout=3 * HB + 10, what="w2 fenced")
            try:
                os.kill(w2, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stdout, stderr = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, stderr[-3000:]
    s = json.loads(stdout)
    pin, pout, drops = account(s)
    kinds = [e["kind"] for e in s["scaling_events"]]
    print(f"\n{sig} of w2: in {pin}, out {pout}, drops {drops}, lost {s['lost']} {s['lost_by']}; "
          f"output file {_tcpdump_count(out)}; " + "; ".join(f"{e['kind']}: {e['detail']}"
                                                           for e in s["scaling_events"] if e["kind"] != "deploy"))
    # Every packet of the input is in the account, whoever read it: w2 up to its last counters,
    # w1 its own share and, after the takeover, w2's.
    assert pin == n_cap * loops
    assert pin == pout + drops + s["lost"] and s["lost"] == sum(s["lost_by"].values())
    assert s["drops"]["fw: deny rule 1"] > 0  # (the policy's own drops are counted as such)
    assert ["node-lost", "fenced", "takeover", "recovered"] == [k for k in kinds if k in
                                                                 ("node-lost", "fenced", "takeover", "recovered")]
    assert s["servers"] == ["w1"] and s["lost_servers"] == ["w2"]
    assert s["instances_per_nf"] == {"fw": 1, "parental": 1}
    assert {i["server"] for i in s["instances"].values() if i["state"] == "running"} == {"w1"}
    assert {i["state"] for n, i in s["instances"].items() if i["server"] == "w2"} <= {"lost"}
    # As fast as possible: w1 read w2's share again from w2's last counters: none of it unread.
    assert not any("never read" in k for k in s["lost_by"])
    assert any("w2" in f for f in s["failures"]) and "e2actors run: failed: server w2 lost" in stderr
    # The merged output holds what both sent (w2's part as far as it was written).
    assert _tcpdump_count(out) >= pout


# --- agents: SIGSTOP longer than the heartbeat timeout then SIGCONT; SIGKILL -------------------------
@pytest.fixture
def two_agents(tmp_path: Path):
    sf = tmp_path / "secret"
    sf.write_bytes(SECRET)
    agents = [start_agent(tmp_path, n, "tcp://127.0.0.1:0", sf, cores=2, metrics=True,
                          extra=["--allow", "heal_nfs", "--heartbeat-timeout", str(HB)]) for n in ("a1", "a2")]
    yield agents
    for a in agents:
        try:
            os.kill(a.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        a.kill()


def _agents_hardware(agents: list[Agent]) -> Hardware:
    servers = [Server("main", 0)] + [Server(a.name, 2, address=a.address) for a in agents]
    return Hardware(servers, {"in": PortPlace("in", "main"), "out": PortPlace("out", "main")})


async def _actors(mgr: Manager, agent: Agent) -> tuple[str, ...]:
    info = await mgr.node.ask(mgr.node.system_ref(agent.address), GetNodeInfo(), timeout=5)
    return info.actors


async def test_sigstopped_agent_is_fenced_then_readmitted_as_fresh_capacity(tmp_path: Path, two_agents) -> None:
    a1, a2 = two_agents
    mgr, inp, out = await _deploy(tmp_path, TAG % 2, _agents_hardware(two_agents), workers=0, secret=SECRET)
    try:
        if mgr.plan_.assignment["tag#1"] != "a2":
            await mgr.move("tag#1", "a2")  # (an instance on the agent to pause)
        if mgr.plan_.assignment["tag#2"] != "a1":
            await mgr.move("tag#2", "a1")
        on_a2 = set(await _actors(mgr, a2))
        assert any(n.startswith("tag#1") for n in on_a2)
        frames = [out_frame(k % 400, k // 400) for k in range(4000)]
        task = asyncio.get_running_loop().create_task(feed(inp, frames, 1000))
        await eventually(lambda: {a2.proc.pid, a1.proc.pid} <= _pids_out(out, 0), what="traffic through both agents")
        os.kill(a2.proc.pid, signal.SIGSTOP)
        await eventually(lambda: "recovered" in _kinds(mgr), timeout=3 * HB + 5, what="a2 lost, tag#1 re-placed")
        mark = len(out.received)
        assert mgr.plan_.assignment["tag#1"] == "a1"
        os.kill(a2.proc.pid, signal.SIGCONT)
        # Back: whatever this deployment ran there is stopped; a2 comes back as empty capacity.
        await eventually(lambda: "readmitted" in _kinds(mgr), timeout=3 * HB + 10, what="a2 re-admitted")
        now_on_a2 = set(await _actors(mgr, a2))
        assert not (now_on_a2 & on_a2 - {"$system"}), now_on_a2  # nothing of before runs there
        assert {n for n in now_on_a2 if n != "$system"} == {mgr.servers["a2"].switch.name}
        await task
        # No instance ran twice: after the loss, packets came through a1's instances only.
        assert _pids_out(out, mark) == {a1.proc.pid}
        # Fresh capacity: a1 is full (2 cores, 2 instances), the third instance lands on a2.
        await mgr.scale("tag", 3)
        assert mgr.plan_.assignment["tag#3"] == "a2"
        mark = len(out.received)
        await feed(inp, [out_frame(k % 400, 20 + k // 400) for k in range(1200)], 1000)
        await eventually(lambda: a2.proc.pid in _pids_out(out, mark), what="traffic through a2 again")
        await mgr.wait_done(timeout=15)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    fenced = [e["detail"] for e in s["scaling_events"] if e["kind"] == "fenced"]
    print(f"\nagent paused: lost {s['lost']} {s['lost_by']}; fenced: {fenced}")
    pin, pout, drops = account(s)
    assert pin == 5200 and pin == pout + drops + s["lost"]
    assert s["servers"] == ["a1", "a2", "main"] and s["lost_servers"] == ["a2"]
    assert any(f.startswith("server a2 lost") and "re-admitted" in f for f in s["failures"])
    # The agent fenced itself when it ran again (or the manager stopped what still ran): it says so.
    assert "fenced_actors" in a2.metrics() or "stopped what still ran there" in fenced[0]


async def test_sigkilled_agent_s_instances_run_on_the_other(tmp_path: Path, two_agents) -> None:
    a1, a2 = two_agents
    mgr, inp, out = await _deploy(tmp_path, TAG % 2, _agents_hardware(two_agents), workers=0, secret=SECRET)
    try:
        for inst, server in (("tag#1", "a2"), ("tag#2", "a1")):
            if mgr.plan_.assignment[inst] != server:
                await mgr.move(inst, server)
        frames = [out_frame(k % 400, k // 400) for k in range(3000)]
        task = asyncio.get_running_loop().create_task(feed(inp, frames, 1000))
        await eventually(lambda: a2.proc.pid in _pids_out(out, 0), what="traffic through a2")
        a2.kill()
        await eventually(lambda: "recovered" in _kinds(mgr), timeout=3 * HB + 5)
        mark = len(out.received)
        await task
        await mgr.wait_done(timeout=15)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    pin, pout, drops = account(s)
    print(f"\nagent killed: lost {s['lost']} {s['lost_by']}")
    assert pin == 3000 and pin == pout + drops + s["lost"] and s["lost"] > 0
    assert s["servers"] == ["a1", "main"] and s["instances_per_nf"] == {"tag": 2}
    assert _pids_out(out, mark) == {a1.proc.pid}
    assert "readmitted" not in [e["kind"] for e in s["scaling_events"]]
    assert any(f.startswith("server a2 lost") and "out of the run" in f for f in s["failures"])


async def test_an_agent_that_did_not_fence_itself_is_stopped_by_the_manager_when_it_answers(tmp_path: Path) -> None:
    # An agent whose own heartbeat timeout is far longer than the pause neither notices that it
    # was paused nor that it lost the manager: when it answers again, the manager stops what still
    # runs there for this deployment (and ignores what it still sends meanwhile).
    sf = tmp_path / "secret"
    sf.write_bytes(SECRET)
    agents = [start_agent(tmp_path, n, "tcp://127.0.0.1:0", sf, cores=2, metrics=False,
                          extra=["--allow", "heal_nfs", "--heartbeat-timeout", "60"]) for n in ("a1", "a2")]
    a1, a2 = agents
    try:
        mgr, inp, out = await _deploy(tmp_path, TAG % 2, _agents_hardware(agents), workers=0, secret=SECRET)
        try:
            for inst, server in (("tag#1", "a2"), ("tag#2", "a1")):
                if mgr.plan_.assignment[inst] != server:
                    await mgr.move(inst, server)
            stale = {n for n in await _actors(mgr, a2) if n != "$system"}
            frames = [out_frame(k % 400, k // 400) for k in range(3000)]
            task = asyncio.get_running_loop().create_task(feed(inp, frames, 1000))
            await eventually(lambda: a2.proc.pid in _pids_out(out, 0), what="traffic through a2")
            os.kill(a2.proc.pid, signal.SIGSTOP)
            await eventually(lambda: "recovered" in _kinds(mgr), timeout=3 * HB + 5)
            mark = len(out.received)
            os.kill(a2.proc.pid, signal.SIGCONT)
            await eventually(lambda: "readmitted" in _kinds(mgr), timeout=3 * HB + 10)
            fenced = [e.detail for e in mgr.events if e.kind == "fenced"]
            assert "stopped what still ran there" in fenced[0], fenced
            assert not stale & set(await _actors(mgr, a2))
            await task
            await mgr.wait_done(timeout=15)
            s = mgr.summary(await mgr.stats())
            assert _pids_out(out, mark) == {a1.proc.pid}  # (nothing of a2's old instance came out)
            print(f"\nfenced by the manager: {fenced[0]}; frames ignored meanwhile: "
                  f"{mgr.node.counters['quarantined_frames']}; lost {s['lost']} {s['lost_by']}")
        finally:
            await mgr.stop()
    finally:
        for a in agents:
            try:
                os.kill(a.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            a.kill()
    pin, pout, drops = account(s)
    assert pin == 3000 and pin == pout + drops + s["lost"]
    assert s["servers"] == ["a1", "a2", "main"]
