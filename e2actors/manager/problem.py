"""The placement problem in index form: instances ``0..n-1``, servers ``0..m-1``, the traffic
between instances as adjacency lists; what a solver checks a placement against (cores, pinned
ports, NICs) and the error when nothing fits. Shared by the solvers
(:mod:`e2actors.manager.placement`) and the refinement they use (:mod:`e2actors.manager.refine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx

from e2actors.errors import PlacementError
from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import InstanceGraph

__all__ = ["Infeasible", "Problem", "rate"]


class Infeasible(PlacementError):
    """No placement fits the hardware. ``resource`` is ``"cores"`` or ``"nic"``; ``server`` the
    server whose NIC binds (None for cores: they bind in total); ``needed`` and ``available`` in
    cores or bits/s; ``file`` and ``line`` the hardware entry (line 0: unknown); ``proven`` whether
    no placement can fit (False: none was found in the time allowed)."""

    def __init__(self, file: str, line: int, reason: str, *, resource: str, server: str | None,
                 needed: float, available: float, proven: bool = True) -> None:
        self.file, self.line, self.reason = file, line, reason
        self.resource, self.server, self.needed, self.available, self.proven = resource, server, needed, available, proven
        super().__init__(f"{file}{f':{line}' if line else ''}: {reason}")



def rate(bps: float) -> str:
    """``11.09 Gbit/s``: bits/s for a message."""
    for unit, k in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= k:
            return f"{bps / k:.4g} {unit}"
    return f"{bps:.4g} bit/s"


# --- the problem in index form ----------------------------------------------------------------------
@dataclass
class Problem:
    """The placement problem as arrays: instances ``0..n-1``, servers ``0..m-1``.

    ``adj[i]`` maps each neighbour j to ``(pps, bps)`` of the traffic between i and j (both
    directions added); ``pinned`` maps instance -> server; ``order`` is a DAG order of the
    instances; ``groups`` lists interchangeable instances (one NF's). ``file``, ``servers_line``,
    ``cores_lines`` and ``nic_lines`` say where the hardware file gives each limit (for errors)."""

    names: list[str]
    cores: list[int]
    servers: list[str]
    capacity: list[int]
    nic: list[float]
    adj: list[dict[int, tuple[float, float]]]
    pinned: dict[int, int]
    order: list[int]
    groups: list[list[int]] = field(default_factory=list)
    port_server: int = 0  # the server of ``in`` (first-fit starts there)
    nf: list[str] = field(default_factory=list)
    file: str = "<hardware>"
    servers_line: int = 0
    cores_lines: list[int] = field(default_factory=list)
    nic_lines: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, graph: InstanceGraph, hardware: Hardware) -> Problem:
        names = list(graph.instances)
        idx = {n: i for i, n in enumerate(names)}
        servers = list(hardware.servers)
        sidx = {s: k for k, s in enumerate(servers)}
        adj: list[dict[int, tuple[float, float]]] = [{} for _ in names]
        for (u, v), w in graph.edges.items():
            if u == v or w <= 0:
                continue
            b = graph.edges_bps.get((u, v), 0.0)
            a, c = idx[u], idx[v]
            pw, pb = adj[a].get(c, (0.0, 0.0))
            adj[a][c] = adj[c][a] = (pw + w, pb + b)
        pinned: dict[int, int] = {}
        for p, srv in {**{pp.name: pp.server for pp in hardware.ports.values()}, **graph.pinned}.items():
            if p in idx:
                pinned[idx[p]] = sidx[srv]
        # DAG order: NFs topologically (ties by first appearance), instances in order within an NF
        nfg = nx.DiGraph()
        first: dict[str, int] = {}
        for i, n in enumerate(names):
            nfg.add_node(graph.nf[n])
            first.setdefault(graph.nf[n], i)
        for (u, v) in graph.edges:
            if graph.nf[u] != graph.nf[v]:
                nfg.add_edge(graph.nf[u], graph.nf[v])
        try:
            nf_order = list(nx.lexicographical_topological_sort(nfg, key=lambda n: first[n]))
        except nx.NetworkXUnfeasible:
            nf_order = sorted(first, key=first.get)  # type: ignore[arg-type]
        by_nf: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            by_nf.setdefault(graph.nf[n], []).append(i)
        order = [i for nf in nf_order for i in by_nf[nf]]
        groups = [g for nf, g in by_nf.items() if len(g) > 1]
        hs = [hardware.servers[s] for s in servers]
        return cls(names, [graph.cores[n] for n in names], servers, [h.cores for h in hs], [h.nic_bps for h in hs],
                   adj, pinned, order, groups,
                   sidx[hardware.ports["in"].server] if "in" in hardware.ports else 0,
                   [graph.nf[n] for n in names], hardware.file, getattr(hardware, "servers_line", 0),
                   [h.cores_line or h.line for h in hs], [h.nic_line or h.line for h in hs])

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def m(self) -> int:
        return len(self.servers)

    @property
    def nic_limited(self) -> bool:
        return any(math.isfinite(x) for x in self.nic)

    def movable(self) -> list[int]:
        """The instances a solver places (all but the pinned ports), in DAG order."""
        return [i for i in self.order if i not in self.pinned]

    def cost(self, srv: list[int]) -> float:
        return sum(w for i, nb in enumerate(self.adj) for j, (w, _b) in nb.items() if j > i and srv[i] != srv[j])

    def check(self, srv: list[int], nic: bool = True) -> list[str]:
        """What ``srv`` violates (empty when feasible)."""
        bad = []
        load = [0] * self.m
        for i, s in enumerate(srv):
            load[s] += self.cores[i]
        for s in range(self.m):
            if load[s] > self.capacity[s]:
                bad.append(f"{self.servers[s]}: {load[s]} cores used of {self.capacity[s]}")
        for i, s in self.pinned.items():
            if srv[i] != s:
                bad.append(f"{self.names[i]} is pinned to {self.servers[s]}")
        if nic:
            use = self.nic_use(srv)
            for s in range(self.m):
                if use[s] > self.nic[s] * (1 + 1e-9):
                    bad.append(f"{self.servers[s]}: NIC {rate(use[s])} of {rate(self.nic[s])}")
        return bad

    def nic_use(self, srv: list[int]) -> list[float]:
        use = [0.0] * self.m
        for i, nb in enumerate(self.adj):
            for j, (_w, b) in nb.items():
                if j > i and srv[i] != srv[j]:
                    use[srv[i]] += b
                    use[srv[j]] += b
        return use

    def check_room(self) -> None:
        """Raise :class:`Infeasible` (cores) when the instances need more cores than all servers have."""
        need = sum(self.cores[i] for i in range(self.n) if i not in self.pinned)
        have = sum(self.capacity)
        if need > have:
            per: dict[str, int] = {}
            for i in range(self.n):
                if i not in self.pinned and self.cores[i]:
                    per[self.nf[i] if self.nf else self.names[i]] = per.get(self.nf[i] if self.nf else self.names[i], 0) + self.cores[i]
            servers = ", ".join(f"{s} {c}" for s, c in zip(self.servers, self.capacity))
            raise Infeasible(self.file, self.servers_line,
                             f"cores: the instances need {need} cores ({', '.join(f'{k} {v}' for k, v in per.items())}),"
                             f" the servers have {have} ({servers})",
                             resource="cores", server=None, needed=need, available=have)
