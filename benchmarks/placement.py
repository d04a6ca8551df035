"""Placement solvers compared on a fixed seeded suite of random policies and clusters.

Small suite: 10 to 30 instances on 3 to 6 servers with 25% spare cores (``heuristic``, ``milp``,
``random``, ``first-fit``); large case: 2,000 instances on 100 servers with 10% spare (all but
``milp``). Every case is a policy of 1-3 (large: 40) chains of 4 to 8 NFs with branches and joins
(:mod:`e2actors.manager.synth`), sized, spread into an instance graph and placed; the cost is the
packets/s crossing servers. The external ports sit on one server, so traffic from ``in`` and to
``out`` largely crosses whatever the solver does: the ratios to the baselines shrink as chains get
longer (more traffic a good placement can keep local) and as servers have more spare cores.

    python benchmarks/placement.py [--small N] [--milp-seconds S] [--quick]

Ratios are geometric means of per-case cost ratios: ``heuristic_vs_optimal`` over the small cases
where MILP proved optimality (``milp_optimal`` counts them; the others are listed with their
ratio to MILP's best), ``heuristic_vs_random`` and ``heuristic_vs_first_fit`` over every case
(small and large). ``large_seconds`` is the heuristic's time on the large case.

Last line: one JSON object with ``heuristic_vs_optimal``, ``heuristic_vs_random``,
``heuristic_vs_first_fit``, ``large_seconds`` (targets: <= 1.05, <= 0.5, <= 1.0, <= 5).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

from e2actors.manager.instances import InstanceGraph
from e2actors.manager.placement import place
from e2actors.manager.sizing import size
from e2actors.manager.synth import random_case


def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def graph_of(policy, hw) -> InstanceGraph:  # type: ignore[no-untyped-def]
    return InstanceGraph.build(policy, size(policy), pinned={p: hw.ports[p].server for p in ("in", "out")})


def run_case(name: str, policy, hw, solvers: list[str], milp_seconds: float) -> dict:  # type: ignore[no-untyped-def]
    g = graph_of(policy, hw)
    row = {"case": name, "instances": len(g.instances) - 2, "servers": len(hw.servers),
           "instance_edges": len(g.edges), "total_pps": round(g.total_pps)}
    for s in solvers:
        t0 = time.perf_counter()
        pl = place(g, hw, s, seed=1, time_limit=milp_seconds if s == "milp" else 60.0)
        dt = time.perf_counter() - t0
        if not pl.feasible:
            raise SystemExit(f"{name}: {s} returned an infeasible placement")
        row[s] = {"cost": round(pl.cost), "seconds": round(dt, 4), **({"optimal": pl.optimal} if s == "milp" else {})}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=16, help="small cases (default 16)")
    ap.add_argument("--milp-seconds", type=float, default=10.0, help="MILP time limit per case")
    ap.add_argument("--quick", action="store_true", help="4 small cases, 5 s MILP limit")
    args = ap.parse_args()
    if args.quick:
        args.small, args.milp_seconds = 4, 5.0
    rows = []
    print(f"{'case':<10} {'inst':>5} {'srv':>4} {'heuristic':>12} {'milp':>12} {'opt':>4} {'random':>12} "
          f"{'first-fit':>12} {'h sec':>7} {'milp sec':>8}")
    for k in range(args.small):
        rng = random.Random(1000 + k)
        n, m = rng.randint(10, 30), rng.randint(3, 6)
        policy, hw = random_case(1000 + k, n, m, chains=rng.randint(1, 3), chain_len=(4, 8), slack=1.25)
        r = run_case(f"small-{k}", policy, hw, ["heuristic", "milp", "random", "first-fit"], args.milp_seconds)
        rows.append(r)
        print(f"{r['case']:<10} {r['instances']:>5} {r['servers']:>4} {r['heuristic']['cost']:>12,} "
              f"{r['milp']['cost']:>12,} {'yes' if r['milp']['optimal'] else 'no':>4} {r['random']['cost']:>12,} "
              f"{r['first-fit']['cost']:>12,} {r['heuristic']['seconds']:>7.3f} {r['milp']['seconds']:>8.2f}",
              flush=True)
    policy, hw = random_case(7, 2000, 100, chains=40, chain_len=(4, 8), max_per_nf=12, slack=1.1)
    big = run_case("large", policy, hw, ["heuristic", "random", "first-fit"], 0)
    print(f"{'large':<10} {big['instances']:>5} {big['servers']:>4} {big['heuristic']['cost']:>12,} "
          f"{'-':>12} {'-':>4} {big['random']['cost']:>12,} {big['first-fit']['cost']:>12,} "
          f"{big['heuristic']['seconds']:>7.3f} {'-':>8}   ({big['instance_edges']:,} instance edges)")
    opt = [r for r in rows if r["milp"]["optimal"]]
    vs_opt = geomean([r["heuristic"]["cost"] / r["milp"]["cost"] for r in opt if r["milp"]["cost"]])
    not_opt = [r for r in rows if not r["milp"]["optimal"]]
    if not_opt:
        print("MILP hit its time limit on: " + ", ".join(
            f"{r['case']} (heuristic/MILP best {r['heuristic']['cost'] / r['milp']['cost']:.3f})" for r in not_opt))
    everything = rows + [big]
    result = {
        "heuristic_vs_optimal": round(vs_opt, 4),
        "heuristic_vs_random": round(geomean([r["heuristic"]["cost"] / r["random"]["cost"] for r in everything]), 4),
        "heuristic_vs_first_fit": round(geomean([r["heuristic"]["cost"] / r["first-fit"]["cost"] for r in everything]), 4),
        "large_seconds": big["heuristic"]["seconds"],
        "milp_optimal": f"{len(opt)}/{len(rows)}",
        "small_cases": len(rows),
        "large_instances": big["instances"],
        "large_servers": big["servers"],
        "large_vs_random": round(big["heuristic"]["cost"] / big["random"]["cost"], 4),
        "large_vs_first_fit": round(big["heuristic"]["cost"] / big["first-fit"]["cost"], 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
