"""The plan: policy + hardware -> sizing -> instance graph -> placement -> switch tables.

>>> policy = Policy.load("examples/seed/policy.yaml")
>>> hardware = Hardware.load("examples/seed/hardware.yaml")
>>> plan = make_plan(policy, hardware)                  # solver="heuristic"
>>> plan.sizing.instances, plan.placement.assignment, plan.inter_server_pps
>>> tables = plan.tables()                              # server -> SwitchTable
>>> bigger = plan.scale("ids", 4)                       # incremental: nothing placed moves
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import InstanceGraph, instance_name
from e2actors.manager.placement import SOLVERS, Placement, PlacementError, place, place_incremental
from e2actors.manager.policy import IN, OUT, Policy
from e2actors.manager.routing import switch_tables
from e2actors.manager.shards import place_shards, shard_targets
from e2actors.manager.sizing import DEFAULT_UTILIZATION, Fractions, Sizing, check_capacity, min_cores, size
from e2actors.runtime.ref import ActorRef
from e2actors.switch.table import SwitchTable

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """Everything the manager decided, ready to deploy."""

    policy: Policy
    hardware: Hardware
    sizing: Sizing
    graph: InstanceGraph
    placement: Placement
    #: With ``solver="all"``: name -> {inter_server_pps, seconds, optimal, feasible, rank} (rank 1:
    #: the kept placement; infeasible rows rank last and carry ``error``).
    solvers: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: NF -> the next instance number :meth:`scale` hands out (numbers are never reused, so a
    #: draining instance and a new one never share a name).
    next_index: dict[str, int] = field(default_factory=dict)

    # --- views -----------------------------------------------------------------------------------
    @property
    def assignment(self) -> dict[str, str]:
        """Instance -> server (``in``/``out`` included)."""
        return self.placement.assignment

    @property
    def inter_server_pps(self) -> float:
        return self.placement.cost

    @property
    def total_pps(self) -> float:
        return self.graph.total_pps

    def instances_of(self, nf: str) -> list[str]:
        return self.graph.of(nf)

    def server_use(self) -> dict[str, dict[str, Any]]:
        """Per server: cores, cores used, instances, NIC bits/s used and available."""
        nic = self.graph.cut_bps(self.assignment)
        out: dict[str, dict[str, Any]] = {}
        for name, s in self.hardware.servers.items():
            insts = [i for i in self.placement.on(name) if i not in (IN, OUT)]
            out[name] = {"cores": s.cores, "used": sum(self.graph.cores[i] for i in insts), "instances": insts,
                         "nic_bps": None if math.isinf(s.nic_bps) else s.nic_bps,
                         "nic_used_bps": round(nic.get(name, 0.0), 3)}
        return out

    def tables(self, version: int = 1, refs: Mapping[str, ActorRef] | None = None,
               switches: Mapping[str, ActorRef] | None = None,
               states: Mapping[str, str] | None = None, clock: str = "wall") -> dict[str, SwitchTable]:
        """Each server's :class:`SwitchTable` (see :mod:`e2actors.manager.routing`)."""
        return switch_tables(self.policy, self.assignment, self.hardware, version, refs, switches, states, clock)

    # --- scaling ---------------------------------------------------------------------------------
    def scale(self, nf: str, n: int) -> Plan:
        """The plan with ``n`` instances of ``nf``: new instances are placed incrementally (nothing
        placed moves); scaling in removes the highest-numbered instances."""
        if nf not in self.policy.nfs:
            raise KeyError(f"no NF {nf!r}")
        spec = self.policy.nfs[nf]
        if n < 1 or (spec.max_instances is not None and n > spec.max_instances):
            raise PlacementError(f"{nf}: {n} instances is outside [1, {spec.max_instances or 'inf'}]")
        counts = {k: [int(i.partition('#')[2]) for i in self.graph.of(k)] for k in self.policy.nfs}
        have = counts[nf]
        if n > len(have):
            top = max([*have, self.next_index.get(nf, 1) - 1])
            counts[nf] = have + list(range(top + 1, top + 1 + n - len(have)))
        else:
            counts[nf] = have[:n]
        sizing = self.sizing.resized({k: len(v) for k, v in counts.items()})
        graph = InstanceGraph.build(self.policy, sizing, counts, self.graph.pinned)
        new = [instance_name(nf, k) for k in counts[nf] if k not in have]
        kept = {i: s for i, s in self.assignment.items() if i in set(graph.instances)}
        if self.hardware.shards:
            placement = place_shards(graph, self.hardware, kept)
        else:
            placement = place_incremental(graph, self.hardware, kept, new)
        nxt = dict(self.next_index)
        nxt[nf] = max([*counts[nf], *have, nxt.get(nf, 1) - 1]) + 1
        return Plan(self.policy, self.hardware, sizing, graph, placement, {}, list(self.notes), nxt)

    # --- output ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "policy": self.policy.name or self.policy.file,
            "sizing": dict(self.sizing.instances),
            "load_pps": {n: round(x, 3) for n, x in self.sizing.load_pps.items()},
            "utilization": {n: round(x, 4) for n, x in self.sizing.utilization(self.policy).items()},
            "placement": dict(self.assignment),
            "servers": {n: s.cores for n, s in self.hardware.servers.items()},
            "server_use": self.server_use(),
            "instance_edges": self.graph.edge_list(),
            "inter_server_pps": round(self.inter_server_pps, 3),
            "total_pps": round(self.total_pps, 3),
            "solver": self.placement.solver,
            "seconds": round(self.placement.seconds, 6),
            "optimal": self.placement.optimal,
            "feasible": self.placement.feasible,
        }
        if self.solvers:
            d["solvers"] = self.solvers
        if self.notes:
            d["notes"] = list(self.notes)
        return d

    def summary(self) -> str:
        """A readable report: instances per NF, each server's instances and cores, the traffic."""
        lines = []
        pol = self.policy
        lines.append(f"policy {pol.name or pol.file}: {len(pol.nfs)} NFs, offered {pol.total_pps:,.0f} pps; "
                     f"solver {self.placement.solver} ({self.placement.seconds * 1000:.1f} ms"
                     + (", optimal" if self.placement.optimal else "") + ")")
        lines.append("")
        w = max([len(n) for n in pol.nfs] + [2])
        lines.append(f"{'NF':<{w}}  {'load pps':>12}  {'cost pps':>10}  {'inst':>4}  {'util':>5}  class")
        util = self.sizing.utilization(pol)
        for n, spec in pol.nfs.items():
            flag = " (inline)" if spec.inline else ""
            lines.append(f"{n:<{w}}  {self.sizing.load_pps[n]:>12,.0f}  {spec.cost_pps:>10,.0f}  "
                         f"{self.sizing.instances[n]:>4}  {util[n] * 100:>4.0f}%  {spec.cls}{flag}")
        lines.append("")
        use = self.server_use()
        ws = max([len(s) for s in use] + [6])
        lines.append(f"{'server':<{ws}}  {'cores':>9}  instances")
        for s, u in use.items():
            ports = [p for p in (IN, OUT) if self.hardware.ports[p].server == s]
            extra = f"  [ports: {', '.join(ports)}]" if ports else ""
            lines.append(f"{s:<{ws}}  {u['used']:>4}/{u['cores']:<4}  {', '.join(u['instances']) or '-'}{extra}")
        lines.append("")
        tot = self.total_pps
        share = self.inter_server_pps / tot * 100 if tot else 0.0
        lines.append(f"traffic crossing servers: {self.inter_server_pps:,.0f} pps of {tot:,.0f} pps "
                     f"between instances ({share:.1f}%)")
        if not self.placement.feasible:
            lines.append("WARNING: the placement exceeds a server's cores or NIC bandwidth: "
                         + "; ".join(self.placement.violations))
        if self.solvers:
            lines.append("")
            lines.append(f"{'solver':<10}  {'feasible':>8}  {'crossing pps':>14}  {'seconds':>9}  optimal")
            for name, r in sorted(self.solvers.items(), key=lambda kv: kv[1].get("rank", 0)):
                opt = {True: "yes", False: "no", None: "-"}[r.get("optimal")]
                cost = f"{r['inter_server_pps']:>14,.0f}" if r["feasible"] else f"{'-':>14}"
                kept = "  (kept)" if r.get("rank") == 1 else ""
                lines.append(f"{name:<10}  {'yes' if r['feasible'] else 'no':>8}  {cost}  {r['seconds']:>9.4f}  {opt}{kept}")
            for name, r in self.solvers.items():
                if not r["feasible"]:
                    lines.append(f"{name}: {r.get('error', 'its placement does not fit')}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The instance graph in Graphviz DOT, one cluster per server; crossing edges in red."""

        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        out = ["digraph plan {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor=white];']
        where = self.assignment
        for k, (s, srv) in enumerate(self.hardware.servers.items()):
            out.append(f"  subgraph cluster_{k} {{")
            used = sum(self.graph.cores[i] for i in self.placement.on(s))
            out.append(f"    label={q(f'{s} ({used}/{srv.cores} cores)')}; style=rounded; color=gray50;")
            for i in self.graph.instances:
                if where.get(i) == s:
                    attrs = "shape=ellipse, fillcolor=lightgray" if i in (IN, OUT) else ""
                    out.append(f"    {q(i)}" + (f" [{attrs}]" if attrs else "") + ";")
            out.append("  }")
        for (u, v), w in self.graph.edges.items():
            cross = where[u] != where[v]
            style = ", color=red, penwidth=2" if cross else ""
            out.append(f"  {q(u)} -> {q(v)} [label={q(_pps(w))}{style}];")
        out.append(f"  label={q(html.escape(f'crossing {_pps(self.inter_server_pps)} of {_pps(self.total_pps)}'))};")
        out.append("}")
        return "\n".join(out) + "\n"


def _pps(x: float) -> str:
    for unit, k in (("Mpps", 1e6), ("kpps", 1e3)):
        if x >= k:
            return f"{x / k:.3g} {unit}"
    return f"{x:.3g} pps"


def make_plan(policy: Policy, hardware: Hardware | None = None, load: float | None = None,
              solver: str = "heuristic", *, fractions: Fractions | None = None,
              target_utilization: float = DEFAULT_UTILIZATION, seed: int = 0,
              time_limit: float = 10.0) -> Plan:
    """Size, build the instance graph and place it. ``load`` (pps) rescales the classes' offered
    load; ``fractions`` (e.g. from profiling) override edge fractions; ``solver`` is a name from
    :data:`~e2actors.manager.placement.SOLVERS` or ``all`` (every solver is run and compared; the
    plan keeps the cheapest feasible placement). Raises :class:`PolicyError` when the hardware
    cannot carry the load even at full use, :class:`PlacementError` when it cannot be placed
    (:class:`~e2actors.manager.placement.Infeasible` when no placement fits the cores or a NIC:
    it names the hardware entry that binds)."""
    if hardware is None:
        hardware = Hardware.single()
    if load is not None:
        policy = policy.with_load(load)
    notes: list[str] = []
    check_capacity(policy, hardware, fractions)
    sizing = size(policy, target_utilization, fractions)
    if min_cores(policy, sizing) > hardware.total_cores:
        sizing = size(policy, 1.0, fractions)
        notes.append(f"the servers' {hardware.total_cores} cores cannot hold instances at "
                     f"{target_utilization:.0%} utilization; sized for full use instead")
    for n, k in sizing.capped.items():
        notes.append(f"{n} would need {k} instances; capped at its max {sizing.instances[n]}")
    pinned = {p: hardware.ports[p].server for p in (IN, OUT)}
    if hardware.shards:
        sizing = sizing.resized(shard_targets(policy, sizing.instances, hardware.shards))
        graph = InstanceGraph.build(policy, sizing, pinned=pinned)
        return Plan(policy, hardware, sizing, graph, place_shards(graph, hardware), {}, notes)
    graph = InstanceGraph.build(policy, sizing, pinned=pinned)
    solvers: dict[str, dict[str, Any]] = {}
    if solver == "all":
        best: Placement | None = None
        first_error: PlacementError | None = None
        for name in SOLVERS:
            t0 = time.perf_counter()
            try:
                pl = place(graph, hardware, name, seed=seed, time_limit=time_limit)
            except PlacementError as e:
                first_error = first_error or e
                solvers[name] = {"inter_server_pps": None, "seconds": round(time.perf_counter() - t0, 6),
                                 "optimal": None, "feasible": False, "error": str(e)}
                continue
            solvers[name] = {"inter_server_pps": round(pl.cost, 3), "seconds": round(time.perf_counter() - t0, 6),
                             "optimal": pl.optimal if name == "milp" else None, "feasible": pl.feasible}
            if pl.feasible and (best is None or pl.cost < best.cost - 1e-9):
                best = pl  # ties keep the earlier solver: heuristic, then milp
        if best is None:  # no solver placed it: the same error every solver gives
            raise first_error or PlacementError("no solver found a placement that fits")
        # rank: feasible plans by cost (ties in solver order, the kept one first), infeasible last
        order = sorted(solvers, key=lambda k: (not solvers[k]["feasible"], k != best.solver,
                                               solvers[k]["inter_server_pps"] or 0.0, list(SOLVERS).index(k)))
        for rank, k in enumerate(order, 1):
            solvers[k]["rank"] = rank
        placement = best
    else:
        placement = place(graph, hardware, solver, seed=seed, time_limit=time_limit)
    return Plan(policy, hardware, sizing, graph, placement, solvers, notes)
