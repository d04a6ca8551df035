"""Placement: which server runs each instance, so that the least traffic crosses between servers.

The problem: the instance graph (instances with the cores they take, directed traffic between
them) and the servers (cores, NIC bandwidth). Every instance takes one core (an inline NF's takes
none: it runs inside its server's switch), the ports ``in``/``out`` are pinned to the servers
holding them, and the traffic crossing each server's NIC (bits/s between its instances and other
servers') stays within its bandwidth. The objective is the sum of packets/s over instance edges
whose ends sit on different servers.

Solvers (pure functions over a :class:`Problem`, registered in :data:`SOLVERS`):

``heuristic``
    E2's: an initial packing of the instances in DAG order, each to the server with a free core
    (and NIC room) it exchanges most traffic with, then Kernighan-Lin / Fiduccia-Mattheyses passes
    (:mod:`e2actors.manager.refine`): tentative moves and swaps that may worsen the cut, each
    instance locked once moved, the best prefix of the pass kept, passes repeated while one
    improves. The refinement also starts from the first-fit packing; the best result wins.
``milp``
    Exact: a mixed-integer program solved by :func:`scipy.optimize.milp` (HiGHS) within a time
    limit; ``optimal`` says whether it proved optimality. Instances of one NF are interchangeable
    (the balancer spreads traffic evenly), so they are ordered by server to break symmetry.
``random``
    Each instance to a random server with a free core and NIC room (a baseline).
``first-fit``
    Instances in DAG order, each to the first server (the ``in`` server first) with a free core
    and NIC room.

Every solver's placement respects cores and NICs, or :func:`place` raises :class:`Infeasible`:
when a placement overloads a NIC (a greedy baseline can paint itself into a corner), FM passes
that lower the excess repair it; when they cannot, the exact model decides whether any placement
fits (and finds one) and, when none does, the error names the hardware entry that binds (``FILE:
LINE``), the resource and the numbers (bits/s needed against the NIC's; cores needed against the
servers'). A single server whose NIC no placement can fit is found by a lower bound of its own (a
two-way MILP: this server against all others), which is also a proof that does not depend on the
size of the whole model.

:func:`place_incremental` adds new instances to a running placement without moving any other
(what scaling out uses).
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from e2actors.errors import PlacementError
from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import InstanceGraph
from e2actors.manager.problem import Infeasible, Problem, rate
from e2actors.manager.refine import State, fm_refine, improve_only, repair

__all__ = ["Infeasible", "Placement", "PlacementError", "Problem", "SOLVERS", "place", "place_incremental",
           "register_solver", "solver_names"]

EPS = 1e-9
#: The exact model is built only up to this many variables (beyond, building and solving it would
#: take longer than a plan should; infeasibility is then reported as not proven).
MILP_MAX_VARS = 150_000


@dataclass
class Placement:
    """A solution: ``assignment`` maps every instance (``in``/``out`` included) to a server.
    ``violations`` lists what it exceeds (only :func:`place_incremental`, which moves nothing
    placed, can return one that does not fit: ``feasible`` is then False)."""

    assignment: dict[str, str]
    cost: float
    solver: str = ""
    seconds: float = 0.0
    optimal: bool | None = None
    feasible: bool = True
    violations: list[str] = field(default_factory=list)

    def on(self, server: str) -> list[str]:
        """Instances placed on ``server``, in order."""
        return [i for i, s in self.assignment.items() if s == server]


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


class _Packer:
    """A partial placement being built instance by instance: per server its cores and the NIC use
    of the edges between placed instances; per instance its traffic towards each server's placed
    instances. NIC use only grows as instances are placed, so a partial use past a limit is a
    limit the finished placement breaks too."""

    def __init__(self, p: Problem, srv: list[int]) -> None:
        self.p, self.srv = p, srv
        self.load = [0] * p.m
        self.conn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.bconn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.btot = [0.0] * p.n
        self.nic = [0.0] * p.m
        self.limited = p.nic_limited
        self.lim = [x * (1 + 1e-9) for x in p.nic]
        for i, s in enumerate(srv):
            if s >= 0:
                self.load[s] += p.cores[i]
        for i, s in enumerate(srv):
            if s >= 0:
                self._attach(i, s, count_nic=False)
        if self.limited:
            self.nic = self._partial_nic()

    def _partial_nic(self) -> list[float]:
        use = [0.0] * self.p.m
        srv = self.srv
        for i, nb in enumerate(self.p.adj):
            if srv[i] < 0:
                continue
            for j, (_w, b) in nb.items():
                if j > i and srv[j] >= 0 and srv[i] != srv[j]:
                    use[srv[i]] += b
                    use[srv[j]] += b
        return use

    def _attach(self, i: int, s: int, count_nic: bool = True) -> None:
        if count_nic and self.limited:
            bc = self.bconn[i]
            self.nic[s] += self.btot[i] - bc.get(s, 0.0)
            for t, b in bc.items():
                if t != s:
                    self.nic[t] += b
        for j, (w, b) in self.p.adj[i].items():
            cj = self.conn[j]
            cj[s] = cj.get(s, 0.0) + w
            bj = self.bconn[j]
            bj[s] = bj.get(s, 0.0) + b
            self.btot[j] += b

    def fits(self, i: int, s: int) -> bool:
        return self.load[s] + self.p.cores[i] <= self.p.capacity[s]

    def overs(self, i: int) -> list[float]:
        """Per server s: how much NIC excess placing i on s would add (0: within every NIC)."""
        m = self.p.m
        if not self.limited:
            return [0.0] * m
        nic, lim = self.nic, self.lim
        bc = self.bconn[i]
        d: dict[int, float] = {}
        for t, b in bc.items():
            d[t] = max(0.0, nic[t] + b - lim[t]) - max(0.0, nic[t] - lim[t])
        others = sum(d.values())
        out = []
        for s in range(m):
            add = self.btot[i] - bc.get(s, 0.0)
            x = max(0.0, nic[s] + add - lim[s]) - max(0.0, nic[s] - lim[s])
            out.append(x + others - d.get(s, 0.0))
        return out

    def put(self, i: int, s: int) -> None:
        self.srv[i] = s
        self.load[s] += self.p.cores[i]
        self._attach(i, s)


def _no_core(p: Problem, i: int) -> Infeasible:
    need = sum(p.cores[j] for j in range(p.n) if j not in p.pinned)
    return Infeasible(p.file, p.servers_line, f"cores: no server has a free core for {p.names[i]}",
                      resource="cores", server=None, needed=need, available=sum(p.capacity))


def _greedy_pack(p: Problem, srv: list[int], todo: Iterable[int]) -> list[int]:
    """Place each instance of ``todo`` (in order) on a server with a free core where its edges to
    the instances placed so far fit the NICs (else: where they overflow least), choosing the one
    it exchanges most traffic with (ties: the fullest server that fits, to pack; then the lowest
    index)."""
    pk = _Packer(p, srv)
    for i in todo:
        best, key = -1, None
        ci = pk.conn[i]
        over = pk.overs(i)
        for s in range(p.m):
            if not pk.fits(i, s):
                continue
            k = (-round(over[s], 3), ci.get(s, 0.0), pk.load[s] if p.cores[i] else 0, -s)
            if key is None or k > key:
                best, key = s, k
        if best < 0:
            raise _no_core(p, i)
        pk.put(i, best)
    return srv


@register_solver("first-fit")
def first_fit(p: Problem, *, seed: int = 0, time_limit: float = 0.0) -> tuple[list[int], bool | None]:
    p.check_room()
    srv = _initial(p)
    pk = _Packer(p, srv)
    servers = [p.port_server] + [s for s in range(p.m) if s != p.port_server]
    for i in p.order:
        if srv[i] >= 0:
            continue
        over = pk.overs(i)
        fit = [s for s in servers if pk.fits(i, s)]
        if not fit:
            raise _no_core(p, i)
        ok = [s for s in fit if over[s] <= 0]
        pk.put(i, ok[0] if ok else min(fit, key=lambda s: over[s]))
    return srv, None


@register_solver("random")
def random_place(p: Problem, *, seed: int = 0, time_limit: float = 0.0) -> tuple[list[int], bool | None]:
    p.check_room()
    rng = _random.Random(seed)
    srv = _initial(p)
    pk = _Packer(p, srv)
    todo = [i for i in range(p.n) if srv[i] < 0]
    rng.shuffle(todo)
    todo.sort(key=lambda i: -p.cores[i])  # stable: cored instances first, random among them
    for i in todo:
        free = [s for s in range(p.m) if pk.fits(i, s)]
        if not free:
            raise _no_core(p, i)
        over = pk.overs(i)
        ok = [s for s in free if over[s] <= 0]
        pk.put(i, rng.choice(ok) if ok else min(free, key=lambda s: over[s]))
    return srv, None


@register_solver("heuristic")
def heuristic(p: Problem, *, seed: int = 0, time_limit: float = 10.0, refine: str = "fm",
              restarts: bool = True) -> tuple[list[int], bool | None]:
    """Greedy packing (and, on smaller problems, first-fit), repaired to fit the NICs and refined;
    the best wins. ``refine``: ``"fm"`` (descent, then Fiduccia-Mattheyses passes) or
    ``"improve"`` (the descent alone: improving moves and swaps only, kept to compare with).
    ``restarts``: on problems of up to 200 instances, also refine perturbed copies of the best
    for up to a second (iterated local search: it still finds better optima there)."""
    p.check_room()
    start = time.perf_counter()
    deadline = start + time_limit
    movable = p.movable()
    refiner = {"fm": fm_refine, "improve": improve_only}[refine]
    best: State | None = None
    closest: State | None = None  # the least NIC excess seen, for the error when nothing fits

    def consider(st: State) -> None:
        nonlocal best
        if best is None or st.cut < best.cut - EPS:
            best = st

    starts = [_greedy_pack(p, _initial(p), movable)]
    if p.n <= 500:  # on large problems first-fit rarely differs from the greedy packing
        ff = first_fit(p)[0]
        if ff != starts[0]:
            starts.append(ff)
    for s0 in starts:
        st = State(p, s0)
        if not repair(st, movable, min(deadline, time.perf_counter() + time_limit / 6)):
            if closest is None or st.excess < closest.excess:
                closest = st
            continue
        refiner(st, movable, deadline)
        consider(st)
    if best is None:
        assert closest is not None
        st = State(p, _settle(p, closest.srv, max(0.5, deadline - time.perf_counter())))
        refiner(st, movable, deadline)
        consider(st)
    assert best is not None
    if restarts and p.n <= 200 and len(movable) > 1 and p.m > 1:
        rng = _random.Random(seed)
        rounds = 200 if p.n <= 60 else 15
        budget = min(deadline, start + 1.0)
        for _ in range(rounds):
            if time.perf_counter() > budget:
                break
            st = State(p, best.srv)
            _perturb(st, movable, rng, max(2, len(movable) // 5))
            if not repair(st, movable, budget):
                continue
            refiner(st, movable, budget)
            consider(st)
    return best.srv, None


def _perturb(st: State, movable: list[int], rng: _random.Random, k: int) -> None:
    """Move ``k`` random instances to random servers with room (or swap them with an instance
    elsewhere when no server has room): a kick out of the current local minimum."""
    p = st.p
    for i in rng.sample(movable, min(k, len(movable))):
        targets = [s for s in range(p.m) if s != st.srv[i] and st.fits(i, s)]
        if targets:
            st.move(i, rng.choice(targets))
            continue
        v = rng.choice(movable)
        a, t = st.srv[i], st.srv[v]
        if t != a and p.cores[v] == p.cores[i]:
            st.move(i, t)
            st.move(v, a)


# --- the exact model ----------------------------------------------------------------------------------
def _milp_vars(p: Problem) -> int:
    """Variables of the exact model: x per (movable instance, server), z per (free edge, server)."""
    mov = p.n - len(p.pinned)
    free = sum(1 for i, nb in enumerate(p.adj) for j in nb if j > i and i not in p.pinned and j not in p.pinned)
    return mov * p.m + free * (p.m if p.nic_limited else 1)


def _milp_solve(p: Problem, time_limit: float) -> tuple[list[int] | None, str]:
    """The exact model: x[i,s] binary (instance i on server s); for an edge between two movable
    instances, z[e,s] >= |x[u,s] - x[v,s]| and the edge's cut is sum_s z[e,s] / 2; an edge to a
    pinned instance on server q is cut by 1 - x[u,q]. Capacities: cores, and NIC when finite.
    Returns ``(server per instance or None, status)`` with status ``optimal``, ``feasible`` (time
    limit with an incumbent), ``infeasible`` (proven) or ``unknown`` (time limit, no incumbent)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp as _milp
    from scipy.sparse import coo_matrix

    m = p.m
    movable = [i for i in range(p.n) if i not in p.pinned]
    col = {i: k for k, i in enumerate(movable)}
    nx_ = len(movable) * m

    def xv(i: int, s: int) -> int:
        return col[i] * m + s

    free_edges: list[tuple[int, int, float, float]] = []
    pinned_edges: list[tuple[int, int, float, float]] = []  # (movable, server, w, b)
    const_nic = [0.0] * m
    for i, nb in enumerate(p.adj):
        for j, (w, b) in nb.items():
            if j <= i:
                continue
            if i in p.pinned and j in p.pinned:
                if p.pinned[i] != p.pinned[j]:
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
    nic_rows = p.nic_limited
    zs = m if nic_rows else 1
    nz = len(free_edges) * zs
    nvar = nx_ + nz
    c = np.zeros(nvar)
    for e, (_i, _j, w, _b) in enumerate(free_edges):
        c[nx_ + e * zs: nx_ + (e + 1) * zs] = w / 2 if nic_rows else w
    for (u, q, w, _b) in pinned_edges:
        c[xv(u, q)] -= w  # w * (1 - x[u,q])
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
    res = _milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
                bounds=Bounds(np.zeros(nvar), np.ones(nvar)),
                options={"time_limit": max(0.1, time_limit), "disp": False, "mip_rel_gap": 1e-6})
    if res.x is None:
        return None, "infeasible" if res.status == 2 else "unknown"
    srv = _initial(p)
    x = res.x[:nx_].reshape(len(movable), m)
    for k, i in enumerate(movable):
        srv[i] = int(np.argmax(x[k]))
    return srv, "optimal" if res.status == 0 else "feasible"


@register_solver("milp")
def milp(p: Problem, *, seed: int = 0, time_limit: float = 30.0) -> tuple[list[int], bool | None]:
    """Exact (see :func:`_milp_solve`); without an incumbent in time, the heuristic's placement."""
    p.check_room()
    t0 = time.perf_counter()
    srv, status = _milp_solve(p, time_limit)
    if status == "infeasible":
        closest = _least_excess(p, t0 + time_limit)
        raise _no_fit(p, closest, max(0.5, t0 + time_limit - time.perf_counter()), proven=True)
    if srv is None:  # no incumbent in time
        srv, _ = heuristic(p, seed=seed, time_limit=max(1.0, time_limit))
        return srv, False
    return srv, status == "optimal"


# --- when nothing fits: who binds -------------------------------------------------------------------
def _least_excess(p: Problem, deadline: float) -> list[int]:
    """A placement with as little NIC excess as the greedy packing and FM repair find."""
    st = State(p, _greedy_pack(p, _initial(p), p.movable()))
    repair(st, p.movable(), max(deadline, time.perf_counter() + 0.5))
    return st.srv


def _nic_floor(p: Problem, s: int, time_limit: float) -> tuple[float, set[int] | None]:
    """A lower bound on the bits/s crossing server s's NIC in any placement that fits the cores:
    a two-way MILP (on s or elsewhere; the other servers' cores pooled, their NICs ignored), its
    optimum or, at the time limit, its proven bound. Also the instances its best solution keeps
    on s (None without one)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp as _milp
    from scipy.sparse import coo_matrix

    movable = [i for i in range(p.n) if i not in p.pinned]
    col = {i: k for k, i in enumerate(movable)}
    ny = len(movable)
    free: list[tuple[int, int, float]] = []
    const = 0.0
    c_y = np.zeros(ny)
    for i, nb in enumerate(p.adj):
        for j, (_w, b) in nb.items():
            if j <= i or not b:
                continue
            pi, pj = p.pinned.get(i), p.pinned.get(j)
            if pi is not None and pj is not None:
                if (pi == s) != (pj == s):
                    const += b
            elif pi is not None or pj is not None:
                u, q = (j, pi) if pi is not None else (i, pj)
                if q == s:  # crosses unless u is on s
                    const += b
                    c_y[col[u]] -= b
                else:  # crosses s's NIC if u is on s
                    c_y[col[u]] += b
            else:
                free.append((col[i], col[j], b))
    nvar = ny + len(free)
    c = np.concatenate([c_y, np.array([b for _u, _v, b in free])])
    rows, cols, vals, lo, hi = [], [], [], [], []
    for e, (u, v, _b) in enumerate(free):
        for sign in (1.0, -1.0):
            r = len(lo)
            rows += [r, r, r]
            cols += [ny + e, u, v]
            vals += [1.0, -sign, sign]
            lo.append(0.0)
            hi.append(np.inf)
    cores = np.array([float(p.cores[i]) for i in movable])
    pin_s = sum(p.cores[i] for i, q in p.pinned.items() if q == s)
    pin_o = sum(p.cores[i] for i, q in p.pinned.items() if q != s)
    others = sum(p.capacity) - p.capacity[s]
    for coef, ub in ((1.0, p.capacity[s] - pin_s), (-1.0, others - pin_o - cores.sum())):
        r = len(lo)
        for k in range(ny):
            if cores[k]:
                rows.append(r)
                cols.append(k)
                vals.append(coef * cores[k])
        lo.append(-np.inf)
        hi.append(ub)
    A = coo_matrix((vals, (rows, cols)), shape=(len(lo), nvar)).tocsr()
    integrality = np.zeros(nvar)
    integrality[:ny] = 1
    res = _milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
                bounds=Bounds(np.zeros(nvar), np.ones(nvar)),
                options={"time_limit": max(0.1, time_limit), "disp": False, "mip_rel_gap": 1e-6})
    on = {i for i, k in col.items() if res.x[k] > 0.5} if res.x is not None else None
    if res.status == 0 and res.fun is not None:
        return float(res.fun) + const, on
    bound = getattr(res, "mip_dual_bound", None)
    return (float(bound) + const if bound is not None and math.isfinite(bound) else 0.0), on


def _crossing_by_nf(p: Problem, on: set[int], s: int) -> str:
    """The NF pairs whose traffic crosses server s's NIC when ``on`` are the instances on s (the
    ports pinned elsewhere are not), largest first."""
    here = set(on) | {i for i, q in p.pinned.items() if q == s}
    by: dict[tuple[str, str], float] = {}
    for i, nb in enumerate(p.adj):
        for j, (_w, b) in nb.items():
            if j > i and b and ((i in here) != (j in here)):
                key = tuple(sorted((p.nf[i], p.nf[j]))) if p.nf else (p.names[i], p.names[j])
                by[key] = by.get(key, 0.0) + b  # type: ignore[index]
    top = sorted(by.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{a}-{b} {rate(x)}" for (a, b), x in top)


def _floor_error(p: Problem, s: int, floor: float, on: set[int] | None) -> Infeasible:
    least = f" (where the least crosses: {_crossing_by_nf(p, on, s)})" if on is not None else ""
    return Infeasible(p.file, p.nic_lines[s],
                      f"NIC of server {p.servers[s]}: at least {rate(floor)} must cross it in any placement that "
                      f"fits the servers' cores, it has {rate(p.nic[s])}{least}",
                      resource="nic", server=p.servers[s], needed=floor, available=p.nic[s])


def _by_excess(p: Problem, srv: list[int]) -> list[int]:
    """The servers with a NIC limit, the most overloaded under ``srv`` (relatively) first."""
    use = p.nic_use(srv)
    finite = [s for s in range(p.m) if math.isfinite(p.nic[s])]
    return sorted(finite, key=lambda s: -(use[s] - p.nic[s]) / max(p.nic[s], 1.0))


def _no_fit(p: Problem, closest: list[int], time_limit: float, proven: bool, why: str = "",
            floors: Mapping[int, float] | None = None) -> Infeasible:
    """The error for a problem where no placement fits the NICs (cores do: :meth:`Problem.check_room`).
    A server whose NIC floor (:func:`_nic_floor`) exceeds its limit is named with that proof;
    otherwise the most overloaded NIC of the least-excess placement ``closest``. ``floors``: the
    servers whose floor is known already (below their limit)."""
    use = p.nic_use(closest)
    finite = _by_excess(p, closest)
    t_end = time.perf_counter() + time_limit
    for s in finite:
        left = t_end - time.perf_counter()
        if left <= 0:
            break
        if floors is not None and s in floors:
            continue
        floor, on = _nic_floor(p, s, min(left, max(0.5, time_limit / 2)))
        if floor > p.nic[s] * (1 + 1e-6):
            return _floor_error(p, s, floor, on)
    s = max(finite, key=lambda k: use[k] - p.nic[k] * (1 + 1e-9))
    if proven:
        reason = (f"NIC of server {p.servers[s]}: no placement fits every server's NIC (proven by the exact model); "
                  f"the one with the least excess found puts {rate(use[s])} through it, it has {rate(p.nic[s])}")
    else:
        reason = (f"NIC of server {p.servers[s]}: no placement found that fits every server's NIC (not proven "
                  f"impossible: {why or 'the exact model hit its time limit'}); the best found puts {rate(use[s])} "
                  f"through it, it has {rate(p.nic[s])}")
    return Infeasible(p.file, p.nic_lines[s], reason, resource="nic", server=p.servers[s], needed=use[s],
                      available=p.nic[s], proven=proven)


def _settle(p: Problem, closest: list[int], time_limit: float) -> list[int]:
    """A placement that fits cores and NICs when FM repair from the usual starts found none, or
    :class:`Infeasible`. For each overloaded server (most overloaded first), the two-way floor
    model either proves its NIC cannot fit, or says which instances to keep on it so that the
    least crosses: packing the rest around those and repairing is a start that usually fits.
    Then the exact model (when small enough) decides."""
    t_end = time.perf_counter() + time_limit
    movable = p.movable()
    use = p.nic_use(closest)
    floors: dict[int, float] = {}
    best, best_excess = closest, sum(max(0.0, use[s] - p.nic[s]) for s in range(p.m))
    for s in _by_excess(p, closest):
        left = t_end - time.perf_counter()
        if use[s] <= p.nic[s] * (1 + 1e-9) or left <= 0:
            break
        floor, on = _nic_floor(p, s, max(0.2, left / 3))
        floors[s] = floor
        if floor > p.nic[s] * (1 + 1e-6):
            raise _floor_error(p, s, floor, on)
        if on is None:
            continue
        srv = _initial(p)
        for i in on:
            srv[i] = s
        st = State(p, _greedy_pack(p, srv, [i for i in p.order if srv[i] < 0]))
        if repair(st, movable, time.perf_counter() + max(0.2, (t_end - time.perf_counter()) / 3)):
            return st.srv
        if st.excess < best_excess:
            best, best_excess = st.srv, st.excess
    left = max(0.5, t_end - time.perf_counter())
    nvars = _milp_vars(p)
    if nvars > MILP_MAX_VARS:
        raise _no_fit(p, best, left, proven=False, floors=floors,
                      why=f"the exact model would have {nvars:,} variables, more than the {MILP_MAX_VARS:,} it is "
                          "built for")
    t0 = time.perf_counter()
    srv, status = _milp_solve(p, left)
    if srv is not None:
        return srv
    raise _no_fit(p, best, max(0.5, left - (time.perf_counter() - t0)), proven=status == "infeasible", floors=floors)


def _fit(p: Problem, srv: list[int], time_limit: float) -> list[int]:
    """``srv`` if its NICs fit; else repaired by FM passes, or :func:`_settle`'s."""
    if not p.nic_limited:
        return srv
    st = State(p, srv)
    if st.excess <= 0:
        return srv
    t0 = time.perf_counter()
    if repair(st, p.movable(), t0 + time_limit / 3):
        return st.srv
    return _settle(p, st.srv, max(0.5, time_limit - (time.perf_counter() - t0)))


# --- the entry points -------------------------------------------------------------------------------
def place(graph: InstanceGraph, hardware: Hardware, solver: str = "heuristic", *, seed: int = 0,
          time_limit: float = 10.0) -> Placement:
    """Place every instance of ``graph`` on ``hardware`` with a named solver. The placement fits
    every server's cores and NIC, or :class:`Infeasible` says which entry of the hardware binds."""
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise PlacementError(f"unknown solver {solver!r} (solvers: {', '.join(SOLVERS)})") from None
    p = Problem.build(graph, hardware)
    t0 = time.perf_counter()
    srv, optimal = fn(p, seed=seed, time_limit=time_limit)
    fitted = _fit(p, srv, time_limit)
    if fitted is not srv:
        optimal = None
    dt = time.perf_counter() - t0
    return _result(p, fitted, solver, dt, optimal)


def _result(p: Problem, srv: list[int], solver: str, seconds: float, optimal: bool | None) -> Placement:
    bad = p.check(srv)
    return Placement({p.names[i]: p.servers[s] for i, s in enumerate(srv)}, p.cost(srv), solver, seconds,
                     optimal, not bad, bad)


def place_incremental(graph: InstanceGraph, hardware: Hardware, placement: Mapping[str, str],
                      new: Iterable[str] | None = None) -> Placement:
    """Place the instances of ``graph`` that ``placement`` lacks (or ``new``), each on the server with
    a free core (and NIC room) it exchanges most traffic with, without moving any placed instance.
    Instances of ``placement`` no longer in ``graph`` (scaled in) are dropped. Raises
    :class:`Infeasible` when no server has a free core; when no server has NIC room the placement
    is returned with ``feasible`` False and its ``violations`` (moving running instances to make
    room is the caller's decision)."""
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
