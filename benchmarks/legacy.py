"""Existing programs behind virtual ports: their forwarding rate and the cost of scaling them out.

(1) Forwarding, as root, in namespaces made here and deleted afterwards (the topology of
    benchmarks/afpacket.py)::

        [gen] g0 ==veth== a0 [fwd] b0 ==veth== s0 [sink]

    A generator blasts frames of the generated trace into a0 from a transmit ring. In ``fwd`` one
    forwarder process at a time moves them to b0 for ``--seconds``:

    * ``switch``: the Switch with two AF_PACKET ports and the route a -> b (the baseline);
    * ``vport``: the same Switch sending everything through one vport NF instance whose program is
      a Linux bridge in its own namespace (switch -> instance actor -> veth -> bridge -> veth ->
      instance -> switch -> b0).

    Rates are b0's tx_packets per second; also packets per CPU second of the forwarder process
    (the bridge's kernel work runs in that process's system calls, so it is counted). The best of
    ``--rounds`` interleaved rounds counts. ``vport_vs_switch``: their ratio.

(2) Scaling out, in one process: a deployment replaying a capture in its own time through one
    instance of an NF; ``Manager.scale(nf, 2)``; the time from that call to the new instance's
    first packet. For a vport NF (a bridge in a namespace) against a built-in pipelet NF
    (Counter), same run: ``scale_out_vport_ms``, ``scale_out_builtin_ms`` and their ratio.

    sudo .venv/bin/python benchmarks/legacy.py [--seconds 3] [--rounds 2]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from afpacket import measure, sh, trace_hex  # noqa: E402  (the same generator, trace and measure)

BRIDGE = {"setup": ["ip link add br0 type bridge mcast_snooping 0", "ip link set in0 master br0",
                    "ip link set out0 master br0", "ip link set br0 up"],
          "interfaces": {"in0": {"side": "client"}, "out0": {"side": "server"}}, "ready": {"probe": True},
          "mtu": 9000}

FORWARDER = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[5])
from e2actors import Node, run
from e2actors.nf.instance import NFInstance
from e2actors.nf.messages import GetStats
from e2actors.switch.messages import GetSwitchStats, SetTable
from e2actors.switch.switch import Switch
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable
VPORT = "e2actors.nf.vport:VPort"
async def main():
    async with Node("fwd") as node:
        sw = node.spawn(Switch, "switch", server="s1")
        ports = (PortSpec("a", "afpacket", {"iface": sys.argv[1]}), PortSpec("b", "afpacket", {"iface": sys.argv[2]}))
        if sys.argv[4] == "vport":
            inst = node.spawn(NFInstance, "br#1", pipelet=VPORT, config=json.loads(sys.argv[6]), nf="br", output=sw)
            await node.ask(inst, GetStats(), timeout=60)  # answered once its setup ran
            table = SwitchTable(1, "s1", ports, (GroupSpec("br", (Member("br#1", "s1", inst),), affinity="flow"),),
                                (Route("port:a", "", "nf:br", "a->br"), Route("nf:br.out", "", "port:b", "br->b")))
        else:
            table = SwitchTable(1, "s1", ports, (), (Route("port:a", "", "port:b", "a->b"),))
        await node.ask(sw, SetTable(table))
        print("READY", flush=True)
        await asyncio.sleep(float(sys.argv[3]))
        st = await node.ask(sw, GetSwitchStats())
        print(st["ports"], st["drops"], file=sys.stderr)
        if sys.argv[4] == "vport":
            i = await node.ask(inst, GetStats())
            print({k: i[k] for k in ("packets_in", "packets_out", "dropped", "drops", "counters", "busy_seconds",
                                     "mailbox_dropped")}, file=sys.stderr)
run(main())
"""


def forwarding(args: argparse.Namespace) -> dict[str, float]:
    tag = f"lg{os.getpid() % 10000}"
    gen, fwd, sink = f"{tag}gen", f"{tag}fwd", f"{tag}sink"
    g0, a0, b0, s0 = f"{tag}g0", f"{tag}a0", f"{tag}b0", f"{tag}s0"
    hexes = trace_hex()
    try:
        for ns in (gen, fwd, sink):
            sh(f"ip netns add {ns}")
            sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {gen} link add {g0} mtu 9000 type veth peer name {a0} mtu 9000 netns {fwd}")
        sh(f"ip -n {fwd} link add {b0} mtu 9000 type veth peer name {s0} mtu 9000 netns {sink}")
        for ns, dev in ((gen, g0), (fwd, a0), (fwd, b0), (sink, s0)):
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
            sh(f"ip -n {ns} link set {dev} up")
            sh(f"ip netns exec {ns} ethtool -K {dev} tx off rx off tso off gso off gro off", check=False)

        def one(kind: str) -> tuple[float, float, float]:
            cmd = [sys.executable, "-c", FORWARDER, a0, b0, str(args.seconds + 1.5), kind, ROOT, json.dumps(BRIDGE)]
            fw = subprocess.Popen(["ip", "netns", "exec", fwd, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
            line = fw.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("READY"):
                raise RuntimeError(f"{kind} forwarder did not start: {fw.stderr.read()}")  # type: ignore[union-attr]
            return measure(fw, (fwd, b0), (gen, g0), hexes, args.seconds, args.verbose)

        best = {"switch": 0.0, "vport": 0.0}
        per_cpu = {"switch": 0.0, "vport": 0.0}
        for _ in range(args.rounds):
            for kind in ("switch", "vport"):
                pps, off, cpu = one(kind)
                cap = pps * args.seconds / cpu if cpu else 0.0
                print(f"{kind:7s} {pps:>10,.0f} pps forwarded (offered {off:>10,.0f} pps); {cpu:5.2f} s CPU: "
                      f"{cap:>10,.0f} packets per CPU second", file=sys.stderr, flush=True)
                best[kind] = max(best[kind], pps)
                per_cpu[kind] = max(per_cpu[kind], cap)
        return {"switch_pps": round(best["switch"]), "vport_pps": round(best["vport"]),
                "vport_vs_switch": round(best["vport"] / best["switch"], 3) if best["switch"] else 0.0,
                "switch_per_cpu_s": round(per_cpu["switch"]), "vport_per_cpu_s": round(per_cpu["vport"]),
                "vport_vs_switch_per_cpu": round(per_cpu["vport"] / per_cpu["switch"], 3) if per_cpu["switch"] else 0.0}
    finally:
        for ns in (gen, fwd, sink):
            sh(f"ip netns del {ns}", check=False)


async def scale_out_ms(nf_yaml: str, pcap: str) -> tuple[float, float]:
    """Deploy ``nf_yaml`` as NF ``x`` over ``pcap`` (timed replay); scale to 2 once x#1 carries
    traffic: (ms from the call to x#2's first packet, the scale-out event's own figure)."""
    from e2actors import Manager, Policy, Traffic

    text = ("name: bench\nnfs:\n  x:\n" + nf_yaml + "classes:\n  - {name: all, filter: \"\", load_pps: 1000}\n"
            "edges:\n  - {from: in, to: x}\n  - {from: x, to: out}\n")
    mgr = Manager(autoscale=False)
    try:
        await mgr.deploy(mgr.plan(Policy.from_yaml(text)), Traffic(pcap=pcap, speed=1.0))
        while (await mgr.stats())["instances"]["x#1"]["packets_in"] == 0:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        task = asyncio.get_running_loop().create_task(mgr.scale("x", 2))
        while True:
            inst = (await mgr.stats())["instances"].get("x#2")
            if isinstance(inst, dict) and inst.get("packets_in", 0) > 0:
                break
            await asyncio.sleep(0.005)
        took = (time.monotonic() - t0) * 1e3
        await task
        ev = [e for e in mgr.events if e.kind == "scale-out"][0]
        own = float(ev.detail.rsplit("in service after ", 1)[1].split()[0])
        return took, own
    finally:
        await mgr.stop()


def scaling(args: argparse.Namespace) -> dict[str, float]:
    from e2actors.packet.traffic import write_pcap

    vport = "    kind: vport\n    affinity: flow\n" + "".join(
        f"    {k}: {json.dumps(v)}\n" for k, v in BRIDGE.items())
    builtin = "    class: e2actors.nf.builtin.counter:Counter\n    affinity: flow\n"
    with tempfile.TemporaryDirectory() as tmp:
        pcap = os.path.join(tmp, "t.pcap")
        write_pcap(pcap, flows=args.flows, seed=9)
        res: dict[str, list[tuple[float, float]]] = {"vport": [], "builtin": []}
        for _ in range(args.rounds):
            for kind, spec in (("vport", vport), ("builtin", builtin)):
                took, own = asyncio.run(scale_out_ms(spec, pcap))
                print(f"scale-out {kind:7s}: first packet on the new instance {took:7.1f} ms after the decision "
                      f"(the event says {own:.0f} ms)", file=sys.stderr, flush=True)
                res[kind].append((took, own))
    v = min(t for t, _ in res["vport"])
    b = min(t for t, _ in res["builtin"])
    return {"scale_out_vport_ms": round(v, 1), "scale_out_builtin_ms": round(b, 1),
            "scale_out_vport_vs_builtin": round(v / b, 2) if b else 0.0,
            "scale_out_vport_event_ms": round(min(o for _, o in res["vport"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flows", type=int, default=400, help="flows in the capture replayed for the scale-out part")
    ap.add_argument("--only", default="forwarding,scaling")
    ap.add_argument("--verbose", action="store_true", help="show each forwarder's switch counters")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root"}))
        return
    out: dict[str, float] = {}
    if "forwarding" in args.only:
        out.update(forwarding(args))
    if "scaling" in args.only:
        out.update(scaling(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
