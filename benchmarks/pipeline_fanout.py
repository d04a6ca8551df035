"""Part (e) of benchmarks/pipeline.py (root): one switch per core on a live interface.

Two switch processes sharing a veth through ``PACKET_FANOUT`` (``e2actors run --in --out
--workers 2``) against one (``--workers 1``: the same processes, one worker), forwarding through
a trivial inline NF, the traffic sent by netsniff-ng's ``trafgen`` (a native generator on a
PACKET_MMAP ring: UDP flows with random ports, at a fixed rate above what one switch forwards),
or ``tcpreplay --topspeed`` where trafgen is missing, into a namespace that holds the switches.
Figures: forwarded frames per second of each, their ratio, and the switches' CPU time per
forwarded frame (``fanout_cpu_ratio``: fanout's over single's; near 1: no shared bottleneck).

    python benchmarks/pipeline_fanout.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from netns import Lab  # noqa: E402

from e2actors.packet.traffic import write_pcap  # noqa: E402

POLICY = """
name: forward
nfs:
  nop: {class: "e2actors.nf.pipelet:Pipelet", inline: true, cost_pps: 1000000}
classes:
  - {name: all, filter: "", load_pps: 100000}
edges:
  - {from: in, to: nop}
  - {from: nop, to: out}
"""


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def _workers(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def _metric(ns: str, port: int, name: str) -> float | None:
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "2", f"http://127.0.0.1:{port}/metrics"],
                       capture_output=True, text=True)
    vals = [float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", r.stdout, re.M)]
    return sum(vals) if vals else None


TRAFGEN = """{
  eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01),
  ipv4(saddr=198.18.0.1, daddr=198.19.0.1, ttl=64),
  udp(sp=drnd(), dp=drnd()),
  fill(0x41, 64),
}
"""


def send(gen: str, g0: str, pcap: str, loops: int, tmp: str, rate: int, count: int) -> int:
    """Send the offered traffic from namespace ``gen``; returns how many frames went."""
    import shutil

    if shutil.which("trafgen"):
        cfg = os.path.join(tmp, "udp.cfg")
        with open(cfg, "w") as f:
            f.write(TRAFGEN)
        subprocess.run(["ip", "netns", "exec", gen, "trafgen", "--dev", g0, "--conf", cfg, "--cpus", "1",
                        "--num", str(count), "--rate", f"{rate}pps", "--qdisc-path"],
                       capture_output=True, text=True, timeout=300, check=True)
        return count
    rep = subprocess.run(["ip", "netns", "exec", gen, "tcpreplay", "--topspeed", "--loop", str(loops), "-i", g0, pcap],
                         capture_output=True, text=True, timeout=300)
    return int(re.search(r"Actual: (\d+) packets", rep.stdout).group(1))  # type: ignore[union-attr]


def run_once(lab: Lab, sw: str, gen: str, g0: str, sa: str, sb: str, pcap: str, workers: int, loops: int,
             tmp: str, rate: int = 400_000, count: int = 1_000_000) -> dict:
    pol = os.path.join(tmp, "forward.yaml")
    with open(pol, "w") as f:
        f.write(POLICY)
    mport = 19400 + workers
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = lab.run(sw, [sys.executable, "-m", "e2actors", "run", pol, "--in", sa, "--out", sb, "--workers", str(workers),
                       "--duration", "300", "--json", "--no-autoscale", "--metrics-port", str(mport)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    deadline = time.monotonic() + 30
    while _metric(sw, mport, "e2_port_packets_total") is None:
        if time.monotonic() > deadline or run.poll() is not None:
            raise SystemExit(f"the switch did not start: {run.communicate(timeout=5)[1][-2000:]}")
        time.sleep(0.2)
    procs = _workers(run.pid)
    cpu0 = _cpu_seconds(procs)
    sent = send(gen, g0, pcap, loops, tmp, rate, count)
    # Wait until the switches are quiet (the last frames out), then read the CPU they used.
    last = -1.0
    while True:
        time.sleep(0.5)
        cur = _metric(sw, mport, "e2_port_packets_total") or 0.0
        if cur == last:
            break
        last = cur
    cpu = _cpu_seconds(procs) - cpu0
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    s = json.loads(out)
    fwd = s["packets_out"]
    return {"pps": fwd / max(s["active_seconds"], 1e-9), "forwarded": fwd, "sent": sent,
            "cpu_us_per_frame": cpu / max(fwd, 1) * 1e6, "drops": s["drops"]}


def measure_fanout(seconds: float = 3.0) -> dict:
    """The figures of (e), as a dict (see the module docstring)."""
    lab = Lab("e2b")
    with tempfile.TemporaryDirectory(prefix="e2fan-") as tmp:
        try:
            gen, sw, sink = lab.ns("gen"), lab.ns("sw"), lab.ns("sink")
            g0, sa = lab.veth("g0", "sa", gen, sw)
            sb, _s0 = lab.veth("sb", "s0", sw, sink)
            pcap = os.path.join(tmp, "trace.pcap")
            n = write_pcap(pcap, flows=3000, seed=8)
            loops = max(1, int(seconds * 150_000 / n))  # tcpreplay sends ~150k pps here
            single = run_once(lab, sw, gen, g0, sa, sb, pcap, 1, loops, tmp)
            fanout = run_once(lab, sw, gen, g0, sa, sb, pcap, 2, loops, tmp)
        finally:
            lab.close()
    print(f"single switch: {single['pps']:,.0f} pps, {single['cpu_us_per_frame']:.1f} us CPU/frame; "
          f"fanout (2): {fanout['pps']:,.0f} pps, {fanout['cpu_us_per_frame']:.1f} us CPU/frame "
          f"(sent {single['sent']:,} / {fanout['sent']:,})")
    return {"single_pps": round(single["pps"]), "fanout_pps": round(fanout["pps"]),
            "fanout_vs_single": round(fanout["pps"] / max(single["pps"], 1e-9), 3),
            "fanout_cpu_ratio": round(fanout["cpu_us_per_frame"] / max(single["cpu_us_per_frame"], 1e-9), 3)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, AF_PACKET)")
    print(json.dumps(measure_fanout(a.seconds)))
