"""Moving an instance to another server with its state, and rebalancing (real worker processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import eventually
from healkit import EXT, SERVER, account, deploy, feed, nat_policy, out_frame, pkts, reply_frame

from e2actors.manager.rebalance import pick_rebalance
from nfkit import chain_policy

NAT_POLICY = nat_policy("natp")


async def test_move_nat_keeps_mappings_and_loses_nothing(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, NAT_POLICY)
    try:
        src = mgr.plan_.assignment["nat#1"]
        dst = "w2" if src == "w1" else "w1"
        n = 300
        inp.inject(pkts([out_frame(k) for k in range(n)]))
        await eventually(lambda: len(out.received) >= n)
        # the NAT's mappings: external port -> internal (address, port)
        ext = {p.sport: (f"10.0.{k // 250}.{k % 250 + 1}", 1024 + k) for k, p in enumerate(out.received[:n])}
        assert len(ext) == n and all(p.src_str == EXT for p in out.received[:n])
        internal = {p.sport: None for p in out.received[:n]}
        # traffic keeps flowing through the move: more of the same connections, and replies
        flowing = [out_frame(k % n, 1 + k // n) for k in range(1500)]
        task = asyncio.get_running_loop().create_task(feed(inp, flowing, 1500))
        await eventually(lambda: len(out.received) >= n + 200)  # the move happens under traffic
        pause = await mgr.move("nat#1", dst)
        await task
        await mgr.wait_done(timeout=10)  # everything sent so far is out
        assert mgr.plan_.assignment["nat#1"] == dst
        # replies to every external port reach their internal host: the mappings moved
        before = len(out.received)
        inp.inject(pkts([reply_frame(port) for port in internal]))
        await eventually(lambda: len(out.received) >= before + n)
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    replies = out.received[before:]
    assert all(p.src_str == SERVER for p in replies)
    assert sorted((p.dst_str, p.dport) for p in replies) == sorted(ext.values())
    # the moved NAT kept allocating from where it was: the flowing packets reused their mappings
    assert {p.sport for p in out.received[n:before]} <= set(ext)
    pin, pout, drops = account(s)
    print(f"move pause {pause * 1000:.1f} ms; in {pin} out {pout} drops {s['drops']}")
    assert pin == n + 1500 + n
    assert pin == pout and drops == 0, s["drops"]
    assert s["instances"]["nat#1"]["server"] == dst
    assert any(e["kind"] == "move" for e in s["scaling_events"])


def test_pick_rebalance_evens_out_servers() -> None:
    from e2actors.manager.hardware import Hardware, PortPlace, Server
    from e2actors.manager.plan import make_plan
    from e2actors.manager.policy import Policy

    pol = Policy.from_yaml(NAT_POLICY.replace("nat: {", "nat: {min: 3, ").replace(
        "class: e2actors.nf.builtin.NAT", "class: e2actors.nf.builtin.Counter").replace(
        "config: {external: 198.19.0.1, internal: [10.0.0.0/8]}", "config: {}"))
    hw = Hardware([Server("main", 0), Server("w1", 4), Server("w2", 4)],
                  {"in": PortPlace("in", "main"), "out": PortPlace("out", "main")})
    plan = make_plan(pol, hw)
    from e2actors.manager.diff import with_assignment

    plan = with_assignment(plan, {i: "w1" for i in plan.instances_of("nat")})
    busy = {i: 0.4 for i in plan.instances_of("nat")}
    inst, a, b = pick_rebalance(plan, busy, ["main", "w1", "w2"], {})
    assert (a, b) == ("w1", "w2")
    # balanced enough: nothing to do
    plan2 = with_assignment(plan, {inst: "w2"})
    assert pick_rebalance(plan2, busy, ["main", "w1", "w2"], {}) is None


BURN_POLICY = chain_policy("burn", 'class: "scaling_nfs:Burner", affinity: flow, cost_pps: 20000, min: 2, max: 2, '
                           "config: {cost_us: 200}", load_pps=2000, name="burn2")


async def _rebalance_run(tmp_path: Path, on: bool) -> dict:
    from e2actors.packet.traffic import frames

    mgr, inp, out = await deploy(tmp_path, BURN_POLICY, allow=("scaling_nfs",), report_interval=0.2,
                                 rebalance=on, rebalance_every=0.5)
    try:
        for i in mgr.plan_.instances_of("burn"):  # both on w1: one server busy, the other idle
            if mgr.plan_.assignment[i] != "w1":
                await mgr.move(i, "w1")
        mgr.events.clear()
        trace = [d for _t, d in frames(600, seed=5, profile="web")][:9000]
        await feed(inp, trace, 3000)
        await mgr.wait_done(timeout=15)
        s = mgr.summary(await mgr.stats())
        s["where"] = dict(mgr.plan_.assignment)
        return s
    finally:
        await mgr.stop()


async def test_rebalance_moves_from_the_busy_server_only_when_on(tmp_path: Path) -> None:
    on = await _rebalance_run(tmp_path, True)
    moves = [e for e in on["scaling_events"] if e["kind"] == "move"]
    print("rebalance on:", moves, on["where"])
    assert moves and "rebalance" in moves[0]["detail"]
    assert {on["where"]["burn#1"], on["where"]["burn#2"]} == {"w1", "w2"}
    pin, pout, drops = account(on)
    assert pin == pout + drops and not any("nf error" in k for k in on["drops"])
    off = await _rebalance_run(tmp_path, False)
    assert not [e for e in off["scaling_events"] if e["kind"] == "move"], off["scaling_events"]
    assert off["where"]["burn#1"] == off["where"]["burn#2"] == "w1"
