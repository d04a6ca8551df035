"""``e2actors plan POLICY --hardware HW``: a dry run of the manager's planning.

Prints the sizing (instances per NF), which server runs what, per-server core use and the traffic
crossing servers against the total; ``--json`` prints one JSON object instead (keys ``sizing``,
``placement``, ``servers``, ``instance_edges``, ``inter_server_pps``, ``total_pps``, and ``solvers``
with ``--solver all``: each solver's cost, time, feasibility and rank); ``--dot``/``--png`` draw
the instance graph with servers as clusters. Exit status 0, or 2 with the reason on stderr:
``FILE:LINE: reason`` for a bad policy or hardware file, and for a placement that cannot fit
(the hardware entry that binds: ``hw.yaml:3: NIC of server s1: at least 11.2 Gbit/s must cross
it ..., it has 10 Gbit/s``), whichever solver ran.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import subprocess
import sys

from e2actors.errors import E2Error
from e2actors.manager.hardware import Hardware
from e2actors.manager.placement import SOLVERS
from e2actors.manager.plan import make_plan
from e2actors.manager.policy import Policy, parse_count

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", help="policy file (YAML)")
    p.add_argument("--hardware", metavar="HW", help="hardware file (YAML); default: one server with enough cores")
    p.add_argument("--load", metavar="PPS", help="offered load in packets/s (all classes scaled to it; e.g. 2M)")
    p.add_argument("--profile", metavar="PCAP", help="measure edge fractions by running this sample through the "
                                                     "policy's pipelets and conditions")
    p.add_argument("--solver", default="heuristic", help=f"placement solver: {', '.join(SOLVERS)}, or all "
                                                          "(compare them; default heuristic)")
    p.add_argument("--utilization", type=float, default=0.8, help="target utilization for sizing (default 0.8)")
    p.add_argument("--time-limit", type=float, default=10.0,
                   help="seconds a solver may take (milp; also the search for a placement within the NICs, "
                        "or the proof that none exists)")
    p.add_argument("--seed", type=int, default=0, help="seed for randomized solvers")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--dot", metavar="FILE", help="write the instance graph as Graphviz DOT")
    p.add_argument("--png", metavar="FILE", help="draw the instance graph as PNG (needs Graphviz's dot)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) on lint warnings: edges never taken, outputs with no edge, stateful NFs "
                        "without affinity, traffic of the --profile sample that no class takes")
    p.add_argument("--no-check-classes", action="store_true",
                   help="do not import NF classes (descriptions must then give ports, cost, ...)")
    p.add_argument("--no-check-conditions", action="store_true",
                   help="do not compile edge conditions (e.g. metadata or domain tests without the switch's "
                        "condition language installed)")


def run(args: argparse.Namespace) -> int:
    def fail(msg: str) -> int:
        print(f"e2actors plan: {msg}", file=sys.stderr)
        return 2

    if args.solver != "all" and args.solver not in SOLVERS:
        return fail(f"unknown solver {args.solver!r} (solvers: {', '.join(SOLVERS)}, all)")
    base = os.path.dirname(os.path.abspath(args.policy))  # (pipelet modules next to the policy)
    if base not in sys.path:
        sys.path.insert(1, base)
    try:
        policy = Policy.load(args.policy, check_classes=not args.no_check_classes,
                             check_conditions=not args.no_check_conditions)
        hardware = Hardware.load(args.hardware) if args.hardware else None
        load = parse_count(args.load, "--load") if args.load else None
        fractions = None
        if args.profile:
            from e2actors.manager.profile import profile

            fractions = profile(policy, args.profile)
        plan = make_plan(policy, hardware, load, args.solver, fractions=fractions,
                         target_utilization=args.utilization, seed=args.seed, time_limit=args.time_limit)
    except ValueError as e:
        return fail(str(e))
    except (E2Error, OSError) as e:
        return fail(str(e))
    if args.dot:
        try:
            with open(args.dot, "w", encoding="utf-8") as f:
                f.write(plan.to_dot())
        except OSError as e:
            return fail(f"cannot write {args.dot}: {e.strerror or e}")
    if args.png:
        dot = shutil.which("dot")
        if dot is None:
            return fail("--png needs Graphviz's `dot`, which is not installed (Debian: apt-get install graphviz); "
                        "--dot FILE writes the graph as text instead")
        r = subprocess.run([dot, "-Tpng", "-o", args.png], input=plan.to_dot().encode(), capture_output=True)
        if r.returncode:
            return fail(f"dot failed: {r.stderr.decode(errors='replace').strip()}")
    from e2actors.manager.lint import lint

    sample = None
    if args.profile:
        from e2actors.packet.pcap import read_packets

        sample = read_packets(args.profile)
    warnings = lint(policy, sample)
    for w in warnings:
        print(w, file=sys.stderr)
    if args.json:
        d = plan.to_json()
        d["warnings"] = [str(w) for w in warnings]
        print(json.dumps(d))
    else:
        print(plan.summary())
    if warnings and args.strict:
        return fail(f"{len(warnings)} warning(s) and --strict")
    return 0
