"""Live policy updates (one transaction, zero loss, rollback) and live upgrades of an NF's code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import eventually
from healkit import SERVER, account, deploy, feed, nat_policy, out_frame, pkts, reply_frame

from e2actors.errors import ChangeFailed
from e2actors.manager.policy import Policy

V1 = nat_policy("v1")

V2 = """
name: v2
nfs:
  tag: {class: "heal_nfs:Tagger", config: {tag: v2}}
  nat: {class: e2actors.nf.builtin.NAT, affinity: flow, config: {external: 198.19.0.1, internal: [10.0.0.0/8]}}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: tag}
  - {from: tag, to: nat}
  - {from: nat, to: out}
"""

BAD = V2.replace('"heal_nfs:Tagger"', '"scaling_nfs:Burner"')


async def test_update_while_traffic_flows_loses_nothing(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, V1, allow=("heal_nfs",))
    try:
        flowing = [out_frame(k % 200, k // 200) for k in range(3000)]
        task = asyncio.get_running_loop().create_task(feed(inp, flowing, 2000))
        await eventually(lambda: len(out.received) >= 400)  # the update happens under traffic
        d = await mgr.update(Policy.from_yaml(V2, str(tmp_path / "v2.yaml")))
        print(d.text())
        assert d.applied and d.nfs_added == ["tag"] and not d.nfs_removed
        assert d.edges_added == ["in -> tag", "tag -> nat"] and d.edges_removed == ["in -> nat"]
        assert list(d.instances_added) == ["tag#1"]
        assert "+ nf tag" in d.text() and "- edge in -> nat" in d.text()
        seen = len(out.received)
        await eventually(lambda: len(out.received) >= seen + 400)  # traffic through the new NF
        d2 = await mgr.update(Policy.from_yaml(V1, str(tmp_path / "v1.yaml")))  # and back: tag removed
        print(d2.text())
        assert d2.nfs_removed == ["tag"] and d2.instances_removed == ["tag#1"]
        await task
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
        assert mgr.plan_.policy.name == "v1" and "tag#1" not in mgr.instances
    finally:
        await mgr.stop()
    tagged = [p for p in out.received if p.meta.get("tag") == "v2"]
    assert 0 < len(tagged) < len(out.received)
    pin, pout, drops = account(s)
    print(f"in {pin} out {pout} drops {s['drops']}")
    assert pin == 3000 and pin == pout and drops == 0, s["drops"]
    assert [e["kind"] for e in s["scaling_events"]].count("update") == 2


async def test_failed_update_rolls_back(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, V1, allow=("heal_nfs",))
    try:
        v0 = mgr.version
        with pytest.raises(ChangeFailed) as ei:
            await mgr.update(Policy.from_yaml(BAD, str(tmp_path / "bad.yaml")))  # workers refuse the class
        assert "spawn failed" in str(ei.value)
        assert mgr.plan_.policy.name == "v1" and mgr.version == v0 and set(mgr.instances) == {"nat#1"}
        assert any(e.kind == "update-failed" for e in mgr.events)
        inp.inject(pkts([out_frame(k) for k in range(50)]))
        await eventually(lambda: len(out.received) >= 50)
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
    finally:
        await mgr.stop()
    assert account(s) == (50, 50, 0)
    assert s["errors"] and s["errors"][0]["kind"] == "update-failed"


async def test_upgrade_nat_keeps_its_mappings(tmp_path: Path) -> None:
    mgr, inp, out = await deploy(tmp_path, V1, allow=("heal_nfs",))
    try:
        n = 200
        inp.inject(pkts([out_frame(k) for k in range(n)]))
        await eventually(lambda: len(out.received) >= n)
        ports = [p.sport for p in out.received[:n]]
        flowing = [out_frame(k % n, 1 + k // n) for k in range(1500)]
        task = asyncio.get_running_loop().create_task(feed(inp, flowing, 1500))
        await eventually(lambda: len(out.received) >= n + 200)  # the upgrade happens under traffic
        d = await mgr.upgrade("nat", "heal_nfs:NAT2")
        await task
        await mgr.wait_done(timeout=10)  # everything sent so far is out
        assert d.nfs_changed == {"nat": ["class"]} and list(d.instances_replaced) == ["nat#1"]
        before = len(out.received)
        inp.inject(pkts([reply_frame(p) for p in ports]))
        await eventually(lambda: len(out.received) >= before + n)
        await mgr.wait_done(timeout=10)
        s = mgr.summary(await mgr.stats())
        assert mgr.plan_.policy.nfs["nat"].cls == "heal_nfs:NAT2"
    finally:
        await mgr.stop()
    replies = out.received[before:]
    assert all(p.src_str == SERVER and p.meta.get("ver") == 2 for p in replies)
    assert sorted(p.dport for p in replies) == sorted(1024 + k for k in range(n))
    assert any(p.meta.get("ver") == 2 for p in out.received[n:before])
    pin, pout, drops = account(s)
    assert pin == pout and drops == 0, s["drops"]


APPLY = ("import sys, argparse; from e2actors.manager import control; p = argparse.ArgumentParser(); "
         "control.add_arguments(p); sys.exit(control.main(p.parse_args(sys.argv[1:])))")


async def test_apply_against_a_running_manager(tmp_path: Path) -> None:
    """``e2actors apply POLICY --control ADDR --secret-file F`` (the module the CLI registers)."""
    import sys

    from e2actors.manager.control import read_or_create_secret, serve_for

    secret_file = str(tmp_path / "secret")
    secret = read_or_create_secret(secret_file)
    mgr, inp, out = await deploy(tmp_path, V1, allow=("heal_nfs",), secret=secret)
    ctl = await serve_for(mgr, f"unix://{tmp_path}/ctl.sock", mgr.secret)
    try:
        (tmp_path / "v2.yaml").write_text(V2)

        async def apply(*extra: str) -> tuple[int, str, str]:
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-c", APPLY, str(tmp_path / "v2.yaml"), "--control", ctl.address,
                "--secret-file", secret_file, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            o, e = await p.communicate()
            return p.returncode, o.decode(), e.decode()

        rc, o, e = await apply("--dry-run")
        assert rc == 0 and "+ nf tag" in o and "applied" not in o, (o, e)
        assert mgr.plan_.policy.name == "v1"
        rc, o, e = await apply()
        print(o)
        assert rc == 0 and "applied: tables v" in o, (o, e)
        assert mgr.plan_.policy.name == "v2" and "tag#1" in mgr.instances
        inp.inject(pkts([out_frame(k) for k in range(20)]))
        await eventually(lambda: len(out.received) >= 20)
        assert all(p.meta.get("tag") == "v2" for p in out.received)
        # a wrong secret is refused
        (tmp_path / "bad").write_bytes(b"x" * 40)
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-c", APPLY, str(tmp_path / "v2.yaml"), "--control", ctl.address,
            "--secret-file", str(tmp_path / "bad"), "--timeout", "3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        o2, e2 = await p.communicate()
        assert p.returncode != 0
    finally:
        await ctl.stop()
        await mgr.stop()
