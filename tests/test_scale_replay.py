"""The dataplane at scale: a capture replayed as fast as it goes is lossless and the same
everywhere — in one process, with two worker processes (one switch each, the input sharded by
flow) and across two agents (every packet crosses between them) — and flows never change
instance when a sharded group scales out under load.

Real processes throughout (``e2actors run``, ``e2actors agent``), a generated trace of
thousands of flows, and the output pcaps compared flow by flow.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import Agent, env_with_tests, start_agent
from conftest import SECRET, TESTS
from e2actors.manager.manager import Manager, Traffic
from e2actors.manager.policy import Policy
from e2actors.manager.scaling import ScalingPolicy
from e2actors.packet.pcap import read_packets
from e2actors.packet.traffic import write_pcap

ROOT = TESTS.parent
POLICY = ROOT / "examples" / "seed" / "policy.yaml"
POLICY_DROPS = {"switch: malformed", "switch: dropped by route logger.out->end",
                "parental: blocked host youtube.com", "parental: blocked host www.youtube.com",
                "parental: blocked host m.youtube.com"}


def run_cli(args: list[str], cwd: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", *args, "--json"], cwd=cwd, env=env_with_tests(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def flows(pcap: Path) -> dict:
    d: dict = collections.defaultdict(list)
    for p in read_packets(pcap):
        d[p.flow_key].append(p.data)
    return d


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("trace") / "trace.pcap"
    write_pcap(p, flows=2500, seed=5)
    return p


def check_lossless(s: dict, n: int) -> None:
    assert s["completed"]
    assert s["packets_in"] == n
    assert s["lost"] == 0 and s["congestion_drops"] == 0, s["drops"]
    assert set(s["drops"]) <= POLICY_DROPS, s["drops"]
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values())


def same_everywhere_policy(tmp: Path) -> Path:
    """The running example with a shaper that never binds. A shaper's decisions depend on the
    order packets reach it, and when its upstream instances run on two servers, packets of
    different flows reach it in an order that depends on the machine's timing (each flow's own
    order is kept): the comparison is about the dataplane, not about that."""
    pol = tmp / "policy.yaml"
    pol.write_text(POLICY.read_text().replace("rate: 100Mbit, burst: 1Mbit", "rate: 100Gbit, burst: 1Gbit"))
    shutil.copytree(POLICY.parent / "rules", tmp / "rules")
    return pol


def test_replay_is_lossless_and_the_same_in_one_process_two_workers_and_two_agents(trace: Path, tmp_path: Path) -> None:
    n = sum(1 for _ in read_packets(trace))
    policy = same_everywhere_policy(tmp_path)
    # (no autoscaling: a scale-out moves buckets of the shaper, whose affinity is none, at a moment
    # that depends on the machine's load)
    one = run_cli([str(policy), "--traffic", str(trace), "--out-pcap", str(tmp_path / "one.pcap"), "--no-autoscale"],
                  tmp_path)
    check_lossless(one, n)
    two = run_cli([str(policy), "--traffic", str(trace), "--out-pcap", str(tmp_path / "two.pcap"), "--workers", "2",
                   "--no-autoscale"], tmp_path)
    check_lossless(two, n)
    assert two["servers"] == ["w1", "w2"] and two["inter_server_packets"] == 0
    # Two agents, the ports on s1 and the instances spread over both: packets cross both ways.
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    agents: list[Agent] = []
    try:
        for name in ("s1", "s2"):
            agents.append(start_agent(tmp_path, name, "tcp://127.0.0.1:0", secret, cores=4))
        hw = tmp_path / "hw.yaml"
        hw.write_text("servers:\n" + "".join(f"  - {{name: {a.name}, cores: 4, address: \"{a.address}\"}}\n"
                                             for a in agents) + "ports:\n  in: s1\n  out: s1\n")
        # (the out port is s1's: its file is written in s1's data directory, relative paths from it)
        ag = run_cli([str(policy), "--traffic", str(trace), "--out-pcap", "agents.pcap",
                      "--hardware", str(hw), "--secret-file", str(secret), "--no-autoscale"], tmp_path)
    finally:
        for a in agents:
            a.stop()
    check_lossless(ag, n)
    assert ag["inter_server_packets"] > 0 and {i["server"] for i in ag["instances"].values()} == {"s1", "s2"}
    print(f"\none process: {one['packets_in'] / one['active_seconds']:,.0f} pps; two workers: "
          f"{two['packets_in'] / two['active_seconds']:,.0f} pps; two agents: "
          f"{ag['packets_in'] / ag['active_seconds']:,.0f} pps ({ag['inter_server_packets']:,} packets between them)")
    # The same decisions everywhere: every flow's packets, in order, as the one-process run's.
    ref = flows(tmp_path / "one.pcap")
    assert sum(len(v) for v in ref.values()) == one["packets_out"]
    assert flows(tmp_path / "two.pcap") == ref
    assert flows(tmp_path / "data-s1" / "agents.pcap") == ref
    assert one["edges"] == two["edges"] == ag["edges"]


def test_an_agent_runs_one_switch_per_core(trace: Path, tmp_path: Path) -> None:
    """``switches: 2`` on a cluster server: its agent starts a second switch process next to it,
    each with a shard of the flows; the outputs' parts are merged on that machine."""
    n = sum(1 for _ in read_packets(trace))
    policy = same_everywhere_policy(tmp_path)
    one = run_cli([str(policy), "--traffic", str(trace), "--out-pcap", str(tmp_path / "one.pcap"), "--no-autoscale"],
                  tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    agent = start_agent(tmp_path, "s1", "tcp://127.0.0.1:0", secret, cores=8)
    try:
        hw = tmp_path / "hw.yaml"
        hw.write_text(f'servers:\n  - {{name: s1, cores: 8, address: "{agent.address}", switches: 2}}\n'
                      "ports:\n  in: s1\n  out: s1\n")
        s = run_cli([str(policy), "--traffic", str(trace), "--out-pcap", "sharded.pcap", "--hardware", str(hw),
                     "--secret-file", str(secret), "--no-autoscale"], tmp_path)
    finally:
        agent.stop()
    check_lossless(s, n)
    assert s["servers"] == ["s1", "s1.2"] and s["inter_server_packets"] == 0
    assert {i["server"] for i in s["instances"].values()} == {"s1", "s1.2"}
    assert s["packets_out"] == one["packets_out"]
    merged = tmp_path / "data-s1" / "sharded.pcap"
    assert merged.exists() and not list((tmp_path / "data-s1").glob("sharded.pcap.s1*"))
    assert flows(merged) == flows(tmp_path / "one.pcap")


SCALE_POLICY = """
name: burn-shards
nfs:
  burn: {class: "scaling_nfs:Burner", affinity: flow, cost_pps: 2500, min: 1, max: 4, config: {cost_us: 300}}
  logger: {class: e2actors.nf.builtin.logger:Logger, cost_pps: 200000, config: {pcap: "{out}/log.pcap"}}
classes:
  - {name: all, filter: "", load_pps: 3000}
edges:
  - {from: in, to: burn}
  - {from: burn, to: logger}
  - {from: logger, to: out}
"""


async def test_sharded_scale_out_keeps_every_flow_on_one_instance(tmp_path: Path) -> None:
    pcap = tmp_path / "web.pcap"
    write_pcap(pcap, flows=3000, seed=21, profile="web")
    pol = tmp_path / "burn.yaml"
    pol.write_text(SCALE_POLICY.replace("{out}", str(tmp_path)))
    mgr = Manager(workers=2, worker_cores=2, allow=("scaling_nfs",), report_interval=0.1,
                  scaling=ScalingPolicy(high=0.6, low=0.01, sustain=0.3, cooldown=1.0))
    try:
        plan = mgr.plan(Policy.load(pol))
        assert {plan.assignment[i] for i in plan.instances_of("burn")} == {"w1", "w2"}
        # A timed replay about twice what the two first instances take: the group must scale out.
        await mgr.deploy(plan, Traffic(pcap=str(pcap), speed=2.0, out=str(tmp_path / "out.pcap")))
        assert await mgr.wait_done(timeout=120)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    outs = [e for e in s["scaling_events"] if e["nf"] == "burn" and e["kind"] == "scale-out"]
    assert outs, s["scaling_events"]
    assert s["lost"] == 0 and s["congestion_drops"] == 0, s["drops"]
    # Which instance handled each flow, from the metadata the burner tagged each packet with.
    seen: dict = collections.defaultdict(set)
    for line in open(tmp_path / "log.jsonl"):
        r = json.loads(line)
        if "sport" in r:
            a, b = sorted([(r["src"], r["sport"]), (r["dst"], r["dport"])])
            seen[(r["proto"], a, b)].add(r["meta"]["inst"])
    used = collections.Counter(i for v in seen.values() for i in v)
    print(f"\nflows per instance: {dict(used)}; scale-outs: {[e['detail'] for e in outs]}")
    assert len(seen) > 1000
    assert all(len(v) == 1 for v in seen.values()), [k for k, v in seen.items() if len(v) > 1][:5]
    assert len(used) >= 3  # the new instance took new flows
    await asyncio.sleep(0)


def test_traces_follow_packets_through_each_shard(tmp_path: Path) -> None:
    # ``--trace N`` with two workers: traces come from both shards, each a packet's whole path on
    # the switch that read it (in, the routes and instances it took, out or a drop).
    traffic = ROOT / "examples" / "seed" / "traffic.pcap"
    s = run_cli([str(POLICY), "--traffic", str(traffic), "--workers", "2", "--trace", "50"], tmp_path)
    traces = s["traces"]
    assert traces, s.keys()
    shards = set()
    for t in traces:
        first, last = t["hops"][0][1], t["hops"][-1][1]
        assert first.startswith("in w") and first.endswith(":in"), t
        shard = first.split()[1].split(":")[0]
        shards.add(shard)
        assert any(h[1].startswith("nf ids#") for h in t["hops"]), t          # every packet meets the IDS
        assert last == f"out {shard}:out" or "drop" in last or "end" in last, t
        stamps = [h[0] for h in t["hops"]]
        assert stamps == sorted(stamps), t
    assert shards == {"w1", "w2"}
