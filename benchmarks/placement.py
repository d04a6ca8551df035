"""Placement solvers compared on a fixed seeded suite of random policies and clusters.

Small suite: 10 to 30 instances on 3 to 6 servers with 25% spare cores (``heuristic``, ``milp``,
``random``, ``first-fit``); large case: 2,000 instances on 100 servers with 10% spare (all but
``milp``). Every case is a policy of 1-3 (large: 40) chains of 4 to 8 NFs with branches and joins
(:mod:`e2actors.manager.synth`), sized, spread into an instance graph and placed; the cost is the
packets/s crossing servers. The external ports sit on one server, so traffic from ``in`` and to
``out`` largely crosses whatever the solver does: the ratios to the baselines shrink as chains get
longer (more traffic a good placement can keep local) and as servers have more spare cores.

The heuristic's refinement, measured against its own improving-only variant in the same run
(both without restarts, from the same packing): ``fm`` is the default (descent, then
Fiduccia-Mattheyses passes), ``improve`` the descent alone. On the small cases both are compared
with the MILP optimum; on three trap cases (random policies where improving moves stop early)
too; on three large cases (2,000-3,000 instances) with each other. NIC cases: six random policies
whose port server's NIC binds (the placement with the fewest packets crossing overloads it);
the heuristic must fit every NIC and is compared with the MILP optimum under the NIC limits.

    python benchmarks/placement.py [--small N] [--milp-seconds S] [--quick]

Ratios are geometric means of per-case cost ratios: ``heuristic_vs_optimal`` over the small cases
where MILP proved optimality (``milp_optimal`` counts them; the others are listed with their
ratio to MILP's best), ``heuristic_vs_random`` and ``heuristic_vs_first_fit`` over every case
(small and large). ``large_seconds`` is the heuristic's time on the large case.
``fm_vs_optimal``/``improve_vs_optimal``: the refinements without restarts on the small cases MILP
solved; ``trap_*``: per trap case; ``large_fm_vs_improve``: geometric mean over the large cases,
``large_refine`` per case (cut ratio and seconds of each); ``nic_feasible``: NIC cases the
heuristic placed within every NIC, ``nic_vs_optimal`` its cost against MILP's there.

Last line: one JSON object with ``heuristic_vs_optimal``, ``heuristic_vs_random``,
``heuristic_vs_first_fit``, ``large_seconds`` (targets: <= 1.05, <= 0.5, <= 1.0, <= 5),
``fm_vs_optimal`` (<= ``improve_vs_optimal``), ``trap_fm_vs_optimal`` (1.0 each),
``large_fm_vs_improve`` (< 1.0; seconds about 1 or less per case) and ``nic_feasible`` (6/6).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

from e2actors.manager.hardware import Hardware, Server
from e2actors.manager.instances import InstanceGraph
from e2actors.manager.placement import Problem, _milp_solve, heuristic, place
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


def refine_costs(g: InstanceGraph, hw: Hardware) -> dict:  # type: ignore[type-arg]
    """Cut and seconds of the heuristic with FM and with improving moves only (no restarts)."""
    p = Problem.build(g, hw)
    out = {}
    for r in ("fm", "improve"):
        t0 = time.perf_counter()
        srv, _ = heuristic(p, refine=r, restarts=False, time_limit=60.0)
        out[r] = {"cost": p.cost(srv), "seconds": round(time.perf_counter() - t0, 4)}
        assert not p.check(srv), (r, p.check(srv))
    return out


# trap cases for improving moves (found by search; ``random_case`` arguments)
TRAPS = [(73, 10, 2, 2, 1.0), (21, 8, 3, 2, 1.2), (76, 11, 3, 2, 1.0)]
# NIC-bound cases: random_case arguments and the NIC bits/s of every server
NIC_CASES = [(8, 11, 3, 2, 1.0, 8.002e9), (54, 10, 3, 2, 1.2, 7.796e9), (76, 13, 3, 2, 1.0, 7.031e9),
             (110, 14, 4, 1, 1.2, 9.558e9), (160, 9, 4, 2, 1.2, 6.348e9), (173, 13, 3, 2, 1.0, 8.324e9)]
LARGE = [(7, 2000, 100, 40, 12, 1.1), (4, 2000, 200, 200, 4, 1.2), (3, 3000, 100, 60, 12, 1.02)]


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
    # --- refinement: FM against improving moves only ---------------------------------------------
    small_refine = []
    for k, r in enumerate(rows):
        rng = random.Random(1000 + k)
        n, m = rng.randint(10, 30), rng.randint(3, 6)
        policy, hw = random_case(1000 + k, n, m, chains=rng.randint(1, 3), chain_len=(4, 8), slack=1.25)
        if r["milp"]["optimal"] and r["milp"]["cost"]:
            rc = refine_costs(graph_of(policy, hw), hw)
            small_refine.append((rc["fm"]["cost"] / r["milp"]["cost"], rc["improve"]["cost"] / r["milp"]["cost"]))
    traps = []
    for seed, n, m, chains, slack in TRAPS:
        policy, hw = random_case(seed, n, m, chains=chains, slack=slack)
        g = graph_of(policy, hw)
        p = Problem.build(g, hw)
        srv, status = _milp_solve(p, 60.0)
        assert srv is not None and status == "optimal"
        rc = refine_costs(g, hw)
        traps.append({"case": f"trap-{seed}", "instances": p.n - 2, "servers": p.m,
                      "fm": round(rc["fm"]["cost"] / p.cost(srv), 4), "improve": round(rc["improve"]["cost"] / p.cost(srv), 4)})
        print(f"{traps[-1]['case']:<10} {traps[-1]['instances']:>5} {p.m:>4}  improving-only {traps[-1]['improve']:.3f}x "
              f"the optimum, FM {traps[-1]['fm']:.3f}x", flush=True)
    large = []
    for seed, n, m, chains, per, slack in LARGE:
        policy, hw = random_case(seed, n, m, chains=chains, chain_len=(4, 8), max_per_nf=per, slack=slack)
        g = graph_of(policy, hw)
        rc = refine_costs(g, hw)
        large.append({"instances": len(g.instances) - 2, "servers": m, "fm_vs_improve": round(rc["fm"]["cost"] / rc["improve"]["cost"], 4),
                      "fm_seconds": rc["fm"]["seconds"], "improve_seconds": rc["improve"]["seconds"]})
        print(f"large-{seed:<4} {large[-1]['instances']:>5} {m:>4}  FM / improving-only cut {large[-1]['fm_vs_improve']:.4f}; "
              f"{rc['fm']['seconds']:.2f} s vs {rc['improve']['seconds']:.2f} s", flush=True)
    nic_ok, nic_ratio = 0, []
    for seed, n, m, chains, slack, nic in NIC_CASES:
        policy, hw = random_case(seed, n, m, chains=chains, slack=slack)
        hw = Hardware([Server(s.name, s.cores, nic) for s in hw.servers.values()])
        g = graph_of(policy, hw)
        pl = place(g, hw, "heuristic")
        fits = all(v <= nic * (1 + 1e-9) for v in g.cut_bps(pl.assignment).values())
        nic_ok += fits
        best = place(g, hw, "milp", time_limit=60.0)
        if best.optimal:
            nic_ratio.append(pl.cost / best.cost)
        print(f"nic-{seed:<6} {n:>5} {m:>4}  within every NIC: {'yes' if fits else 'NO'}; heuristic / MILP optimum "
              f"{pl.cost / best.cost:.4f}", flush=True)
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
        "fm_vs_optimal": round(geomean([a for a, _b in small_refine]), 4),
        "improve_vs_optimal": round(geomean([b for _a, b in small_refine]), 4),
        "fm_optimal_cases": f"{sum(a <= 1 + 1e-6 for a, _b in small_refine)}/{len(small_refine)}",
        "improve_optimal_cases": f"{sum(b <= 1 + 1e-6 for _a, b in small_refine)}/{len(small_refine)}",
        "trap_fm_vs_optimal": [t["fm"] for t in traps],
        "trap_improve_vs_optimal": [t["improve"] for t in traps],
        "large_fm_vs_improve": round(geomean([x["fm_vs_improve"] for x in large]), 4),
        "large_refine": large,
        "nic_feasible": f"{nic_ok}/{len(NIC_CASES)}",
        "nic_vs_optimal": round(geomean(nic_ratio), 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
