"""Dynamic scaling across worker processes: a CPU-bound NF under rising, then falling load with
thousands of flows. The group scales out onto the other worker, no flow ever reaches two
instances, every packet is accounted for; then it scales in by draining."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

from e2actors.manager.manager import Manager, Traffic
from e2actors.manager.policy import Policy
from e2actors.manager.scaling import ScalingPolicy
from e2actors.packet.packet import Packet
from e2actors.packet.traffic import frames
from nfkit import chain_policy

POLICY = chain_policy("burn", 'class: "scaling_nfs:Burner", affinity: flow, cost_pps: 2500, min: 1, max: 2, '
                      "config: {cost_us: 400}", load_pps=800, name="burn")


async def feed(port, trace: list[bytes], start: int, rate: float, seconds: float, timeline: list, out) -> int:
    """Inject packets at ``rate`` per second for ``seconds``; returns the next trace index."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    i = start
    chunk = 32
    while loop.time() - t0 < seconds and i < len(trace):
        port.inject([Packet(d, time.time(), "in") for d in trace[i:i + chunk]])
        i += chunk
        timeline.append((loop.time(), len(out.received)))
        await asyncio.sleep(max(0.0, (i - start) / rate - (loop.time() - t0)))
    return i


async def test_scale_out_and_in_under_load(tmp_path: Path) -> None:
    pol = tmp_path / "burn.yaml"
    pol.write_text(POLICY)
    mgr = Manager(workers=2, worker_cores=1, allow=("scaling_nfs",), report_interval=0.2, shards=False,
                  scaling=ScalingPolicy(high=0.6, low=0.15, sustain=0.6, cooldown=1.5))
    try:
        plan = mgr.plan(Policy.load(pol))
        await mgr.deploy(plan, Traffic())
        assert mgr.instance_counts() == {"burn": 1}
        sw = mgr.node.cell(mgr.servers["main"].switch).actor  # type: ignore[union-attr]
        inp, out = sw.ports["in"], sw.ports["out"]
        trace = [d for _t, d in frames(4000, seed=21, profile="web")]  # ~44k packets: enough for every phase
        timeline: list = []
        i = await feed(inp, trace, 0, 800, 1.5, timeline, out)              # light: ~30% busy
        i = await feed(inp, trace, i, 4_000, 7.0, timeline, out)            # overload: scale out
        t_out = next((mgr.t0 + e.t for e in mgr.events if e.kind == "scale-out"), None)
        assert t_out is not None, [e.as_dict() for e in mgr.events]
        for _ in range(6):                                                  # falls: scale in
            i = await feed(inp, trace, i, 200, 2.0, timeline, out)
            if any(e.kind == "scale-in" for e in mgr.events):
                break
        await mgr.wait_done(timeout=20)
        st = await mgr.stats()
        s = mgr.summary(st)
    finally:
        await mgr.stop()
    kinds = [e["kind"] for e in s["scaling_events"]]
    assert "scale-out" in kinds and "scale-in" in kinds, s["scaling_events"]
    # Every packet left or was dropped with a counted reason.
    assert s["packets_in"] == i
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values()), s["drops"]
    # No flow ever reached two instances.
    seen: dict = defaultdict(set)
    for p in out.received:
        seen[p.flow_key].add(p.meta["inst"])
    assert all(len(v) == 1 for v in seen.values())
    per_inst = defaultdict(int)
    for v in seen.values():
        per_inst[next(iter(v))] += 1
    print("flows per instance:", dict(per_inst), "events:", s["scaling_events"])
    assert len(per_inst) == 2 and min(per_inst.values()) > 0
    assert {i["server"] for i in s["instances"].values()} == {"w1", "w2"}
    # Throughput: output rate in the second after the new instance took over beats the second before.
    def rate(a: float, b: float) -> float:
        pts = [(t, n) for t, n in timeline if a <= t <= b]
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]) if len(pts) > 1 else 0.0

    # Throughput is a timing, and tests never assert on timings (benchmarks/scaling.py measures
    # 2 workers against 1): print the output rates, and assert what makes it higher — the new
    # instance on the other worker took packets while the overload lasted.
    before, after = rate(t_out - 1.0, t_out), rate(t_out + 2.0, t_out + 3.0)
    print(f"output rate before scale-out {before:,.0f} pps, after {after:,.0f} pps")
    new = [n for n in s["instances"] if n != "burn#1"]
    assert new and s["instances"][new[0]]["in"] > 0 and s["instances"][new[0]]["server"] != \
        s["instances"]["burn#1"]["server"]
