"""Refining a placement: Fiduccia-Mattheyses passes over servers with cores and NIC limits.

A placement here is ``srv``: one server index per instance of a
:class:`~e2actors.manager.problem.Problem`. :class:`State` keeps, per instance, its traffic
towards each server (packets/s and bits/s) and, per server, its core and NIC use, the cut and the
NIC excess, all updated in O(degree) per move: gains are read, never recomputed.

:func:`fm_refine` is Kernighan-Lin / Fiduccia-Mattheyses (k-way): in a pass every movable instance
moves at most once and is then locked; each step takes the best operation left, a move to a server
the instance exchanges traffic with or, when that server has no room, a swap with an instance
there, or a move to the server with the most free cores, even when it makes the cut worse (a
tentative move); at the end the pass keeps the best prefix of its steps and undoes the rest.
Passes repeat while one improves. That is what lets a group of instances cross together where
every single move or swap costs something: a plain descent stops there. :func:`fm_refine` runs
the plain descent first (cheap; in DAG order it settles chains well) and the passes from its
local minimum. Every tentative step respects cores and NICs: a step may not overfill a server's
cores nor push a NIC past its limit.

Candidates sit in a heap keyed by an optimistic gain (the best move ignoring room), updated when
a neighbour moves; a popped entry is evaluated exactly (room, NICs, swaps) and pushed back when it
is no longer the best (lazy evaluation), so a pass costs O(steps x degree x log n). One NF's
instances are twins (the same traffic to the same neighbours: the balancer spreads evenly), so a
swap looks for a partner among the twin classes on the target server, one instance standing for
its class: a step costs O(classes there), not O(instances there).

The same pass repairs a placement whose NICs are overloaded: :func:`repair` minimizes (NIC excess,
cut) lexicographically; its steps respect cores, and the excess is what they lower (a step may
shift excess between servers; the pass keeps the prefix with the least). :func:`improve_only` is
the plain descent alone (moves and swaps taken only while they shrink the cut), kept to measure
FM against.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from itertools import islice

from e2actors.manager.problem import Problem

__all__ = ["State", "fm_refine", "improve_only", "repair"]

EPS = 1e-9
#: NIC comparisons allow this relative slack (floating sums of many edges' bits/s).
NIC_TOL = 1e-9
#: A swap looks at most at this many twin classes on the target server (keeps a step bounded).
SWAP_SCAN = 64


class State:
    """An assignment with incremental gains: ``conn[i][s]`` packets/s between instance i and the
    instances on server s, ``bconn`` the same in bits/s, per-server ``load`` (cores) and ``nic``
    (bits/s crossing), the ``cut`` (packets/s between servers) and the total NIC ``excess``."""

    def __init__(self, p: Problem, srv: Sequence[int]) -> None:
        self.p = p
        self.srv = list(srv)
        m = p.m
        self.load = [0] * m
        self.members: list[dict[int, None]] = [{} for _ in range(m)]
        for i, s in enumerate(self.srv):
            self.load[s] += p.cores[i]
            self.members[s][i] = None
        self.conn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.bconn: list[dict[int, float]] = [{} for _ in range(p.n)]
        self.tot_b = [0.0] * p.n
        self.nic = [0.0] * m
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
        self.limit = [x * (1 + NIC_TOL) if math.isfinite(x) else math.inf for x in p.nic]
        self.nic_limited = any(math.isfinite(x) for x in p.nic)
        self.excess = sum(self.over(s, self.nic[s]) for s in range(m))

    # --- reading -----------------------------------------------------------------------------------
    def over(self, s: int, use: float) -> float:
        """How far ``use`` bits/s would be past server s's NIC (0 within it)."""
        x = use - self.limit[s]
        return x if x > 0 else 0.0

    def nic_after_move(self, i: int, t: int) -> tuple[float, float]:
        """NIC use of i's server and of ``t`` if i moved to t (no other server's changes)."""
        a = self.srv[i]
        bc = self.bconn[i]
        tot = self.tot_b[i]
        ba, bt = bc.get(a, 0.0), bc.get(t, 0.0)
        return self.nic[a] - (tot - ba) + ba, self.nic[t] - bt + (tot - bt)

    def nic_after_swap(self, i: int, v: int) -> tuple[float, float]:
        """NIC use of i's server a and v's server t if i went to t and v to a."""
        a, t = self.srv[i], self.srv[v]
        na, nt = self.nic_after_move(i, t)
        b_iv = self.p.adj[i].get(v, (0.0, 0.0))[1]
        bv = self.bconn[v]
        bva, bvt = bv.get(a, 0.0) - b_iv, bv.get(t, 0.0) + b_iv  # i has moved from a to t
        tot = self.tot_b[v]
        return na - bva + (tot - bva), nt - (tot - bvt) + bvt

    def nic_ok(self, a: int, na: float, t: int, nt: float) -> bool:
        """Whether new NIC uses ``na``/``nt`` on servers a/t keep within the limits (or, on a server
        already past its limit, do not go further past it)."""
        if not self.nic_limited:
            return True
        return (na <= self.limit[a] or na <= self.nic[a] + 1e-6) and (nt <= self.limit[t] or nt <= self.nic[t] + 1e-6)

    def excess_gain(self, a: int, na: float, t: int, nt: float) -> float:
        if not self.nic_limited:
            return 0.0
        return self.over(a, self.nic[a]) + self.over(t, self.nic[t]) - self.over(a, na) - self.over(t, nt)

    def fits(self, i: int, t: int) -> bool:
        return self.load[t] + self.p.cores[i] <= self.p.capacity[t]

    def move_gain(self, i: int, t: int) -> float:
        c = self.conn[i]
        return c.get(t, 0.0) - c.get(self.srv[i], 0.0)

    def nic_ok_move(self, i: int, t: int) -> bool:
        if not self.nic_limited:
            return True
        na, nt = self.nic_after_move(i, t)
        return self.nic_ok(self.srv[i], na, t, nt)

    # --- changing ----------------------------------------------------------------------------------
    def move(self, i: int, t: int) -> None:
        """Move instance i to server t, updating every table in O(degree of i)."""
        a = self.srv[i]
        if a == t:
            return
        p = self.p
        self.cut -= self.move_gain(i, t)
        if self.nic_limited:
            na, nt = self.nic_after_move(i, t)
            self.excess += self.over(a, na) + self.over(t, nt) - self.over(a, self.nic[a]) - self.over(t, self.nic[t])
            self.nic[a], self.nic[t] = na, nt
        self.load[a] -= p.cores[i]
        self.load[t] += p.cores[i]
        del self.members[a][i]
        self.members[t][i] = None
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


# --- Fiduccia-Mattheyses ------------------------------------------------------------------------------
Gain = tuple[float, float]  # (NIC excess removed, packets/s removed from the cut): compared in that order
_NONE: Gain = (-math.inf, -math.inf)


class _Pass:
    """One FM pass's bookkeeping over a :class:`State`."""

    def __init__(self, st: State, movable: Sequence[int], repair: bool, group_of: Sequence[int]) -> None:
        self.st = st
        self.repair = repair
        self.group_of = group_of
        n = st.p.n
        self.movable = bytearray(n)
        for i in movable:
            self.movable[i] = 1
        self.locked = bytearray(n)
        self.ver = [0] * n
        # per server: twin class -> its unlocked movable instances there (swap partners are looked
        # for among classes, not instances: twins are interchangeable, one stands for all)
        self.free: list[dict[int, dict[int, None]]] = [{} for _ in range(st.p.m)]
        for i in movable:
            c = group_of[i]
            self.free[st.srv[i]].setdefault(c, {})[i] = None
        self.heap: list[tuple[float, float, int, int]] = []
        self.tol = EPS * max(1.0, sum(w for nb in st.p.adj for w, _b in nb.values()))

    def key(self, i: int) -> Gain:
        """An optimistic gain for i: its best move to a server it talks to, ignoring room."""
        st = self.st
        a = st.srv[i]
        ci = st.conn[i]
        here = ci.get(a, 0.0)
        best = _NONE
        for t, w in ci.items():
            if t == a:
                continue
            if self.repair:
                na, nt = st.nic_after_move(i, t)
                g = (st.excess_gain(a, na, t, nt), w - here)
            else:
                g = (0.0, w - here)
            if g > best:
                best = g
        return best

    def push(self, i: int) -> None:
        g = self.key(i)
        if g is not _NONE:
            heapq.heappush(self.heap, (-g[0], -g[1], i, self.ver[i]))

    def best_op(self, i: int) -> tuple[Gain, int, int]:
        """The best step for i that respects cores and NICs now: ``(gain, target, swap partner or -1)``.
        Moves go to servers i exchanges traffic with; where such a server has no room (or its NIC
        none), a swap with an instance there; or to the server with the most free cores."""
        st = self.st
        a = st.srv[i]
        ci = st.conn[i]
        here = ci.get(a, 0.0)
        best: tuple[Gain, int, int] = (_NONE, -1, -1)
        repair = self.repair
        full: list[tuple[float, int]] = []
        for t, w in ci.items():
            if t == a:
                continue
            g_move = w - here
            if st.fits(i, t):
                na, nt = st.nic_after_move(i, t)
                if repair or st.nic_ok(a, na, t, nt):
                    g = (st.excess_gain(a, na, t, nt) if repair else 0.0, g_move)
                    if g > best[0]:
                        best = (g, t, -1)
                    continue
            full.append((g_move, t))
        for g_move, t in full:
            best = self._best_swap(i, a, t, g_move, best)
        # and the server with the most free cores, when i exchanges nothing with it: a move that
        # opens an empty server or frees a core where it is scarce
        t = self.roomiest
        if t != a and t not in ci and st.fits(i, t):
            na, nt = st.nic_after_move(i, t)
            if repair or st.nic_ok(a, na, t, nt):
                g = (st.excess_gain(a, na, t, nt) if repair else 0.0, -here)
                if g > best[0]:
                    best = (g, t, -1)
        return best

    def find_roomiest(self) -> None:
        """The server with the most free cores (after every step: O(servers))."""
        st = self.st
        cap, load = st.p.capacity, st.load
        self.roomiest = max(range(st.p.m), key=lambda s: cap[s] - load[s])

    def _best_swap(self, i: int, a: int, t: int, g_move: float, best: tuple[Gain, int, int]) -> tuple[Gain, int, int]:
        """``best`` or a better swap of i (on a) with an instance on t."""
        st = self.st
        p = st.p
        ci_cores = p.cores[i]
        gi = self.group_of[i]
        adj_i = p.adj[i]
        free_t = p.capacity[t] - st.load[t] - ci_cores
        free_a = p.capacity[a] - st.load[a] + ci_cores
        conn, cores = st.conn, p.cores
        repair, limited = self.repair, st.nic_limited
        b0, b1 = best[0]
        for cls, mem in islice(self.free[t].items(), SWAP_SCAN):
            if cls == gi or not mem:
                continue
            v = next(iter(mem))
            cv = cores[v]
            if free_t + cv < 0 or free_a - cv < 0:
                continue
            c = conn[v]
            gs = g_move + c.get(a, 0.0) - c.get(t, 0.0)
            if v in adj_i:
                gs -= 2 * adj_i[v][0]
            if not repair:
                if b0 > 0.0 or gs <= b1:
                    continue
                if limited:
                    na, nt = st.nic_after_swap(i, v)
                    if not st.nic_ok(a, na, t, nt):
                        continue
                b0, b1 = 0.0, gs
                best = ((0.0, gs), t, v)
            else:
                na, nt = st.nic_after_swap(i, v)
                g = (st.excess_gain(a, na, t, nt), gs)
                if g > (b0, b1):
                    b0, b1 = g
                    best = (g, t, v)
        return best

    def unfree(self, i: int, s: int) -> None:
        """i (which was on s) is locked: no longer a swap partner."""
        c = self.group_of[i]
        mem = self.free[s][c]
        del mem[i]
        if not mem:
            del self.free[s][c]

    def run(self, movable: Sequence[int], deadline: float, stall: int) -> bool:
        """One pass; returns whether it improved (the state then holds the best prefix)."""
        st = self.st
        for i in movable:
            self.push(i)
        log: list[tuple[int, int]] = []  # (instance, server it left), in order
        start = (st.excess, st.cut)
        best_val, best_len = start, 0
        heap, locked, ver, adj = self.heap, self.locked, self.ver, st.p.adj
        self.find_roomiest()
        steps = 0
        while heap:
            _e, _c, i, v0 = heapq.heappop(heap)
            if locked[i] or v0 != ver[i]:
                continue
            steps += 1
            if steps & 63 == 0 and time.perf_counter() > deadline:
                break
            g, t, v = self.best_op(i)
            if t < 0:
                continue  # nothing fits now; a neighbour's move pushes it again
            if heap and (-g[0], -g[1]) > heap[0][:2]:
                # no longer the best: back in with its exact gain
                heapq.heappush(heap, (-g[0], -g[1], i, ver[i]))
                continue
            a = st.srv[i]
            st.move(i, t)
            locked[i] = 1
            self.unfree(i, a)
            log.append((i, a))
            moved = [i]
            if v >= 0:
                st.move(v, a)
                locked[v] = 1
                self.unfree(v, t)
                log.append((v, t))
                moved.append(v)
            self.find_roomiest()
            ex, cut = st.excess, st.cut
            if ex < best_val[0] - 1e-3 or (ex <= best_val[0] + 1e-3 and cut < best_val[1] - self.tol):
                best_val, best_len = (ex, cut), len(log)
            elif len(log) - best_len > stall:
                break
            for x in moved:
                for j in adj[x]:
                    if self.movable[j] and not locked[j]:
                        ver[j] += 1
                        self.push(j)
        for i, a in reversed(log[best_len:]):
            st.move(i, a)
        return best_len > 0


def _groups(p: Problem) -> list[int]:
    """Per instance its twin class: instances with the same cores and the same traffic to the same
    neighbours (one NF's instances, as the balancer spreads traffic evenly) are interchangeable:
    swapping two is pointless and one stands for all as a swap partner. Pinned ports: -1."""
    cached = getattr(p, "_twins", None)
    if cached is not None and len(cached) == p.n:
        return cached
    sig: dict[tuple, int] = {}
    out = [-1] * p.n
    for i in range(p.n):
        if i in p.pinned:
            continue
        key = (p.cores[i], tuple(sorted(p.adj[i].items())))
        out[i] = sig.setdefault(key, len(sig))
    p._twins = out  # type: ignore[attr-defined]
    return out


def _stall(n: int) -> int:
    # steps a pass goes on without a new best before it gives up (FM's early stop): enough to climb
    # out of a local minimum a few groups deep, bounded so large passes stay linear-ish
    return max(40, min(400, n // 8))


def fm_refine(st: State, movable: Sequence[int], deadline: float, max_passes: int = 30) -> int:
    """Shrink the cut (capacities kept): first the plain descent (:func:`improve_only`: cheap, and
    in DAG order it settles chains well), then FM passes from its local minimum while a pass
    improves. Returns the FM passes run."""
    improve_only(st, movable, deadline)
    group_of = _groups(st.p)
    stall = _stall(len(movable))
    k = 0
    for k in range(1, max_passes + 1):
        if not _Pass(st, movable, False, group_of).run(movable, deadline, stall) or time.perf_counter() > deadline:
            break
    return k


def repair(st: State, movable: Sequence[int], deadline: float, max_passes: int = 30) -> bool:
    """FM passes lowering NIC excess first, the cut second; returns whether every NIC fits."""
    if st.excess <= 0:
        return True
    group_of = _groups(st.p)
    stall = _stall(len(movable))
    for _ in range(max_passes):
        if not _Pass(st, movable, True, group_of).run(movable, deadline, stall) or st.excess <= 0:
            break
        if time.perf_counter() > deadline:
            break
    return st.excess <= 0


def improve_only(st: State, movable: Sequence[int], deadline: float, max_passes: int = 50) -> int:
    """The plain descent: moves and swaps with positive gain (capacities kept), pass after pass,
    while the cut shrinks. Stops in the first local minimum; kept to measure FM against."""
    p = st.p
    adj = p.adj
    group_of = _groups(p)
    k = 0
    for k in range(1, max_passes + 1):
        improved = False
        for i in movable:
            if time.perf_counter() > deadline:
                return k
            a = st.srv[i]
            ci = st.conn[i]
            here = ci.get(a, 0.0)
            best_gain, best = EPS, None
            for t, w in sorted(ci.items(), key=lambda kv: -kv[1]):
                if t == a:
                    continue
                g = w - here
                if g > best_gain and st.fits(i, t) and st.nic_ok_move(i, t):
                    best_gain, best = g, (t, -1)
                gi = group_of[i]
                seen: set[int] = set()
                for v in st.members[t]:
                    cls = group_of[v]
                    if cls < 0 or cls == gi or cls in seen:  # a port, a twin of i, or a twin of one tried
                        continue
                    seen.add(cls)
                    cv = st.conn[v]
                    cva = cv.get(a, 0.0)
                    if g + cva <= best_gain:
                        continue
                    if st.load[t] - p.cores[v] + p.cores[i] > p.capacity[t]:
                        continue
                    if st.load[a] - p.cores[i] + p.cores[v] > p.capacity[a]:
                        continue
                    gs = g + cva - cv.get(t, 0.0) - 2 * adj[i].get(v, (0.0, 0.0))[0]
                    if gs > best_gain and st.nic_ok(a, *_swap_pair(st, i, v, t)):
                        best_gain, best = gs, (t, v)
            if best is None:
                continue
            t, v = best
            st.move(i, t)
            if v >= 0:
                st.move(v, a)
            improved = True
        if not improved:
            break
    return k


def _swap_pair(st: State, i: int, v: int, t: int) -> tuple[float, int, float]:
    na, nt = st.nic_after_swap(i, v)
    return na, t, nt
