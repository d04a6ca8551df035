"""Failures: an NF that crashes (restarted; for good: taken out of the path) and a worker process
killed with SIGKILL (its instances re-placed on the survivors, switches reprogrammed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from conftest import eventually
from healkit import account, deploy, feed, out_frame, pkts

from e2actors.packet.build import ether, ipv4, udp

CRASH = """
name: crashy
nfs:
  crash: {class: "heal_nfs:Crasher", min: %d, max: %d}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: crash}
  - {from: crash, to: out}
"""


def boom() -> bytes:
    return ether(ipv4("10.9.9.9", "203.0.113.9", 17, udp("10.9.9.9", "203.0.113.9", 999, 53, payload=b"boom")))


async def nf_errors(mgr) -> int:
    """Packets the switches counted as lost in crashed batches of the crash NF."""
    st = await mgr.stats()
    return sum(s["drops"].get("nf error in crash", 0) for s in st["switches"].values() if "drops" in s)


async def crash(mgr, inp, times: int) -> None:
    """One crashing batch at a time, each counted before the next goes (a crash, a restart)."""
    for k in range(times):
        inp.inject(pkts([boom()]))

        async def counted(k: int = k) -> bool:
            return await nf_errors(mgr) >= k + 1

        await eventually(counted)


async def test_crash_once_is_restarted_and_its_batch_counted(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, CRASH % (1, 1), allow=("heal_nfs",))
    try:
        inp.inject(pkts([out_frame(k) for k in range(100)]))
        await eventually(lambda: len(out.received) >= 100)
        inp.inject(pkts([out_frame(k) for k in range(5)] + [boom()]))  # one batch of 6: lost

        async def lost() -> bool:
            return await nf_errors(mgr) == 6

        await eventually(lost)
        inp.inject(pkts([out_frame(k) for k in range(100)]))
        await eventually(lambda: len(out.received) >= 200)
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    assert s["drops"] == {"switch: nf error in crash": 6}, s["drops"]
    assert account(s) == (206, 200, 6)
    # Restarted per its policy: not a failure of the run, but the error is in the account, with
    # where in the pipelet's code it was raised.
    assert not s["failures"]
    assert [(e["type"], e["message"], e["where"].rsplit("/", 1)[1], e["count"]) for e in s["errors"]] == \
        [("RuntimeError", "boom", "heal_nfs.py:31", 1)]


async def test_crashing_for_good_is_taken_out_of_the_path(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, CRASH % (1, 1), allow=("heal_nfs",))
    try:
        await crash(mgr, inp, 4)  # the restart policy allows 3 restarts in 10 s: the 4th crash stops it
        await eventually(lambda: any(e.kind == "failed" for e in mgr.events), timeout=5)
        assert mgr.states["crash#1"] == "failed"
        inp.inject(pkts([out_frame(k) for k in range(50)]))  # the run goes on; crash's packets are dropped
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    print(s["drops"], s["errors"])
    assert s["drops"]["switch: nf crash failed"] == 50
    assert s["drops"]["switch: nf error in crash"] == 4
    pin, pout, drops = account(s)
    assert pin == 54 and pout == 0 and pin == pout + drops
    assert s["errors"][0]["kind"] == "failed" and "crash#1" in s["errors"][0]["detail"]


async def test_crashing_instance_leaves_its_group_to_the_others(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, CRASH % (2, 2), allow=("heal_nfs",))
    try:
        await crash(mgr, inp, 4)
        await eventually(lambda: any(e.kind == "failed" for e in mgr.events), timeout=5)
        assert len(mgr.plan_.instances_of("crash")) == 1
        inp.inject(pkts([out_frame(k) for k in range(200)]))
        await eventually(lambda: len(out.received) >= 200)
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    assert account(s) == (204, 200, 4), s["drops"]


KILL = """
name: killme
nfs:
  tag: {class: "heal_nfs:Tagger", min: 2, max: 2}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: tag}
  - {from: tag, to: out}
"""


async def test_sigkilled_worker_is_replaced(tmp_path: Path) -> None:
    hb = 1.0
    mgr, inp, out = await deploy(tmp_path, KILL, allow=("heal_nfs",), heartbeat_timeout=hb)
    try:
        victim = mgr.plan_.assignment["tag#1"]
        for i in mgr.plan_.instances_of("tag"):  # both instances on the victim
            if mgr.plan_.assignment[i] != victim:
                await mgr.move(i, victim)
        pid = mgr.servers[victim].proc.pid
        frames = [out_frame(k % 500, k // 500) for k in range(6000)]
        arrivals: list[tuple[float, int]] = []
        orig_send = out.send

        def send(ps):
            now = time.monotonic()
            arrivals.extend((now, p.meta.get("pid", 0)) for p in ps)
            orig_send(ps)

        out.send = send
        task = asyncio.get_running_loop().create_task(feed(inp, frames, 1000))
        await eventually(lambda: len(arrivals) >= 500)  # traffic flows through the victim
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await task
        await mgr.wait_done(timeout=15)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    back = next(t for t, p in arrivals if t > t_kill and p not in (0, pid))
    recovery = back - t_kill
    pin, pout, drops = account(s)
    lost = pin - pout
    print(f"node loss: traffic flowing again {recovery:.2f} s after the kill (heartbeat timeout {hb} s); "
          f"{lost} packets lost ({drops} of them counted: {s['drops']})")
    assert victim not in s["servers"]
    assert all(i["server"] != victim for n, i in s["instances"].items() if "~" not in n or not i.get("retired"))
    kinds = [e["kind"] for e in s["scaling_events"]]
    assert "node-lost" in kinds and "recovered" in kinds
    assert recovery < 3 * hb + 1.0
    assert pin == 6000 and 0 < pout and lost < 6000 * 0.6
    assert all(p.meta.get("pid") not in (None, pid) for p in out.received[-100:])


async def test_scaling_in_by_several_retires_exactly_the_drained_ones(tmp_path: Path) -> None:
    # 4 -> 1 at once: the three victims drain and leave one by one, in whatever order their flows
    # end; each leaves the plan itself (not "the highest-numbered one"), and its counters stay in
    # the summary.
    from nfkit import chain_policy

    text = chain_policy("cnt", "class: e2actors.nf.builtin.Counter, affinity: flow, min: 4", name="scalein")
    mgr, inp, out = await deploy(tmp_path, text, workers=0)
    try:
        assert mgr.plan_.instances_of("cnt") == ["cnt#1", "cnt#2", "cnt#3", "cnt#4"]
        n = 400
        inp.inject(pkts([out_frame(k) for k in range(n)]))
        await eventually(lambda: len(out.received) >= n, what="traffic through all four")
        # (UDP flows never end by themselves: the drains end at their time limit, here short)
        mgr.drains.limit = 0.5
        await mgr.scale("cnt", 1)
        await eventually(lambda: [e.kind for e in mgr.events].count("retired") == 3, timeout=30,
                         what="three instances retired")
        assert mgr.plan_.instances_of("cnt") == ["cnt#1"] and set(mgr.instances) == {"cnt#1"}
        more = [out_frame(1000 + k) for k in range(50)]
        inp.inject(pkts(more))
        await eventually(lambda: len(out.received) >= n + 50, what="new flows through the one left")
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    pin, pout, drops = account(s)
    assert pin == pout == n + 50 and drops == 0
    assert {i: v["state"] for i, v in s["instances"].items()} == {
        "cnt#1": "running", "cnt#2": "retired", "cnt#3": "retired", "cnt#4": "retired"}
    assert sum(v["in"] for v in s["instances"].values()) == n + 50
    assert not [e for e in s["errors"]], s["errors"]
