"""The running example at scale: the whole framework against its NFs alone, one process against
two workers, all in one run over the same generated trace.

(a) ``nf_ceiling_pps``: each packet of the trace handed to the NFs its path through the running
    example's policy takes, called directly in one plain loop — the IDS (its stream reassembly
    included) on everything; what it finds unsafe to the logger; safe traffic to parental control
    when the flow's host is youtube.com (the host learnt as the switch learns it) and to the
    shaper otherwise. No switch, no actors, no classifier beyond those if-statements: what the
    NFs cost.
(b) ``one_process_pps``: ``e2actors run`` of the running example over the trace, in one process
    (packets in / the run's active seconds, from the first packet read to the last one out).
(c) ``two_workers_pps``: the same with ``--workers 2`` (one switch per worker, the input sharded
    by flow), with its ``lost`` packets and ``congestion_drops`` (drops for lack of room in the
    middle of a chain; only the NFs' decisions and malformed frames may drop), and whether its
    output pcap holds the same packets per flow, in order, as the one-process run's.
(d) ``batch_mean``: mean packets per delivered batch over all hops of the one-process run.
(e) as root, with tcpreplay: ``fanout_pps`` / ``single_pps``: two switch processes sharing a veth
    through ``PACKET_FANOUT`` against one, forwarding through a trivial inline NF, the traffic sent
    by ``tcpreplay --topspeed``, and the CPU time per forwarded frame of each (``fanout_cpu_ratio``).

    python benchmarks/pipeline.py [--flows 10000] [--rounds 3]

Ratios are the median over rounds of each round's own ratio (the runs it compares back to back),
with best-against-best over all rounds beside them (``*_best``). Last line: one JSON object. Targets: one_process_pps >= 0.5 * nf_ceiling_pps; two_workers_pps >=
1.7 * one_process_pps with lost == 0 and congestion_drops == 0; batch_mean >= 16; fanout_pps /
single_pps >= 1.4 with fanout_cpu_ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from e2actors.manager.manager import resolve_config  # noqa: E402
from e2actors.manager.policy import Policy  # noqa: E402
from e2actors.nf.instance import resolve_pipelet  # noqa: E402
from e2actors.nf.runner import PipeletRunner  # noqa: E402
from e2actors.packet.batch import Batch  # noqa: E402
from e2actors.packet.packet import Packet  # noqa: E402
from e2actors.packet.pcap import open_capture, read_packets  # noqa: E402
from e2actors.packet.traffic import write_pcap  # noqa: E402
from e2actors.runtime.node import tune_gc  # noqa: E402
from e2actors.switch.condition import compile_condition  # noqa: E402
from e2actors.switch.hosts import UNKNOWN, HostTracker  # noqa: E402

POLICY = os.path.join(ROOT, "examples", "seed", "policy.yaml")


async def ceiling(pcap: str, outdir: str) -> float:
    """(a): the running example's NFs called directly, in one loop."""
    tune_gc()
    policy = Policy.load(POLICY)
    runners = {}
    for name, spec in policy.nfs.items():
        cfg = resolve_config(spec.config, policy.base_dir)
        if name == "logger":
            cfg = {**cfg, "pcap": os.path.join(outdir, "ceiling-unsafe.pcap")}
        p = resolve_pipelet(spec.cls, ("e2actors.",))()
        p.name = f"{name}#1"
        r = PipeletRunner(p, clock="packet")
        await r.start(cfg)
        runners[name] = r
    ids, logger, parental, shaper = (runners[n] for n in ("ids", "logger", "parental", "shaper"))
    to_parental = compile_condition(next(e.when for e in policy.edges if e.when and "domain" in e.when)).fn
    raw = list(open_capture(pcap))  # read before the clock starts, as a port's disk reads are not NF work
    hosts = HostTracker()
    held: dict = {}

    def split(pkts: list[Packet], now: float) -> tuple[list[Packet], list[Packet]]:
        """The ``domain`` edge: hold a flow until its host is known (as the switch does)."""
        yes: list[Packet] = []
        no: list[Packet] = []
        for p in pkts:
            h = hosts.lookup(p, now)
            k = p.flow_key
            pend = held.get(k)
            if pend is not None:
                pend.append(p)
                if h is UNKNOWN and len(pend) < 64:
                    continue
                del held[k]
                lst = pend
            elif h is UNKNOWN:
                held[k] = [p]
                continue
            else:
                lst = [p]
            if h is UNKNOWN:
                hosts.give_up(p, now)
                h = None
            (yes if to_parental(lst[0], h) else no).extend(lst)
        return yes, no

    async def push(pkts: list[Packet]) -> None:
        now = time.time()
        out = await ids.run(Batch(pkts))
        if out.get("unsafe"):
            await logger.run(Batch(out["unsafe"]))
        if out.get("safe"):
            yes, no = split(out["safe"], now)
            if yes:
                await parental.run(Batch(yes))
            if no:
                await shaper.run(Batch(no))

    t0 = time.perf_counter()
    batch: list[Packet] = []
    for ts, data, wirelen, lt, _if in raw:
        p = Packet(data, ts, "in", wirelen, lt)
        if p.reason is not None:
            continue
        batch.append(p)
        if len(batch) >= 256:
            await push(batch)
            batch = []
    if batch:
        await push(batch)
    rest = [p for lst in held.values() for p in lst]
    if rest:  # flows whose host never came: the host-less way
        await shaper.run(Batch(rest))
    dt = time.perf_counter() - t0
    for r in runners.values():
        await r.stop()
    return len(raw) / dt


def run_policy(pcap: str, out: str, workers: int) -> dict:
    """(b), (c): ``e2actors run`` in a fresh process; its JSON summary."""
    cmd = [sys.executable, "-m", "e2actors", "run", POLICY, "--traffic", pcap, "--out-pcap", out, "--json"]
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(cmd, cwd=os.path.dirname(out), env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"e2actors run failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def flows_of(pcap: str) -> dict:
    d: dict = collections.defaultdict(list)
    for p in read_packets(pcap):
        d[p.flow_key].append(p.data)
    return d


def pps(s: dict) -> float:
    return s["packets_in"] / max(s["active_seconds"], 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-fanout", action="store_true", help="skip (e) even as root")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2bench-") as d:
        pcap = os.path.join(d, "trace.pcap")
        n = write_pcap(pcap, flows=args.flows, seed=args.seed)
        print(f"trace: {n} frames of {args.flows} flows (seed {args.seed})")
        best: dict[str, float] = {}
        one: dict = {}
        two: dict = {}
        paired: list[tuple[float, float]] = []  # per round: (one vs ceiling, two vs one)
        for k in range(args.rounds):  # interleaved, so load on the machine hits all alike
            c = asyncio.run(ceiling(pcap, d))
            s1 = run_policy(pcap, os.path.join(d, "out1.pcap"), 0)
            s2 = run_policy(pcap, os.path.join(d, "out2.pcap"), 2)
            paired.append((pps(s1) / c, pps(s2) / pps(s1)))
            print(f"round {k + 1}: ceiling {c:,.0f} pps; one process {pps(s1):,.0f} pps; two workers {pps(s2):,.0f} pps "
                  f"(lost {s2['lost']}, congestion drops {s2['congestion_drops']})", flush=True)
            if c > best.get("nf_ceiling_pps", 0):
                best["nf_ceiling_pps"] = c
            if pps(s1) > best.get("one_process_pps", 0):
                best["one_process_pps"], one = pps(s1), s1
            if pps(s2) > best.get("two_workers_pps", 0) or not two:
                best["two_workers_pps"], two = pps(s2), s2
        f1, f2 = flows_of(os.path.join(d, "out1.pcap")), flows_of(os.path.join(d, "out2.pcap"))
        same = f1 == f2
        if not same:
            diff = [k for k in set(f1) | set(f2) if f1.get(k) != f2.get(k)]
            print(f"outputs differ in {len(diff)} flows, e.g. {[(len(f1.get(k, ())), len(f2.get(k, ()))) for k in diff[:5]]}; "
                  f"packets {sum(map(len, f1.values()))} vs {sum(map(len, f2.values()))} "
                  f"(summaries: {one['packets_out']} vs {two['packets_out']})")
        res = {k: round(v) for k, v in best.items()}
        # The ratios: the median over rounds of each round's own ratio (its runs back to back, on
        # the machine as it was then), and, for comparison, best against best over all rounds.
        res["one_vs_ceiling"] = round(statistics.median(r[0] for r in paired), 3)
        res["two_vs_one"] = round(statistics.median(r[1] for r in paired), 3)
        res["one_vs_ceiling_best"] = round(best["one_process_pps"] / best["nf_ceiling_pps"], 3)
        res["two_vs_one_best"] = round(best["two_workers_pps"] / best["one_process_pps"], 3)
        res["lost"] = two["lost"] + one["lost"]
        res["congestion_drops"] = two["congestion_drops"] + one["congestion_drops"]
        res["same_output_per_flow"] = same
        res["batch_mean"] = one["batch_mean"]
        res["batches"] = one["batches"]
        if os.geteuid() == 0 and not args.no_fanout:
            from pipeline_fanout import measure_fanout  # noqa: PLC0415  (root only)

            res.update(measure_fanout())
        print(json.dumps(res))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
