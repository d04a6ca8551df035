"""Resilience benchmark: one deployment over generated traffic with worker processes, and in turn
a move of a stateful instance, a live policy update, an NF crash and a SIGKILL of a worker.

Policy: in -> nat (stateful NAT) -> crash (passes packets; raises on a ``boom`` payload) -> out,
on 3 workers. Traffic is injected at a steady rate through every phase; each phase ends when the
deployment is quiet, and its packets are counted from the switches' and instances' counters:

* ``move_lost_packets``: packets not delivered during the move of ``nat#1`` to another worker
  (its NAT state moves with it); ``move_pause_ms``: how long its packets were held.
* ``update_lost_packets``: same during a live policy update that puts a new NF (``tag``) in front
  of the NAT (one transaction: spawn, tables by version, switch over).
* ``crash_lost_packets``: packets lost when ``crash#1`` raises once (only the failed batch; the
  instance is restarted by its supervisor).
* ``node_loss_recovery_seconds``: from the SIGKILL of the worker running ``nat#1`` to the first
  packet sent after the kill leaving the deployment (heartbeats notice the loss, the instances are
  placed again on the survivors, the switches reprogrammed; the NAT takes checkpoints every
  second, and ``node_loss_restored`` says what its replacement started from); ``node_loss_lost_packets``: packets
  not delivered during that phase (the outage). ``node_loss_healed_seconds``: from the kill to
  every NF placed again (the ``recovered`` event); ``node_loss_lost_vs_outage``: the packets lost
  over those offered from the kill to the heal (1.0: all of them; the NAT's only instance was on
  the lost worker, so an outage loses what it is offered meanwhile, and should lose no more).
* ``pause_*``: the same for a worker paused with SIGSTOP for 5 s, then SIGCONT (``--pause``): it
  is declared lost after the heartbeat timeout, fenced (killed: ``pause_worker_fenced``, its exit
  status ``pause_worker_status``) and its instances placed again; nothing of it runs after SIGCONT.

Then the default deployment of ``e2actors run --workers 2`` (one switch per worker, each reading
its shard of a replayed capture, as fast as it goes) loses a worker mid-replay, killed
(``shard_kill_*``) and paused 5 s (``shard_pause_*``): ``healed_seconds`` from the signal to the
survivor taking over the lost shard's flows with every NF placed; ``lost_packets`` (the account's
``lost``: what was in flight at the lost worker at its last counters) over ``packets_in``
(``lost_ratio``; every packet of the input is in the account: ``accounted``); ``taken_over``: the
lost shard's packets the survivor read; ``output_extra``: packets the lost worker wrote after its
last counters (the survivor, taking over from those counters, may have sent some of them again).
``out_vs_baseline``: the packets out against the same replay without a loss, run first
(``shard_baseline_packets_out``).

    python benchmarks/resilience.py [--rate PPS] [--heartbeat-timeout S] [--pause S]

Last line: one JSON object. Targets: move_lost_packets 0, update_lost_packets 0,
node_loss_recovery_seconds within 3 heartbeat timeouts, every shard run ``accounted``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # heal_nfs: the crashing and tagging pipelets

from e2actors import run  # noqa: E402
from e2actors.manager.manager import Manager, Traffic  # noqa: E402
from e2actors.manager.policy import Policy  # noqa: E402
from e2actors.packet.build import ether, ipv4, udp  # noqa: E402
from e2actors.packet.packet import Packet  # noqa: E402
from e2actors.packet.pcap import read_packets  # noqa: E402
from e2actors.packet.traffic import frames, write_pcap  # noqa: E402
from healkit import SHARD_CHAIN  # noqa: E402  (the lost-shard tests' chain)

V1 = """
name: resilience-v1
nfs:
  nat:   {class: e2actors.nf.builtin.NAT, affinity: flow, checkpoint: 1, config: {external: 100.64.0.1}}
  crash: {class: "heal_nfs:Crasher"}
classes:
  - {name: all, filter: "", load_pps: 2000}
edges:
  - {from: in, to: nat}
  - {from: nat, to: crash}
  - {from: crash, to: out}
"""

V2 = """
name: resilience-v2
nfs:
  tag:   {class: "heal_nfs:Tagger", config: {tag: v2}}
  nat:   {class: e2actors.nf.builtin.NAT, affinity: flow, checkpoint: 1, config: {external: 100.64.0.1}}
  crash: {class: "heal_nfs:Crasher"}
classes:
  - {name: all, filter: "", load_pps: 2000}
edges:
  - {from: in, to: tag}
  - {from: tag, to: nat}
  - {from: nat, to: crash}
  - {from: crash, to: out}
"""


def _boom() -> bytes:
    return ether(ipv4("10.9.9.9", "203.0.113.9", 17, udp("10.9.9.9", "203.0.113.9", 999, 53, payload=b"boom")))


class Feeder:
    """Injects the trace (cycled) at ``rate`` packets/s until stopped."""

    def __init__(self, port, trace: list[bytes], rate: float) -> None:
        self.port, self.trace, self.rate = port, trace, rate
        self.i = 0
        self.stop = asyncio.Event()

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        t0, start = loop.time(), self.i
        chunk = 16
        while loop.time() - t0 < seconds:
            now = time.time()
            batch = [Packet(self.trace[(self.i + k) % len(self.trace)], now, "in") for k in range(chunk)]
            self.port.inject(batch)
            self.i += chunk
            await asyncio.sleep(max(0.0, (self.i - start) / self.rate - (loop.time() - t0)))


def counts(s: dict) -> tuple[int, int, dict]:
    return s["packets_in"], s["packets_out"], dict(s["drops"])


def _nf_verdict(reason: str) -> bool:
    """Drops an NF decided (``nat: no mapping``): what the policy says, not packets lost."""
    return not reason.startswith(("switch:", "port "))


async def phase(mgr: Manager, feeder: Feeder, action, seconds: float, lead: float = 0.5):
    """Traffic for ``seconds``, ``action`` after ``lead`` seconds; returns (result, lost, drops):
    lost counts packets that went in and neither left nor were dropped by an NF's own decision."""
    await mgr.wait_done(timeout=20)
    a = counts(mgr.summary(await mgr.stats()))
    task = asyncio.get_running_loop().create_task(feeder.run(seconds))
    await asyncio.sleep(lead)
    result = await action()
    await task
    await mgr.wait_done(timeout=30)
    b = counts(mgr.summary(await mgr.stats()))
    drops = {k: v - a[2].get(k, 0) for k, v in b[2].items() if v - a[2].get(k, 0)}
    verdicts = sum(v for k, v in drops.items() if _nf_verdict(k))
    return result, (b[0] - a[0]) - (b[1] - a[1]) - verdicts, drops


def healed_at(mgr: Manager, after: float) -> float | None:
    """When (``time.monotonic()``) the first ``recovered`` event after ``after`` was recorded."""
    return next((e.t + mgr.t0 for e in mgr.events if e.kind == "recovered" and e.t + mgr.t0 >= after), None)


async def main(rate: float, hb: float, pause_s: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="e2res-")
    with open(os.path.join(tmp, "v1.yaml"), "w") as f:
        f.write(V1)
    # (4 workers of 2 cores: room for every instance after two of them are lost)
    mgr = Manager(workers=4, worker_cores=2, autoscale=False, allow=("heal_nfs",), heartbeat_timeout=hb,
                  shards=False)  # (the ports here, the instances on the workers)
    res: dict = {}
    try:
        await mgr.deploy(mgr.plan(Policy.load(os.path.join(tmp, "v1.yaml"))), Traffic())
        sw = mgr.node.cell(mgr.servers["main"].switch).actor  # type: ignore[union-attr]
        inp, out = sw.ports["in"], sw.ports["out"]
        trace = [d for _t, d in frames(400, seed=7, profile="web")]
        feeder = Feeder(inp, trace, rate)
        await phase(mgr, feeder, lambda: asyncio.sleep(0), 1.0)  # warm up: NAT mappings exist

        # 1. move the stateful NAT to another worker
        src = mgr.plan_.assignment["nat#1"]
        dst = next(s for s in ("w1", "w2", "w3", "w4") if s != src and s != mgr.plan_.assignment["crash#1"])
        pause, lost, drops = await phase(mgr, feeder, lambda: mgr.move("nat#1", dst), 2.0)
        res["move_lost_packets"] = lost
        res["move_pause_ms"] = round(pause * 1000, 2)
        res["move_drops"] = drops

        # 2. a live policy update: a new NF in front of the NAT
        new = Policy.from_yaml(V2, os.path.join(tmp, "v2.yaml"))
        diff, lost, drops = await phase(mgr, feeder, lambda: mgr.update(new), 2.0)
        res["update_lost_packets"] = lost
        res["update_drops"] = drops
        res["update_seconds"] = round(diff.seconds, 4)

        # 3. the crashing NF raises once (restarted; its batch is lost, counted)
        async def crash() -> None:
            now = time.time()  # one batch: 15 packets of the trace and the poisoned one
            inp.inject([Packet(d, now, "in") for d in trace[:15]] + [Packet(_boom(), now, "in")])

        _r, lost, drops = await phase(mgr, feeder, crash, 1.5)
        res["crash_lost_packets"] = drops.get("switch: nf error in crash", 0)
        res["crash_phase_lost_packets"] = lost

        # 4. SIGKILL the worker that runs the NAT
        victim = mgr.plan_.assignment["nat#1"]
        proc = mgr.servers[victim].proc
        arrivals: list[float] = []
        t_kill = [0.0]
        orig = out.send

        def send(ps) -> None:
            if t_kill[0] and not arrivals:
                now = time.time()
                if any(p.ts > t_kill[0] for p in ps):
                    arrivals.append(now)
            orig(ps)

        out.send = send

        t_mono = [0.0]

        async def kill() -> None:
            t_kill[0] = time.time()
            t_mono[0] = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[union-attr]

        _r, lost, drops = await phase(mgr, feeder, kill, 3 * hb + 2.0)
        out.send = orig
        res["node_loss_recovery_seconds"] = round(arrivals[0] - t_kill[0], 3) if arrivals else None
        res["node_loss_lost_packets"] = lost
        healed = healed_at(mgr, t_mono[0])
        res["node_loss_healed_seconds"] = round(healed - t_mono[0], 3) if healed else None
        res["node_loss_lost_vs_outage"] = round(lost / (rate * (healed - t_mono[0])), 3) if healed else None
        res["node_loss_restored"] = next((e.detail for e in mgr.events if e.kind == "restored"
                                          and e.t + mgr.t0 >= t_mono[0]), None)
        res["node_lost"] = victim
        res["heartbeat_timeout"] = hb
        res["rate_pps"] = rate
        res["nat_now_on"] = mgr.plan_.assignment["nat#1"]

        # 5. SIGSTOP the worker that runs the NAT now for ``pause`` seconds, then SIGCONT
        victim = mgr.plan_.assignment["nat#1"]
        proc = mgr.servers[victim].proc

        async def pause_worker() -> None:
            t_mono[0] = time.monotonic()
            os.kill(proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            await asyncio.sleep(pause_s)  # (the scenario: a process frozen this long)
            try:
                os.kill(proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass  # (fenced: killed and reaped meanwhile)

        _r, lost, drops = await phase(mgr, feeder, pause_worker, pause_s + 3.0)
        healed = healed_at(mgr, t_mono[0])
        res["pause_seconds"] = pause_s
        res["pause_healed_seconds"] = round(healed - t_mono[0], 3) if healed else None
        res["pause_lost_packets"] = lost
        res["pause_lost_vs_outage"] = round(lost / (rate * (healed - t_mono[0])), 3) if healed else None
        res["pause_worker_status"] = proc.poll()  # type: ignore[union-attr]
        res["pause_worker_fenced"] = any(e.kind == "fenced" and victim in e.detail for e in mgr.events)
        res["events"] = [f"{e.t:.2f}s {e.nf} {e.kind}: {e.detail}" for e in mgr.events]
    finally:
        await mgr.stop()
    base = await shard_loss(tmp, hb, None)  # (no loss: the baseline of the same run)
    res["shard_baseline_packets_out"] = base["packets_out"]
    for sig in ("kill", "pause"):
        r = await shard_loss(tmp, hb, pause_s if sig == "pause" else 0.0)
        res["events"] += [f"shard {sig}: {e}" for e in r.pop("events")]
        res.update({f"shard_{sig}_{k}": v for k, v in r.items()})
        res[f"shard_{sig}_out_vs_baseline"] = round(r["packets_out"] / max(1, base["packets_out"]), 4)
    res["targets_met"] = (res.get("move_lost_packets") == 0 and res.get("update_lost_packets") == 0
                          and res.get("node_loss_recovery_seconds") is not None
                          and res["node_loss_recovery_seconds"] <= 3 * hb
                          and res.get("shard_kill_accounted") is True and res.get("shard_pause_accounted") is True)
    return res




async def shard_loss(tmp: str, hb: float, pause: float | None, loops: int = 8) -> dict:
    """``e2actors run --workers 2``'s deployment replaying a capture; w2 is killed (``pause`` 0)
    or paused for ``pause`` seconds once it has read a fifth of its share (None: neither)."""
    cap = os.path.join(tmp, "shards.pcap")
    if not os.path.exists(cap):
        write_pcap(cap, flows=3000, seed=3)
    n_cap = sum(1 for _ in read_packets(cap))
    pol = os.path.join(tmp, "shards.yaml")
    with open(pol, "w") as f:
        f.write(SHARD_CHAIN)
    out = os.path.join(tmp, f"shards-out-{pause}.pcap")
    mgr = Manager(workers=2, worker_cores=2, autoscale=False, heartbeat_timeout=hb)
    res: dict = {}
    try:
        await mgr.deploy(mgr.plan(Policy.load(pol)), Traffic(pcap=cap, loop=loops, out=out))
        proc = mgr.servers["w2"].proc
        while True:  # (polling as `e2actors run` does: the counters a lost worker leaves behind)
            st = await mgr.stats()
            if st["switches"]["w2"]["ports"]["in"]["rx_packets"] > n_cap * loops / 10:
                break
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        if pause is not None:
            os.kill(proc.pid, signal.SIGSTOP if pause else signal.SIGKILL)  # type: ignore[union-attr]
        if pause:
            async def resume() -> None:
                await asyncio.sleep(pause)
                try:
                    os.kill(proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                except ProcessLookupError:
                    pass

            resumed = asyncio.get_running_loop().create_task(resume())
        await mgr.wait_done(timeout=120)
        if pause:
            await resumed
        st = await mgr.stats()
        s = mgr.summary(st)
        healed = healed_at(mgr, t0)
        res["healed_seconds"] = round(healed - t0, 3) if healed else None
        res["packets_in"] = s["packets_in"]
        res["lost_packets"] = s["lost"]
        res["lost_by"] = s["lost_by"]
        res["lost_ratio"] = round(s["lost"] / max(1, s["packets_in"]), 5)
        res["accounted"] = (s["packets_in"] == n_cap * loops
                            and s["packets_in"] == s["packets_out"] + sum(s["drops"].values()) + s["lost"])
        res["taken_over"] = sum(int((sw.get("ports", {}).get("in", {}).get("adopted") or {}).get("1", 0))
                                for sw in st["switches"].values() if isinstance(sw, dict))
        res["packets_out"] = s["packets_out"]
        res["worker_status"] = proc.poll()  # type: ignore[union-attr]
        res["events"] = [f"{e.t:.2f}s {e.nf} {e.kind}: {e.detail}" for e in mgr.events]
    finally:
        await mgr.stop()
    res["output_extra"] = sum(1 for _ in read_packets(out)) - res["packets_out"]
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="offered packets/s")
    ap.add_argument("--heartbeat-timeout", type=float, default=1.0)
    ap.add_argument("--pause", type=float, default=5.0, help="seconds a worker is paused (SIGSTOP, then SIGCONT)")
    a = ap.parse_args()
    res = run(main(a.rate, a.heartbeat_timeout, a.pause))
    for e in res.pop("events"):
        print(e)
    print(json.dumps(res))
