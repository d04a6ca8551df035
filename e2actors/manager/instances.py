"""The instance graph: each NF becomes its instances; each policy edge's traffic is spread over the
instance pairs as the switch's hash load balancer spreads it.

An NF ``ids`` sized to 3 becomes ``ids#1``, ``ids#2``, ``ids#3``. The balancer hashes flows
uniformly over a group, so an edge ``i -> j`` carrying T packets/s (T spread evenly over i's
instances) puts ``T / (n_i * n_j)`` on each pair ``(i#a, j#b)``. The external ports are the
instances ``in`` and ``out`` (pinned to the servers holding them); edges to ``drop`` carry no
traffic between instances and are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from e2actors.manager.policy import DROP, IN, OUT, Policy
from e2actors.manager.sizing import Sizing

__all__ = ["InstanceGraph", "instance_name", "nf_of"]


def instance_name(nf: str, k: int) -> str:
    """The name of NF ``nf``'s instance number ``k`` (1-based): ``nf#k``."""
    return f"{nf}#{k}"


def nf_of(instance: str) -> str:
    """The NF an instance belongs to (``in``/``out`` for the ports)."""
    return instance.partition("#")[0]


@dataclass
class InstanceGraph:
    """Instances (with the cores each takes), their NF, and the traffic between them.

    ``edges[(u, v)]`` is packets/s from u to v, ``edges_bps[(u, v)]`` bits/s. ``pinned`` maps the
    port instances ``in``/``out`` to their servers once known."""

    instances: list[str]
    nf: dict[str, str]
    cores: dict[str, int]
    edges: dict[tuple[str, str], float]
    edges_bps: dict[tuple[str, str], float]
    pinned: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, policy: Policy, sizing: Sizing, counts: Mapping[str, Iterable[int]] | None = None,
              pinned: Mapping[str, str] | None = None) -> InstanceGraph:
        """From a policy and its sizing. ``counts`` may give each NF's instance numbers explicitly
        (after scaling in, numbers can have gaps); by default 1..n."""
        members: dict[str, list[str]] = {IN: [IN], OUT: [OUT]}
        for n in policy.nfs:
            ks = list(counts[n]) if counts and n in counts else list(range(1, sizing.instances[n] + 1))
            members[n] = [instance_name(n, k) for k in ks]
        instances = [IN, OUT] + [i for n in policy.nfs for i in members[n]]
        nf = {i: nf_of(i) for i in instances}
        cores = {IN: 0, OUT: 0}
        for n, spec in policy.nfs.items():
            for i in members[n]:
                cores[i] = spec.cores
        edges: dict[tuple[str, str], float] = defaultdict(float)
        edges_bps: dict[tuple[str, str], float] = defaultdict(float)
        for e in policy.edges:
            t, b = sizing.edge_pps[e.index], sizing.edge_bps[e.index]
            if e.target == DROP or t <= 0:
                continue
            src, dst = members[e.source], members[e.target]
            if not src or not dst:
                continue
            share, bshare = t / (len(src) * len(dst)), b / (len(src) * len(dst))
            for u in src:
                for v in dst:
                    edges[(u, v)] += share
                    edges_bps[(u, v)] += bshare
        return cls(instances, nf, cores, dict(edges), dict(edges_bps), dict(pinned or {}))

    # --- views -----------------------------------------------------------------------------------
    def of(self, nf: str) -> list[str]:
        """The instances of one NF, in order."""
        return [i for i in self.instances if self.nf[i] == nf]

    @property
    def total_pps(self) -> float:
        """All traffic between instances (including from ``in`` and to ``out``)."""
        return sum(self.edges.values())

    def cut(self, placement: Mapping[str, str]) -> float:
        """Packets/s crossing between servers under ``placement`` (ports at their pinned servers)."""
        where = {**placement, **self.pinned}
        return sum(w for (u, v), w in self.edges.items() if where[u] != where[v])

    def cut_bps(self, placement: Mapping[str, str]) -> dict[str, float]:
        """Per server: bits/s entering or leaving it between instances (its NIC's share)."""
        where = {**placement, **self.pinned}
        out: dict[str, float] = defaultdict(float)
        for (u, v), b in self.edges_bps.items():
            if where[u] != where[v]:
                out[where[u]] += b
                out[where[v]] += b
        return dict(out)

    def to_networkx(self, placement: Mapping[str, str] | None = None) -> nx.DiGraph:
        g = nx.DiGraph()
        where = {**(placement or {}), **self.pinned}
        for i in self.instances:
            g.add_node(i, nf=self.nf[i], cores=self.cores[i], server=where.get(i))
        for (u, v), w in self.edges.items():
            g.add_edge(u, v, pps=w, bps=self.edges_bps.get((u, v), 0.0))
        return g

    def edge_list(self) -> list[list]:
        """``[from, to, pps]`` for every instance edge, in a stable order."""
        return [[u, v, round(w, 3)] for (u, v), w in self.edges.items()]
