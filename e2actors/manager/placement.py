"""Placement: which server runs each instance, so that the least traffic crosses between servers.

The problem: the instance graph (instances with the cores they take, directed traffic between
them) and the servers (cores, NIC bandwidth). Every instance takes one core (an inline NF's takes
none: it runs inside its server's switch), the ports ``in``/``out`` are pinned to the servers
holding them, and the traffic crossing each server's NIC (bits/s between its instances and other
servers') stays within its bandwidth. The objective is the sum of packets/s over instance edges
whose ends sit on different servers.

Solvers (pure functions over a :class:`Problem`, registered in :data:`SOLVERS`):

``heuristic``
    E2's: an initial packing of the instances in DAG order, each to the server (with a free core)
    it exchanges most traffic with, then Kernighan-Lin/Fiduccia-Mattheyses style refinement: moves
    of one instance and swaps of two between servers, taken while they shrink the cut and the
    capacities hold. Gains come from per-instance tables of traffic towards each server, updated
    incrementally on every move (O(degree)), never recomputed. The refinement also starts from the
    first-fit packing, and on small problems from a few perturbed solutions (iterated local
    search); the best result wins.
``milp``
    Exact: a mixed-integer program solved by :func:`scipy.optimize.milp` (HiGHS) within a time
    limit; ``optimal`` says whether it proved optimality. Instances of one NF are interchangeable
    (the balancer spreads traffic evenly), so they are ordered by server to break symmetry.
``random``
    Each instance to a random server with a free core (a baseline).
``first-fit``
    Instances in DAG order, each to the first server (the ``in`` server first) with a free core.

:func:`place_incremental` adds new instances to a running placement without moving any other
(what scaling out uses).
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from e2actors.errors import PlacementError
from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import InstanceGraph

__all__ = ["Placement", "PlacementError", "Problem", "SOLVERS", "place", "place_incremental",
           "register_solver", "solver_names"]

EPS = 1e-9



@dataclass
class Placement:
    """A solution: ``assignment`` maps every instance (``in``/``out`` included) to a server."""

    assignment: dict[str, str]
    cost: float
    solver: str = ""
    seconds: float = 0.0
    optimal: bool | None = None
    feasible: bool = True

    def on(self, server: str) -> list[str]:
        """Instances placed on ``server``, in order."""
        return [i for i, s in self.assignment.items() if s == server]


# --- the problem in index form ----------------------------------------------------------------------
@dataclass
class Problem:
    """The placement problem as arrays: instances ``0..n-1``, servers ``0..m-1``.

    ``adj[i]`` maps each neighbour j to ``(pps, bps)`` of the traffic between i and j (both
    directions added); ``pinned`` maps instance -> server; ``order`` is a DAG order of the
    instances; ``groups`` lists interchangeable instances (one NF's)."""

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
        return cls(names, [graph.cores[n] for n in names], servers,
                   [hardware.servers[s].cores for s in servers],
                   [hardware.servers[s].nic_bps for s in servers], adj, pinned, order, groups,
                   sidx[hardware.ports["in"].server] if "in" in hardware.ports else 0)

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def m(self) -> int:
        return len(self.servers)

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
                    bad.append(f"{self.servers[s]}: NIC {use[s]:.3g} bit/s of {self.nic[s]:.3g}")
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
        need = sum(self.cores[i] for i in range(self.n) if i not in self.pinned)
        if need > sum(self.capacity):
            raise PlacementError(f"{need} cores needed, the servers have {sum(self.capacity)}")


# --- incremental state: the heart of the heuristic --------------------------------------------------
class _State:
    """An assignment with, per instance, its traffic towards each server (``conn``: pps, ``bconn``:
    bps), per-server core and NIC use, and the cut: all updated in O(degree) per move."""

    def __init__(self, p: Problem, srv: list[int]) -> None:
        self.p = p
        self.srv = list(srv)
        self.load = [0] * p.m
        for i, s in enumerate(self.srv):
            self.load[s] += p.cores[i]
        self.conn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.bconn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.tot_b = [0.0] * p.n
        self.nic = [0.0] * p.m
        cut = 0.0
        for i, nb in enumerate(p.adj):
            ci, bi = self.conn[i], self.bconn[i]
            for j, (w, b) in nb.items():
                s = self.srv[j]
                ci[s] = ci.get(s, 0.0) + w
                bi[s] = bi.get(s, 0.0) + b
                self.tot_b[i] += b
                if j > i and self.srv[i] != s:
                    cut += w
                    self.nic[self.srv[i]] += b
                    self.nic[s] += b
        self.cut = cut
        self.nic_limited = any(math.isfinite(x) for x in p.nic)

    def move_gain(self, i: int, t: int) -> float:
        c = self.conn[i]
        return c.get(t, 0.0) - c.get(self.srv[i], 0.0)

    def nic_after_move(self, i: int, t: int) -> tuple[float, float]:
        """NIC use of i's server and of ``t`` if i moved to t."""
        a = self.srv[i]
        bc = self.bconn[i]
        tot = self.tot_b[i]
        na = self.nic[a] - (tot - bc.get(a, 0.0)) + bc.get(a, 0.0)
        nt = self.nic[t] - bc.get(t, 0.0) + (tot - bc.get(t, 0.0))
        return na, nt

    def nic_ok_move(self, i: int, t: int) -> bool:
        if not self.nic_limited:
            return True
        a = self.srv[i]
        na, nt = self.nic_after_move(i, t)
        nic = self.p.nic
        # allowed when within bounds, or when it does not make an overloaded server worse
        return (na <= nic[a] * (1 + 1e-9) or na <= self.nic[a]) and (nt <= nic[t] * (1 + 1e-9) or nt <= self.nic[t])

    def move(self, i: int, t: int) -> None:
        a = self.srv[i]
        if a == t:
            return
        p = self.p
        self.cut -= self.move_gain(i, t)
        if self.nic_limited:
            na, nt = self.nic_after_move(i, t)
            self.nic[a], self.nic[t] = na, nt
        self.load[a] -= p.cores[i]
        self.load[t] += p.cores[i]
        self.srv[i] = t
        conn, bconn = self.conn, self.bconn
        for j, (w, b) in p.adj[i].items():
            cj = conn[j]
            x = cj[a] - w
            if x <= EPS:
                del cj[a]
            else:
                cj[a] = x
            cj[t] = cj.get(t, 0.0) + w
            bj = bconn[j]
            y = bj.get(a, 0.0) - b
            if y <= EPS:
                bj.pop(a, None)
            else:
                bj[a] = y
            bj[t] = bj.get(t, 0.0) + b

    def fits(self, i: int, t: int) -> bool:
        return self.load[t] + self.p.cores[i] <= self.p.capacity[t]


def _refine(st: _State, movable: list[int], deadline: float, max_passes: int = 50) -> None:
    """Moves and swaps with positive gain, pass after pass, while the cut shrinks."""
    p = st.p
    adj = p.adj
    group_of = [-1] * p.n
    for g, members in enumerate(p.groups):
        for i in members:
            group_of[i] = g
    for _ in range(max_passes):
        improved = False
        on: list[list[int]] = [[] for _ in range(p.m)]
        for i in movable:
            on[st.srv[i]].append(i)
        for i in movable:
            if time.perf_counter() > deadline:
                return
            a = st.srv[i]
            ci = st.conn[i]
            here = ci.get(a, 0.0)
            best_gain, best = EPS, None
            # targets: servers i exchanges traffic with, most first
            for t, w in sorted(ci.items(), key=lambda kv: -kv[1]):
                if t == a:
                    continue
                g = w - here
                if g > best_gain and st.fits(i, t) and st.nic_ok_move(i, t):
                    best_gain, best = g, ("move", t)
                # swaps with an instance v on t: gain g + conn[v][a] - conn[v][t] - 2 w(i, v)
                gi = group_of[i]
                for v in on[t]:
                    cv = st.conn[v]
                    cva = cv.get(a, 0.0)
                    if g + cva <= best_gain or (gi >= 0 and group_of[v] == gi):
                        continue
                    if st.load[t] - p.cores[v] + p.cores[i] > p.capacity[t]:
                        continue
                    if st.load[a] - p.cores[i] + p.cores[v] > p.capacity[a]:
                        continue
                    wiv = adj[i].get(v, (0.0, 0.0))[0]
                    gs = g + cva - cv.get(t, 0.0) - 2 * wiv
                    if gs > best_gain:
                        best_gain, best = gs, ("swap", t, v)
            if best is None:
                continue
            if best[0] == "move":
                t = best[1]
                on[a].remove(i)
                on[t].append(i)
                st.move(i, t)
                improved = True
            else:
                _, t, v = best
                before = st.cut
                nic_before = list(st.nic) if st.nic_limited else None
                st.move(i, t)
                st.move(v, a)
                if st.nic_limited and not _nic_ok(st, nic_before):  # undo
                    st.move(v, t)
                    st.move(i, a)
                    continue
                if st.cut >= before - EPS:  # numerical guard
                    st.move(v, t)
                    st.move(i, a)
                    continue
                on[a].remove(i)
                on[t].append(i)
                on[t].remove(v)
                on[a].append(v)
                improved = True
        if not improved:
            return


def _nic_ok(st: _State, before: list[float] | None) -> bool:
    nic = st.p.nic
    for s in range(st.p.m):
        if st.nic[s] > nic[s] * (1 + 1e-9) and (before is None or st.nic[s] > before[s] + 1e-6):
            return False
    return True


# --- solvers ----------------------------------------------------------------------------------------
Solver = Callable[..., "tuple[list[int], bool | None]"]
SOLVERS: dict[str, Solver] = {}


def register_solver(name: str) -> Callable[[Solver], Solver]:
    """Register ``fn(problem, *, seed, time_limit) -> (server per instance, optimal or None)``."""

    def deco(fn: Solver) -> Solver:
        SOLVERS[name] = fn
        return fn

    return deco


def solver_names() -> list[str]:
    return list(SOLVERS)


def _initial(p: Problem) -> list[int]:
    srv = [-1] * p.n
    for i, s in p.pinned.items():
        srv[i] = s
    return srv


def _greedy_pack(p: Problem, srv: list[int], todo: Iterable[int], rng: _random.Random | None = None) -> list[int]:
    """Place each instance of ``todo`` (in order) on the server with a free core it exchanges most
    traffic with (ties: the fullest server that fits, to pack; then the lowest index)."""
    load = [0] * p.m
    for i, s in enumerate(srv):
        if s >= 0:
            load[s] += p.cores[i]
    conn: list[dict[int, float]] = [{} for _ in range(p.n)]
    for i, s in enumerate(srv):
        if s >= 0:
            for j, (w, _b) in p.adj[i].items():
                conn[j][s] = conn[j].get(s, 0.0) + w
    for i in todo:
        best, key = -1, None
        ci = conn[i]
        for s in range(p.m):
            if load[s] + p.cores[i] > p.capacity[s]:
                continue
            k = (ci.get(s, 0.0), load[s] if p.cores[i] else 0, -s)
            if rng is not None:
                k = (k[0], rng.random())
            if key is None or k > key:
                best, key = s, k
        if best < 0:
            raise PlacementError(f"no server has a free core for {p.names[i]}")
        srv[i] = best
        load[best] += p.cores[i]
        for j, (w, _b) in p.adj[i].items():
            conn[j][best] = conn[j].get(best, 0.0) + w
    return srv


@register_solver("first-fit")
def first_fit(p: Problem, *, seed: int = 0, time_limit: float = 0.0) -> tuple[list[int], bool | None]:
    p.check_room()
    srv = _initial(p)
    load = [0] * p.m
    for i, s in p.pinned.items():
        load[s] += p.cores[i]
    servers = [p.port_server] + [s for s in range(p.m) if s != p.port_server]
    for i in p.order:
        if srv[i] >= 0:
            continue
        for s in servers:
            if load[s] + p.cores[i] <= p.capacity[s]:
                srv[i] = s
                load[s] += p.cores[i]
                break
        else:
            raise PlacementError(f"no server has a free core for {p.names[i]}")
    return srv, None


@register_solver("random")
def random_place(p: Problem, *, seed: int = 0, time_limit: float = 0.0) -> tuple[list[int], bool | None]:
    p.check_room()
    rng = _random.Random(seed)
    srv = _initial(p)
    load = [0] * p.m
    for i, s in p.pinned.items():
        load[s] += p.cores[i]
    todo = [i for i in range(p.n) if srv[i] < 0]
    rng.shuffle(todo)
    todo.sort(key=lambda i: -p.cores[i])  # stable: cored instances first, random among them
    for i in todo:
        free = [s for s in range(p.m) if load[s] + p.cores[i] <= p.capacity[s]]
        if not free:
            raise PlacementError(f"no server has a free core for {p.names[i]}")
        s = rng.choice(free)
        srv[i] = s
        load[s] += p.cores[i]
    return srv, None


@register_solver("heuristic")
def heuristic(p: Problem, *, seed: int = 0, time_limit: float = 10.0) -> tuple[list[int], bool | None]:
    p.check_room()
    start = time.perf_counter()
    deadline = start + time_limit
    movable = [i for i in p.order if i not in p.pinned]
    best: _State | None = None

    def consider(st: _State) -> None:
        nonlocal best
        if best is None or st.cut < best.cut - EPS:
            best = st

    starts = [_greedy_pack(p, _initial(p), movable), first_fit(p)[0]]
    for s0 in starts:
        st = _State(p, s0)
        _refine(st, movable, deadline)
        consider(st)
    # small problems: iterated local search from perturbed copies of the best (a few ms each)
    if p.n <= 200 and best is not None:
        rng = _random.Random(seed)
        rounds = 200 if p.n <= 60 else 15
        budget = min(deadline, start + 1.0)
        for _ in range(rounds):
            if time.perf_counter() > budget:
                break
            st = _State(p, best.srv)
            k = max(2, len(movable) // 5)
            for i in rng.sample(movable, min(k, len(movable))):
                targets = [s for s in range(p.m) if s != st.srv[i] and st.fits(i, s)]
                if targets:
                    st.move(i, rng.choice(targets))
                elif p.m > 1:  # swap with someone elsewhere
                    others = [v for v in movable if st.srv[v] != st.srv[i] and p.cores[v] == p.cores[i]]
                    if others:
                        v = rng.choice(others)
                        a, t = st.srv[i], st.srv[v]
                        st.move(i, t)
                        st.move(v, a)
            _refine(st, movable, deadline)
            if st.nic_limited and p.check(st.srv):
                continue
            consider(st)
    assert best is not None
    return best.srv, None


@register_solver("milp")
def milp(p: Problem, *, seed: int = 0, time_limit: float = 30.0) -> tuple[list[int], bool | None]:
    """Exact MILP: x[i,s] binary (instance i on server s); for an edge between two movable
    instances, z[e,s] >= |x[u,s] - x[v,s]| and the edge's cut is sum_s z[e,s] / 2; an edge to a
    pinned instance on server q is cut by 1 - x[u,q]. Capacities: cores, and NIC when finite."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp as _milp
    from scipy.sparse import coo_matrix

    p.check_room()
    m = p.m
    movable = [i for i in range(p.n) if i not in p.pinned]
    col = {i: k for k, i in enumerate(movable)}
    nx_ = len(movable) * m

    def xv(i: int, s: int) -> int:
        return col[i] * m + s

    free_edges: list[tuple[int, int, float, float]] = []
    pinned_edges: list[tuple[int, int, float, float]] = []  # (movable, server, w, b)
    const = 0.0
    const_nic = [0.0] * m
    for i, nb in enumerate(p.adj):
        for j, (w, b) in nb.items():
            if j <= i:
                continue
            if i in p.pinned and j in p.pinned:
                if p.pinned[i] != p.pinned[j]:
                    const += w
                    const_nic[p.pinned[i]] += b
                    const_nic[p.pinned[j]] += b
            elif i in p.pinned:
                pinned_edges.append((j, p.pinned[i], w, b))
            elif j in p.pinned:
                pinned_edges.append((i, p.pinned[j], w, b))
            else:
                free_edges.append((i, j, w, b))
    # with a NIC limit, z[e,s] >= |x[u,s] - x[v,s]| per server (the NIC rows need them); without,
    # one y[e] >= x[u,s] - x[v,s] for every s is the edge's cut (fewer variables, solves faster)
    nic_rows = any(math.isfinite(x) for x in p.nic)
    zs = m if nic_rows else 1
    nz = len(free_edges) * zs
    nvar = nx_ + nz
    c = np.zeros(nvar)
    for e, (_i, _j, w, _b) in enumerate(free_edges):
        c[nx_ + e * zs: nx_ + (e + 1) * zs] = w / 2 if nic_rows else w
    for (u, q, w, _b) in pinned_edges:
        c[xv(u, q)] -= w  # w * (1 - x[u,q])
        const += w
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add(entries: list[tuple[int, float]], lb: float, ub: float) -> None:
        nonlocal r
        for k, v in entries:
            rows.append(r)
            cols.append(k)
            vals.append(v)
        lo.append(lb)
        hi.append(ub)
        r += 1

    for i in movable:
        add([(xv(i, s), 1.0) for s in range(m)], 1, 1)
    for s in range(m):
        used = sum(p.cores[i] for i in p.pinned if p.pinned[i] == s)
        add([(xv(i, s), float(p.cores[i])) for i in movable if p.cores[i]], -np.inf, p.capacity[s] - used)
    for e, (u, v, _w, _b) in enumerate(free_edges):
        for s in range(m):
            z = nx_ + e * zs + (s if nic_rows else 0)
            add([(z, 1.0), (xv(u, s), -1.0), (xv(v, s), 1.0)], 0, np.inf)
            if nic_rows:
                add([(z, 1.0), (xv(u, s), 1.0), (xv(v, s), -1.0)], 0, np.inf)
    for s in range(m):
        if not math.isfinite(p.nic[s]):
            continue
        entries: dict[int, float] = {}
        rhs = p.nic[s] - const_nic[s]
        for e, (_u, _v, _w, b) in enumerate(free_edges):
            if b:
                entries[nx_ + e * m + s] = entries.get(nx_ + e * m + s, 0.0) + b
        for (u, q, _w, b) in pinned_edges:
            if not b:
                continue
            if s == q:  # crossing at the pinned end's server: b * (1 - x[u,q])
                entries[xv(u, q)] = entries.get(xv(u, q), 0.0) - b
                rhs -= b
            else:
                entries[xv(u, s)] = entries.get(xv(u, s), 0.0) + b
        add(list(entries.items()), -np.inf, rhs)
    # symmetry: interchangeable instances (same neighbours) take servers in order
    for g in p.groups:
        members = [i for i in g if i in col]
        for a, b in zip(members, members[1:]):
            if p.adj[a] == p.adj[b] and p.cores[a] == p.cores[b]:
                add([(xv(a, s), float(s)) for s in range(m)] + [(xv(b, s), -float(s)) for s in range(m)],
                    -np.inf, 0)
    A = coo_matrix((vals, (rows, cols)), shape=(r, nvar)).tocsr()
    integrality = np.zeros(nvar)
    integrality[:nx_] = 1
    ub = np.ones(nvar)
    res = _milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
                bounds=Bounds(np.zeros(nvar), ub),
                options={"time_limit": max(0.1, time_limit), "disp": False, "mip_rel_gap": 1e-6})
    if res.x is None:
        if res.status == 2:
            raise PlacementError("no placement fits the servers' cores and NICs")
        srv, _ = heuristic(p, seed=seed, time_limit=time_limit)  # no incumbent in time
        return srv, False
    srv = _initial(p)
    x = res.x[:nx_].reshape(len(movable), m)
    for k, i in enumerate(movable):
        srv[i] = int(np.argmax(x[k]))
    return srv, bool(res.status == 0)


# --- the entry points -------------------------------------------------------------------------------
def place(graph: InstanceGraph, hardware: Hardware, solver: str = "heuristic", *, seed: int = 0,
          time_limit: float = 10.0) -> Placement:
    """Place every instance of ``graph`` on ``hardware`` with a named solver."""
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise PlacementError(f"unknown solver {solver!r} (solvers: {', '.join(SOLVERS)})") from None
    p = Problem.build(graph, hardware)
    t0 = time.perf_counter()
    srv, optimal = fn(p, seed=seed, time_limit=time_limit)
    dt = time.perf_counter() - t0
    return _result(p, srv, solver, dt, optimal)


def _result(p: Problem, srv: list[int], solver: str, seconds: float, optimal: bool | None) -> Placement:
    bad = p.check(srv)
    return Placement({p.names[i]: p.servers[s] for i, s in enumerate(srv)}, p.cost(srv), solver, seconds,
                     optimal, not bad)


def place_incremental(graph: InstanceGraph, hardware: Hardware, placement: Mapping[str, str],
                      new: Iterable[str] | None = None) -> Placement:
    """Place the instances of ``graph`` that ``placement`` lacks (or ``new``), each on the server with
    a free core it exchanges most traffic with, without moving any placed instance. Instances of
    ``placement`` no longer in ``graph`` (scaled in) are dropped."""
    p = Problem.build(graph, hardware)
    idx = {n: i for i, n in enumerate(p.names)}
    sidx = {s: k for k, s in enumerate(p.servers)}
    srv = _initial(p)
    for n, s in placement.items():
        if n in idx and idx[n] not in p.pinned:
            if s not in sidx:
                raise PlacementError(f"{n} is placed on {s!r}, which the hardware does not have")
            srv[idx[n]] = sidx[s]
    todo = [idx[n] for n in new] if new is not None else [i for i in p.order if srv[i] < 0]
    for i in todo:
        srv[i] = -1
    t0 = time.perf_counter()
    _greedy_pack(p, srv, todo)
    return _result(p, srv, "incremental", time.perf_counter() - t0, None)


# the order solvers are listed and compared in
SOLVERS.update({k: SOLVERS.pop(k) for k in ("heuristic", "milp", "random", "first-fit")})
