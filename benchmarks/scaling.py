"""Scaling benchmark: a CPU-bound NF across worker processes, in one run.

(1) Throughput of the CPU-bound NF with 1 worker and with 2 workers (one instance per worker,
    no autoscaling), over the same generated trace replayed as fast as the deployment takes it;
    ``two_vs_one_workers`` is their ratio (this machine has 2 cores).
(2) A scale-out under load with migration avoidance: 2 workers, 1 instance to start, overload;
    ``scale_out_seconds`` from the first overloaded load report to the new instance taking its
    first packet; ``affinity_violations`` counts flows that reached two instances;
    ``lost_packets`` counts packets neither delivered nor dropped with a counted reason.

    python benchmarks/scaling.py

Last line: one JSON object. Targets: two_vs_one_workers >= 1.6, affinity_violations 0,
lost_packets 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # scaling_nfs: the CPU-bound pipelet

from e2actors import run  # noqa: E402
from e2actors.manager.manager import Manager, Traffic  # noqa: E402
from e2actors.manager.policy import Policy  # noqa: E402
from e2actors.manager.scaling import ScalingPolicy  # noqa: E402
from e2actors.packet.packet import Packet  # noqa: E402
from e2actors.packet.traffic import frames, write_pcap  # noqa: E402

COST_US = 400  # per packet: the NF dominates, as in E2's CPU-bound scaling experiment

POLICY = """
name: burn
nfs:
  burn: {{class: "scaling_nfs:Burner", affinity: flow, cost_pps: 2000, min: {n}, max: {mx}, config: {{cost_us: {cost}}}}}
classes:
  - {{name: all, filter: "", load_pps: {load}}}
edges:
  - {{from: in, to: burn}}
  - {{from: burn, to: out}}
"""


def policy_file(d: str, n: int, mx: int, load: int) -> str:
    p = os.path.join(d, f"burn-{n}-{mx}.yaml")
    with open(p, "w") as f:
        f.write(POLICY.format(n=n, mx=mx, cost=COST_US, load=load))
    return p


async def throughput(d: str, workers: int, pcap: str) -> float:
    mgr = Manager(workers=workers, worker_cores=1, autoscale=False, allow=("scaling_nfs",))
    try:
        plan = mgr.plan(Policy.load(policy_file(d, workers, workers, 1000 * workers)))
        await mgr.deploy(plan, Traffic(pcap=pcap))
        t0 = time.monotonic()
        await mgr.wait_done(timeout=120, poll=0.05)
        dt = time.monotonic() - t0
        s = mgr.summary(await mgr.stats())
        return s["packets_out"] / dt
    finally:
        await mgr.stop()


async def scale_out(d: str) -> dict:
    # (the ports in this process, the instances on the workers: the scale-out moves new flows
    # to the other worker's new instance)
    mgr = Manager(workers=2, worker_cores=1, allow=("scaling_nfs",), report_interval=0.1, shards=False,
                  scaling=ScalingPolicy(high=0.7, low=0.05, sustain=0.3, cooldown=1.0))
    first_over: list[float] = []
    orig = mgr._on_report

    def on_report(r):  # note when the NF first reports overload
        if r.busy > 0.7 and not first_over:
            first_over.append(time.monotonic())
        orig(r)

    mgr._on_report = on_report  # type: ignore[method-assign]
    try:
        plan = mgr.plan(Policy.load(policy_file(d, 1, 2, 1000)))
        await mgr.deploy(plan, Traffic())
        sw = mgr.node.cell(mgr.servers["main"].switch).actor  # type: ignore[union-attr]
        inp, out = sw.ports["in"], sw.ports["out"]
        trace = [dd for _t, dd in frames(3000, seed=7, profile="web")]
        loop = asyncio.get_running_loop()
        t_new = None
        sent = 0
        t0 = loop.time()
        rate = 6000  # packets/s: about 2.4 cores' worth of the NF
        while loop.time() - t0 < 8 and sent < len(trace):
            inp.inject([Packet(x, time.time(), "in") for x in trace[sent:sent + 32]])
            sent += 32
            if t_new is None and len(plan_instances(mgr)) > 1:
                st = await mgr.stats()
                new = [i for i in st["instances"] if i != "burn#1"]
                if new and st["instances"][new[0]].get("packets_in", 0) > 0:
                    t_new = time.monotonic()
            await asyncio.sleep(max(0.0, sent / rate - (loop.time() - t0)))
        await mgr.wait_done(timeout=60)
        s = mgr.summary(await mgr.stats())
        seen = defaultdict(set)
        for p in out.received:
            seen[p.flow_key].add(p.meta["inst"])
        return {"scale_out_seconds": (t_new - first_over[0]) if t_new and first_over else None,
                "affinity_violations": sum(1 for v in seen.values() if len(v) > 1),
                "lost_packets": s["packets_in"] - s["packets_out"] - sum(s["drops"].values()),
                "scale_events": [e["kind"] for e in s["scaling_events"]],
                "flows": len(seen), "overload_drops": sum(s["drops"].values())}
    finally:
        await mgr.stop()


def plan_instances(mgr: Manager) -> list[str]:
    return mgr.plan_.instances_of("burn") if mgr.plan_ else []


async def main() -> dict:
    d = tempfile.mkdtemp(prefix="e2scale-")
    pcap = os.path.join(d, "trace.pcap")
    write_pcap(pcap, flows=600, seed=3, profile="web")
    one = await throughput(d, 1, pcap)
    two = await throughput(d, 2, pcap)
    out = {"one_worker_pps": round(one), "two_workers_pps": round(two), "two_vs_one_workers": round(two / one, 2)}
    out.update(await scale_out(d))
    return out


if __name__ == "__main__":
    res = run(main())
    print(f"CPU-bound NF ({COST_US} us/packet): 1 worker {res['one_worker_pps']:,} pps, 2 workers "
          f"{res['two_workers_pps']:,} pps: {res['two_vs_one_workers']}x (target 1.6)")
    print(f"scale-out under load: {res['scale_out_seconds'] and round(res['scale_out_seconds'], 2)} s from overload "
          f"to the new instance taking packets; {res['affinity_violations']} affinity violations over "
          f"{res['flows']} flows; {res['lost_packets']} packets lost outside counted drops "
          f"({res['overload_drops']} counted overload drops); events {res['scale_events']}")
    print(json.dumps(res))
