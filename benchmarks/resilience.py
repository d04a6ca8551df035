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
  placed again on the survivors, the switches reprogrammed); ``node_loss_lost_packets``: packets
  not delivered during that phase (the outage).

    python benchmarks/resilience.py [--rate PPS] [--heartbeat-timeout S]

Last line: one JSON object. Targets: move_lost_packets 0, update_lost_packets 0,
node_loss_recovery_seconds within 3 heartbeat timeouts.
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
from e2actors.packet.traffic import frames  # noqa: E402

V1 = """
name: resilience-v1
nfs:
  nat:   {class: e2actors.nf.builtin.NAT, affinity: flow, config: {external: 100.64.0.1}}
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
  nat:   {class: e2actors.nf.builtin.NAT, affinity: flow, config: {external: 100.64.0.1}}
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


async def main(rate: float, hb: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="e2res-")
    with open(os.path.join(tmp, "v1.yaml"), "w") as f:
        f.write(V1)
    mgr = Manager(workers=3, worker_cores=2, autoscale=False, allow=("heal_nfs",), heartbeat_timeout=hb,
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
        dst = next(s for s in ("w1", "w2", "w3") if s != src and s != mgr.plan_.assignment["crash#1"])
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

        async def kill() -> None:
            t_kill[0] = time.time()
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[union-attr]

        _r, lost, drops = await phase(mgr, feeder, kill, 3 * hb + 2.0)
        out.send = orig
        res["node_loss_recovery_seconds"] = round(arrivals[0] - t_kill[0], 3) if arrivals else None
        res["node_loss_lost_packets"] = lost
        res["node_lost"] = victim
        res["heartbeat_timeout"] = hb
        res["rate_pps"] = rate
        res["nat_now_on"] = mgr.plan_.assignment["nat#1"]
        res["events"] = [f"{e.t:.2f}s {e.nf} {e.kind}: {e.detail}" for e in mgr.events]
    finally:
        await mgr.stop()
    res["targets_met"] = (res.get("move_lost_packets") == 0 and res.get("update_lost_packets") == 0
                          and res.get("node_loss_recovery_seconds") is not None
                          and res["node_loss_recovery_seconds"] <= 3 * hb)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="offered packets/s")
    ap.add_argument("--heartbeat-timeout", type=float, default=1.0)
    a = ap.parse_args()
    res = run(main(a.rate, a.heartbeat_timeout))
    for e in res.pop("events"):
        print(e)
    print(json.dumps(res))
