"""Sizing: the load each NF receives, and how many instances it needs.

Each class's offered load enters at ``in`` and flows down the DAG: an edge takes ``fraction`` of
the traffic entering its source (given in the policy, measured by
:func:`e2actors.manager.profile.profile`, or, for the edges of a source that have none, an equal
share of what the given fractions leave). Then, per NF::

    instances = max(min, ceil(load_pps / (target_utilization * cost_pps)))   (at most max)

Inline NFs are sized the same way (their instances take no core of their own).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from e2actors.manager.policy import DROP, IN, OUT, Policy, PolicyError

__all__ = ["Sizing", "Fractions", "edge_fractions", "size", "check_capacity", "min_cores"]

#: ``(class name, edge index) -> fraction`` (or ``edge index -> fraction`` for every class).
Fractions = Mapping[Any, float]

DEFAULT_UTILIZATION = 0.8


@dataclass
class Sizing:
    """Loads and instance counts. ``edge_pps``/``edge_bps`` are keyed by policy edge index;
    ``fractions`` by ``(class, edge index)`` (what was used)."""

    instances: dict[str, int]
    load_pps: dict[str, float]
    load_bps: dict[str, float]
    edge_pps: dict[int, float]
    edge_bps: dict[int, float]
    fractions: dict[tuple[str, int], float]
    target_utilization: float = DEFAULT_UTILIZATION
    capped: dict[str, int] = field(default_factory=dict)  # NF -> instances it would need beyond max

    #: Policy edge index -> the node it leads to (``out_pps`` sums the edges into ``out``).
    edge_targets: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def out_pps(self) -> float:
        return sum(p for i, p in self.edge_pps.items() if self.edge_targets.get(i) == OUT)

    def resized(self, instances: Mapping[str, int]) -> Sizing:
        """The same loads with other instance counts (scaling, updates, shards)."""
        return dataclasses.replace(self, instances=dict(instances), capped=dict(self.capped))

    def utilization(self, policy: Policy) -> dict[str, float]:
        """Per NF: load over what its instances sustain."""
        return {n: self.load_pps[n] / (self.instances[n] * policy.nfs[n].cost_pps) if self.instances[n] else 0.0
                for n in self.instances}


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def edge_fractions(policy: Policy, fractions: Fractions | None = None) -> dict[tuple[str, int], float]:
    """The fraction of each edge for each class: given (``fractions`` first, then the policy's),
    else an equal share of what the given ones leave at that source."""
    fractions = fractions or {}
    out: dict[tuple[str, int], float] = {}
    for c in policy.classes:
        for node in [IN, *policy.nfs]:
            es = [e for e in policy.edges_from(node) if e.applies_to(c.name)]
            given: dict[int, float] = {}
            for e in es:
                f = fractions.get((c.name, e.index), fractions.get(e.index, e.fraction))
                if f is not None:
                    given[e.index] = float(f)
            rest = [e for e in es if e.index not in given]
            left = max(0.0, 1.0 - sum(given.values()))
            for e in es:
                out[(c.name, e.index)] = given.get(e.index, left / len(rest) if rest else 0.0)
    return out


def size(policy: Policy, target_utilization: float = DEFAULT_UTILIZATION,
         fractions: Fractions | None = None, full_use: bool = False) -> Sizing:
    """Loads through the DAG and instance counts (``full_use``: as if instances ran at 100%)."""
    if not 0 < target_utilization <= 1:
        raise ValueError("target_utilization is in (0, 1]")
    fr = edge_fractions(policy, fractions)
    order = [n for n in nx.topological_sort(policy.graph) if n not in (OUT, DROP)]
    load_pps = {n: 0.0 for n in policy.nfs}
    load_bps = {n: 0.0 for n in policy.nfs}
    edge_pps = {e.index: 0.0 for e in policy.edges}
    edge_bps = {e.index: 0.0 for e in policy.edges}
    for c in policy.classes:
        size_bits = c.load_bps / c.load_pps if c.load_pps else 0.0
        inflow = {n: 0.0 for n in order}
        inflow[IN] = c.load_pps
        for node in order:
            t = inflow[node]
            if node != IN:
                load_pps[node] += t
                load_bps[node] += t * size_bits
            if t <= 0:
                continue
            for e in policy.edges_from(node):
                if not e.applies_to(c.name):
                    continue
                x = t * fr[(c.name, e.index)]
                edge_pps[e.index] += x
                edge_bps[e.index] += x * size_bits
                if e.target in inflow:
                    inflow[e.target] += x
    util = 1.0 if full_use else target_utilization
    instances: dict[str, int] = {}
    capped: dict[str, int] = {}
    for n, spec in policy.nfs.items():
        k = max(spec.min_instances, _ceil(load_pps[n] / (util * spec.cost_pps)))
        if spec.max_instances is not None and k > spec.max_instances:
            capped[n] = k
            k = spec.max_instances
        instances[n] = k
    return Sizing(instances, load_pps, load_bps, edge_pps, edge_bps, fr, target_utilization, capped,
                  {e.index: e.target for e in policy.edges})


def min_cores(policy: Policy, sizing: Sizing) -> int:
    """Cores the sizing's instances take (inline NFs take none)."""
    return sum(sizing.instances[n] * spec.cores for n, spec in policy.nfs.items())


def check_capacity(policy: Policy, hardware: Any, fractions: Fractions | None = None) -> Sizing:
    """Raise :class:`PolicyError` if the hardware cannot carry the offered load even with every
    instance at full use (or an NF's ``max`` is too low for it); return the full-use sizing."""
    full = size(policy, 1.0, fractions)
    for n, need in full.capped.items():
        spec = policy.nfs[n]
        raise PolicyError(policy.file, spec.line,
                          f"NF {n}: its load of {full.load_pps[n]:,.0f} pps needs {need} instances even at "
                          f"full use ({spec.cost_pps:,.0f} pps each) but max is {spec.max_instances}")
    need = min_cores(policy, full)
    have = hardware.total_cores
    if need > have:
        line = policy.classes[0].line if policy.classes else 0
        per = ", ".join(f"{n} {k}" for n, k in full.instances.items() if policy.nfs[n].cores)
        raise PolicyError(policy.file, line,
                          f"the offered load ({policy.total_pps:,.0f} pps) needs {need} cores even at full use "
                          f"({per}) but the hardware has {have}")
    return full
