"""The switch's classifier: which route a packet takes from a source (pure code, no asyncio).

``Classifier(routes)`` groups the table's routes by source (keeping their order) and compiles
each condition once (:mod:`e2actors.switch.condition`). ``classify(source, pkt, host)`` returns
the index, within that source's list, of the first route whose condition holds, or ``NO_ROUTE``
(-1). A new table means a new Classifier: nothing (cache, counters) carries over.

Flow cache (exact match, like OVS's microflow cache). A decision is remembered under the key
``(source, proto, src, sport, dst, dport, vlans)`` — the packet's directional five-tuple and VLAN
stack, the same information as ``(source, pkt.flow_key, pkt.direction)`` but cheaper to build —
plus the 12 MAC address bytes when some condition of the source reads MACs. The rule:

* a decision is stored only if **every route of the source up to and including the match** (all
  of them, for no match) is ``flow_invariant``: then the routes before the match were false and
  the match true for reasons that hold for every packet of that direction of the flow;
* a route that tests ``domain`` counts as invariant only when the host was given (``host`` not
  None) — or the switch declared, through :meth:`Classifier.decide_unknown_host`, that the flow
  has none — since a flow's host does not change once known;
* only packets whose header layout the key pins are looked up or stored: well-formed IP, not a
  fragment (every fragment of a datagram shares ports -1 but only the first has ports), and for
  IPv6 no extension headers (libpcap's ``tcp``/``port`` code reads fixed offsets behind the
  fixed header). ARP and other non-IP frames are always classified from scratch.

The cache is bounded (``cache_size`` entries, 0: no cache): when full, the oldest quarter is evicted (FIFO on
the dict's insertion order); ``stats()`` counts hits, misses, stores and evictions.

Deferred decisions for ``domain``: the host of a flow (HTTP Host, TLS SNI) arrives after its
first packets. :meth:`Classifier.try_classify` with ``host=None`` means "not known yet": it
returns ``PENDING`` (-2) when the outcome for this packet depends on the host (a ``domain`` test
whose result matters, evaluated in three-valued logic), and a definite index when it does not
(an earlier route matched, or every domain test is irrelevant to this packet). The switch holds
pending packets and later calls :meth:`Classifier.classify` with the host, or
:meth:`Classifier.decide_unknown_host` when it gives up waiting (every ``domain`` test false).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any, Optional

from e2actors.packet.filter_compile import CodeGen
from e2actors.switch.condition import CODE_NAMES, Condition, compile_condition
from e2actors.switch.table import Route

__all__ = ["Classifier", "NO_ROUTE", "PENDING"]

NO_ROUTE = -1
PENDING = -2
INDEX_MIN_ROUTES = 8  # sources with fewer routes just try them in order

_ETHERTYPES = frozenset((0x0800, 0x86DD, 0x0806, 0x8035, 0x8100, 0x88A8, 0x9100))


# --- the candidate index ------------------------------------------------------------------------
def _has_len(v: tuple) -> bool:
    if v[0] == "len":
        return True
    return any(isinstance(x, tuple) and _has_len(x) for x in v[1:])


def _plain(v: tuple) -> bool:
    """A load of 1, 2 or 4 bytes at a constant offset (looked up as a bytes slice)."""
    return v[0] == "ld" and v[2][0] == "k"


def _necessary(ir: tuple) -> Optional[frozenset]:
    """A set of atoms ``(guard, value expression, constant)`` such that if ``ir`` is true for a
    packet, at least one atom holds: ``value(d) == constant`` and, when ``guard`` is not None
    (an ``(expression, constant)`` pair such as the ethertype), the guard too. None when no
    such set is known.

    An ``and`` needs what either side needs (we keep the more selective, guarded by the other
    side when that is a single ethertype-like test); an ``or`` needs what one of its sides needs
    (the union); ``not`` and the E2 atoms give nothing. Evaluation order and aborts do not
    matter: a true result means the atoms on its path were evaluated and true.
    """
    t = ir[0]
    if t == "cmp":
        v, c = ir[2], ir[3]
        if ir[1] == "==" and c[0] == "k" and v[0] != "k" and not _has_len(v):
            return frozenset(((None, v, c[1]),))
        return None
    if t == "and":
        a, b = _necessary(ir[1]), _necessary(ir[2])
        if a is None:
            return b
        if b is None:
            return a
        # ties: the right side (an IPv6 address's low-order words tell more than its prefix)
        keep, other = (b, a) if _score(b) >= _score(a) else (a, b)
        guard = None
        guards = {x[0] for x in other}
        if len(guards) == 1 and None not in guards:
            guard = guards.pop()  # the other side holds only under this guard: so must it
        elif len(other) == 1:
            g, gv, gc = next(iter(other))
            if g is None and _plain(gv) and _atom_score((gv, gc)) < 1:
                guard = (gv, gc)
        if guard is not None:
            keep = frozenset((x if x[0] is not None else (guard, x[1], x[2])) for x in keep)
        return keep
    if t == "or":
        a, b = _necessary(ir[1]), _necessary(ir[2])
        if a is None or b is None:
            return None
        return a | b
    return None


def _atom_score(atom: tuple) -> float:
    v, c = atom
    size = 1
    if v[0] == "ld":
        size = v[1]
    elif v[0] == "bin" and v[2][0] == "ld":
        size = v[2][1]
    if size == 2 and c in _ETHERTYPES:
        return 0.5
    return float(size)


def _score(atoms: frozenset) -> tuple:
    return (min(_atom_score((v, c)) for _g, v, c in atoms), -len(atoms))


def _bytes_of(v: tuple, c: int) -> Optional[bytes]:
    size = v[1]
    return c.to_bytes(size, "big") if c < 1 << (8 * size) else None


def _build_dispatch(conds: tuple, force: Optional[bool] = None) -> Optional[Any]:
    """A generated ``dispatch(d) -> bitmask`` of the routes that may match (bit i: route i):
    routes whose necessary atoms all fail are left out; the others keep their order.
    ``force``: None builds it for a source with at least INDEX_MIN_ROUTES routes, half of them
    indexable; True whenever a route is indexable; False never."""
    n = len(conds)
    if force is False or (force is None and n < INDEX_MIN_ROUTES):
        return None
    always = 0
    # guard -> value expression -> constant -> bitmask
    tables: dict[Optional[tuple], dict[tuple, dict[int, int]]] = {}
    indexed = 0
    for i, c in enumerate(conds):
        need = _necessary(c.ir)
        if need is None or _score(need)[0] < 1:
            always |= 1 << i
            continue
        indexed += 1
        for g, v, const in need:
            t = tables.setdefault(g, {}).setdefault(v, {})
            t[const] = t.get(const, 0) | (1 << i)
    if indexed == 0 or (force is None and indexed * 2 < n):
        return None
    ns: dict[str, Any] = dict(CODE_NAMES)
    lines = ["def dispatch(d):", f"    m = {always}"]
    nt = 0

    def lookups(by_value: dict[tuple, dict[int, int]], indent: str) -> None:
        nonlocal nt
        for v, table in by_value.items():
            name = f"_T{nt}"
            nt += 1
            if _plain(v):
                # a slice past the end is short and matches nothing, as the load would have
                # rejected the packet
                ns[name] = {bk: mask for const, mask in table.items()
                            if (bk := _bytes_of(v, const)) is not None}
                off, size = v[2][1], v[1]
                lines.append(f"{indent}m |= {name}.get(d[{off}:{off + size}], 0)")
            else:
                ns[name] = table
                code = CodeGen(set()).val(v, {})
                lines.extend([f"{indent}try:", f"{indent}    m |= {name}.get({code}, 0)",
                              f"{indent}except _ERRORS:", f"{indent}    pass"])

    if None in tables:
        lookups(tables[None], "    ")
    # guards on the same bytes exclude each other: one if/elif chain per guard position
    by_pos: dict[tuple, list[tuple[int, dict]]] = {}
    for g, by_value in tables.items():
        if g is not None:
            by_pos.setdefault(g[0], []).append((g[1], by_value))
    for k, (gv, alts) in enumerate(by_pos.items()):
        off, size = gv[2][1], gv[1]
        lines.append(f"    g{k} = d[{off}:{off + size}]")
        kw = "if"
        for gc, by_value in alts:
            gb = _bytes_of(gv, gc)
            if gb is None:
                continue
            lines.append(f"    {kw} g{k} == {gb!r}:")
            lookups(by_value, "        ")
            kw = "elif"
    lines.append("    return m")
    exec(compile("\n".join(lines) + "\n", "<classifier index>", "exec"), ns)
    return ns["dispatch"]


class _Source:
    """The routes of one source, compiled, with per-route hit counts (``hits[-1]``: no route)."""

    __slots__ = ("name", "routes", "conds", "fns", "hits", "inv", "dom", "macs", "needs_domain",
                 "first_always", "cache_ok", "pending", "dispatch")

    def __init__(self, name: str, routes: list[Route], compiled: dict[str, Condition],
                 index: Optional[bool] = None) -> None:
        self.name = name
        self.routes = tuple(routes)
        self.conds = tuple(compiled[r.condition] for r in routes)
        self.fns = tuple(c.fn for c in self.conds)
        n = len(routes)
        self.hits = [0] * (n + 1)
        # inv[i]: routes 0..i all flow invariant; dom[i]: some route 0..i tests domain;
        # index -1 (the last slot) covers every route (the no-route decision)
        inv, dom = [], []
        ok, d = True, False
        for c in self.conds:
            ok = ok and c.flow_invariant
            d = d or c.uses_domain
            inv.append(ok)
            dom.append(d)
        inv.append(ok)
        dom.append(d)
        self.inv = inv
        self.dom = dom
        self.macs = any(c.uses_macs for c in self.conds)
        nd = False
        for c in self.conds:
            if c.uses_domain:
                nd = True
                break
            if c.always:
                break
        self.needs_domain = nd
        self.first_always = n > 0 and self.conds[0].always
        self.cache_ok = n > 0 and inv[0]
        self.pending = 0
        self.dispatch = _build_dispatch(self.conds, index)


class Classifier:
    """Routes grouped by source, conditions compiled once, and the flow cache (see the module
    docstring for the caching rule and the deferred ``domain`` decisions)."""

    def __init__(self, routes: Iterable[Route], cache_size: int = 65536, netmask: int = 0,
                 index: Optional[bool] = None) -> None:
        """``cache_size``: flow cache entries (0: no cache). ``index``: the candidate index that
        skips routes which cannot match (None: automatic, for sources with many routes; True:
        always; False: never). ``netmask``: as for pcap's ``ip broadcast``."""
        grouped: dict[str, list[Route]] = {}
        compiled: dict[str, Condition] = {}
        for r in routes:
            grouped.setdefault(r.source, []).append(r)
            if r.condition not in compiled:
                compiled[r.condition] = compile_condition(r.condition, netmask)
        self._sources = {name: _Source(name, rs, compiled, index) for name, rs in grouped.items()}
        self.cache_size = max(0, int(cache_size))
        if self.cache_size == 0:  # no cache: every packet classified from scratch
            for src in self._sources.values():
                src.cache_ok = False
        self._cache: dict[tuple, int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_stores = 0
        self.cache_evictions = 0
        self.unknown_source = 0

    # --- the table ----------------------------------------------------------------------------
    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._sources)

    def routes(self, source: str) -> tuple[Route, ...]:
        """The routes of ``source`` in table order (what an index refers to)."""
        s = self._sources.get(source)
        return s.routes if s else ()

    def conditions(self, source: str) -> tuple[Condition, ...]:
        s = self._sources.get(source)
        return s.conds if s else ()

    def always(self, source: str) -> bool:
        """True when the first route of ``source`` matches every packet (no test to run)."""
        s = self._sources.get(source)
        return bool(s and s.first_always)

    def needs_domain(self, source: str) -> bool:
        """True if some route of ``source`` tests ``domain`` before a route that always matches:
        the switch must learn the host of the flows from that source (and may have to wait)."""
        s = self._sources.get(source)
        return bool(s and s.needs_domain)

    # --- classification -------------------------------------------------------------------------
    def _key(self, s: _Source, pkt: Any) -> Optional[tuple]:
        if pkt.reason is None and pkt.proto >= 0 and not pkt.frag and \
                (len(pkt.src) == 4 or pkt.l4_offset - pkt.l3_offset == 40):
            if s.macs:
                return (s.name, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.vlans,
                        pkt.data[:12])
            return (s.name, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.vlans)
        return None

    def _lookup(self, s: _Source, key: tuple) -> int | None:
        """The cached decision for ``key`` (counted as a hit), or None (counted as a miss)."""
        idx = self._cache.get(key)
        if idx is None:
            self.cache_misses += 1
            return None
        self.cache_hits += 1
        s.hits[idx] += 1
        return idx

    def _store(self, key: tuple, idx: int) -> None:
        cache = self._cache
        if len(cache) >= self.cache_size:
            drop = max(1, len(cache) // 4)
            for k in list(islice(cache, drop)):
                del cache[k]
            self.cache_evictions += drop
        cache[key] = idx
        self.cache_stores += 1

    @staticmethod
    def _decide(s: _Source, pkt: Any, host: Optional[str]) -> int:
        """The first route that matches, from scratch (through the index when there is one)."""
        fns = s.fns
        if s.dispatch is None:
            for i, fn in enumerate(fns):
                if fn(pkt, host):
                    return i
            return NO_ROUTE
        m = s.dispatch(pkt.data)
        while m:
            low = m & -m
            i = low.bit_length() - 1
            if fns[i](pkt, host):
                return i
            m ^= low
        return NO_ROUTE

    def _classify(self, source: str, pkt: Any, host: Optional[str], sticky: bool) -> int:
        s = self._sources.get(source)
        if s is None:
            self.unknown_source += 1
            return NO_ROUTE
        if s.first_always:
            s.hits[0] += 1
            return 0
        key = self._key(s, pkt) if s.cache_ok else None
        if key is not None:
            idx = self._lookup(s, key)
            if idx is not None:
                return idx
        idx = self._decide(s, pkt, host)
        s.hits[idx] += 1
        if key is not None and s.inv[idx] and (host is not None or sticky or not s.dom[idx]):
            self._store(key, idx)
        return idx

    def classify(self, source: str, pkt: Any, host: Optional[str] = None) -> int:
        """The index of the first route of ``source`` whose condition holds for ``pkt`` (a
        :class:`~e2actors.packet.packet.Packet`), or ``NO_ROUTE``. ``host``: the flow's host
        (:func:`~e2actors.switch.condition.normalize_host`), or None: every ``domain`` test is
        false (such a decision is not cached when it involved a ``domain`` route)."""
        return self._classify(source, pkt, host, False)

    def decide_unknown_host(self, source: str, pkt: Any) -> int:
        """The decision when the switch gives up waiting for the flow's host: every ``domain``
        test is false. The decision is cached like one with a known host (the flow keeps it)."""
        return self._classify(source, pkt, None, True)

    def try_classify(self, source: str, pkt: Any, host: Optional[str] = None) -> int:
        """Like :meth:`classify`, but ``host=None`` means "not known yet": returns ``PENDING``
        when the decision depends on the host (nothing is counted then), else the definite
        index. With a host, the same as :meth:`classify`."""
        if host is not None:
            return self._classify(source, pkt, host, False)
        s = self._sources.get(source)
        if s is None or not s.needs_domain:
            return self._classify(source, pkt, None, False)
        key = self._key(s, pkt) if s.cache_ok else None
        if key is not None:
            idx = self._lookup(s, key)
            if idx is not None:
                return idx
        idx = NO_ROUTE
        conds = s.conds
        if s.dispatch is None:
            order: Iterable[int] = range(len(conds))
        else:
            m = s.dispatch(pkt.data)
            order = [i for i in range(len(conds)) if m >> i & 1]
        for i in order:
            c = conds[i]
            if c.uses_domain:
                r = c.eval3(pkt)
                if r is None:
                    s.pending += 1
                    return PENDING
            else:
                r = c.fn(pkt, None)
            if r:
                idx = i
                break
        s.hits[idx] += 1
        if key is not None and s.inv[idx] and not s.dom[idx]:
            self._store(key, idx)
        return idx

    def classify_many(self, source: str, packets: Iterable[Any], host: Optional[str] = None
                      ) -> list[int]:
        """:meth:`classify` for each packet of a batch (one host for all): the same decisions,
        counts and cache use, in one loop (the switch's path for a batch from one source)."""
        s = self._sources.get(source)
        if s is not None and s.first_always:
            packets = packets if isinstance(packets, list) else list(packets)
            s.hits[0] += len(packets)
            return [0] * len(packets)
        if s is None or not s.cache_ok:
            c = self._classify
            return [c(source, p, host, False) for p in packets]
        out: list[int] = []
        add = out.append
        get = self._cache.get
        hits = s.hits
        macs = s.macs
        decide = self._decide
        dispatch = s.dispatch
        fns = s.fns
        hit = miss = 0
        for p in packets:
            if p.reason is None and p.proto >= 0 and not p.frag and \
                    (len(p.src) == 4 or p.l4_offset - p.l3_offset == 40):
                if macs:
                    key = (source, p.proto, p.src, p.sport, p.dst, p.dport, p.vlans, p.data[:12])
                else:
                    key = (source, p.proto, p.src, p.sport, p.dst, p.dport, p.vlans)
                idx = get(key)
                if idx is not None:
                    hit += 1
                    hits[idx] += 1
                    add(idx)
                    continue
                miss += 1
            else:
                key = None
            if dispatch is None:
                idx = decide(s, p, host)
            else:
                idx = NO_ROUTE
                m = dispatch(p.data)
                while m:
                    low = m & -m
                    i = low.bit_length() - 1
                    if fns[i](p, host):
                        idx = i
                        break
                    m ^= low
            hits[idx] += 1
            if key is not None and s.inv[idx] and (host is not None or not s.dom[idx]):
                self._store(key, idx)
            add(idx)
        self.cache_hits += hit
        self.cache_misses += miss
        return out

    # --- counters -------------------------------------------------------------------------------
    def hits(self, source: str) -> list[int]:
        """Per-route decision counts of ``source`` in table order (cached decisions included)."""
        s = self._sources.get(source)
        return list(s.hits[:-1]) if s else []

    def no_route(self, source: str) -> int:
        s = self._sources.get(source)
        return s.hits[-1] if s else 0

    def counts(self) -> list[tuple[Route, int]]:
        """Every route with its hit count, sources in table order."""
        return [(r, s.hits[i]) for s in self._sources.values() for i, r in enumerate(s.routes)]

    def clear_cache(self) -> None:
        self._cache.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "cache_size": len(self._cache),
            "cache_capacity": self.cache_size,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_stores": self.cache_stores,
            "cache_evictions": self.cache_evictions,
            "unknown_source": self.unknown_source,
            "no_route": {n: s.hits[-1] for n, s in self._sources.items()},
            "pending": {n: s.pending for n, s in self._sources.items()},
        }


# --- benchmark ------------------------------------------------------------------------------------
def header_routes(packets: list[Any], n: int, source: str = "port:in") -> list[Route]:
    """``n`` routes ``host A and tcp port P`` for (server address, port) pairs that occur in
    ``packets`` (then made-up ones), in a fixed order; for benchmarks and tests."""
    from e2actors.packet.packet import format_addr

    seen: dict[tuple[str, int], None] = {}
    for p in packets:
        if p.proto == 6 and p.dport in (80, 443) and not p.malformed:
            seen.setdefault((format_addr(p.dst), p.dport), None)
    pairs = list(seen)[:n]
    i = 0
    while len(pairs) < n:
        pairs.append((f"203.0.113.{i % 250 + 1}", 1000 + i))
        i += 1
    return [Route(source, f"host {a} and tcp port {port}", f"port:out{k}", f"r{k}")
            for k, (a, port) in enumerate(pairs)]
