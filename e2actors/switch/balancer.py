"""The load balancer of one NF group: affinity, weights, migration avoidance, draining. Pure code.

The switch owns one :class:`Balancer` per NF group and asks it, packet by packet, which instance
gets the packet: ``bal.pick(pkt, now)`` returns the instance's name (a ``str``), a :class:`Hold`
(the instance is ``moving``: keep the packet until its state has moved, then deliver it to
``hold.instance``), or ``None`` (no instance can take a new flow: drop it, reason ``no instance``).
Time is whatever the switch says it is (packet timestamps for a pcap replay, the clock live); the
balancer never reads a clock and never awaits.

Hashing (stable: identical in every process, run and machine, so all switches of a cluster agree;
Python's ``hash()`` is salted per process and is never used):

- A flow's key is the packet layer's symmetric ``flow_key`` ``(proto, lo_addr, lo_port, hi_addr,
  hi_port, vlans)``, so both directions hash alike. :func:`flow_hash` is
  ``fmix32(crc32(hi_addr, crc32(lo_addr, (lo_port & 0xFFFF) << 16 | (hi_port & 0xFFFF))) ^ proto)``
  with the VLAN ids (2 bytes each, big-endian) folded in by one more ``crc32`` when present;
  ``fmix32`` is MurmurHash3's 32-bit finalizer.
- ``affinity: host`` hashes a host address instead: :func:`host_hash` is
  ``fmix32(crc32(addr, 0x686F7374))``.
- The bucket is ``hash % buckets`` (4096 by default).

Bucket assignment: weighted rendezvous (highest random weight) hashing. Member ``m`` gets a 64-bit
seed ``s_m`` (blake2b of its name); for bucket ``b`` its draw is ``z = splitmix64(s_m ^ (b *
0x9E3779B97F4A7C15 mod 2**64))``. With equal weights the member with the highest ``z`` owns the
bucket (integers only: exact everywhere); with unequal weights the highest ``w / -ln(u)`` with
``u = ((z >> 11) + 0.5) / 2**53`` (ties to the lower name), which gives each member a share of
the buckets proportional to its weight. The assignment depends only on the set of (eligible
member, weight) pairs, never on history, so every switch computes the same table. Adding a member
moves only the buckets it wins (about ``w_new / W``), all of them to it; removing one moves only
its own buckets; changing one weight moves buckets only to or from that member.

Eligible to own buckets (take new flows): ``running`` and ``moving`` members with weight > 0.
``starting`` members get no traffic at all; ``draining`` members get no new flows but keep their
live ones; a ``moving`` member keeps its buckets and flows, and every packet for it is held.
Members that leave the table, or turn ``failed``/``stopped`` (or back to ``starting``: a restart
lost their state), lose their flows at once (counted as cut over: their next packets go to the
bucket's current owner).

A flow is what ``flow_key`` says it is: IP fragments carry ports -1 in it, so a fragmented
datagram's pieces form their own flow (all pieces together, but apart from the flow's unfragmented
packets) unless the switch reassembles first or passes its own key.

Affinity:

- ``none``: no flow table; each packet goes to its flow's bucket owner (a flow's packets stay in
  order on one instance while the table is unchanged).
- ``flow``: a flow table remembers each live flow's instance. Migration avoidance: a packet whose
  flow is in the table goes to the recorded instance even when its bucket has moved since (the
  flow began before the change); a packet of an unknown flow starts a flow on the bucket's current
  owner. Once the old flows end, a moved bucket is plain again.
- ``host``: all flows of one *client host* go to one instance. The client host is the flow's
  initiator, decided on the flow's first packet and recorded with the flow: the destination of a
  SYN+ACK, else the source of the first packet seen (for TCP that is the SYN's sender; for UDP and
  ICMP the first sender; packets without an IP address fall back to the flow key). The host hashes
  to the bucket; a host table (host -> instance, live flow count) keeps every new flow of a host
  that still has live flows on that host's instance, so migration avoidance works per host: a host
  moves to a bucket's new owner only once all its flows have ended. This holds on a ``draining``
  instance too (the host's state is there): a busy host keeps it until the drain deadline.

Flow ends (``flow``/``host``): a TCP flow is *closed* by a FIN in each direction or by an RST; a
closed entry is removed once it has been idle ``fin_timeout`` seconds (a grace for the last ACK
and retransmissions; removal happens between one and two ``fin_timeout`` after the last packet).
A SYN (without ACK) on a closed or half-closed entry reopens it on the same instance (port reuse).
A half-closed flow (one FIN) is a live flow with the ordinary idle timeout. Any flow idle for
``flow_timeout`` ends. Past ``max_flows`` the least recently used flow is evicted (counted: its
next packet starts a flow again, on the bucket's current owner).

Draining: a member that turns ``draining`` is *drained* once its last flow ends, or at
``drain_timeout`` seconds after the drain began, when its remaining flows are cut over (counted)
and it is drained too. :meth:`Balancer.take_drained` returns the members drained since the last
call, so the switch can tell the manager the instance may stop.

Housekeeping (expiry, grace, drain deadlines) runs in :meth:`Balancer.tick`, which ``pick`` calls
itself whenever ``tick_every`` seconds of packet time have passed; the switch may also call it
on a timer when no packets come. Time must not run backwards (a looping pcap replay should offset
its timestamps on each loop).

How the switch uses it::

    bal = Balancer.for_group(group_spec)          # or Balancer(members, affinity, ...)
    r = bal.pick(pkt, now, key)                   # key: pkt.flow_key, if the switch has it already
    if r.__class__ is str: send to instance r
    elif r is None: drop, reason "no instance"
    else: hold under r.instance (a Hold) until that member is running again, then send there
    bal.update(new_group_spec.members, now)       # each new table version
    for name in bal.take_drained(): tell the manager `name` may stop
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any
from zlib import crc32

__all__ = [
    "AFFINITIES",
    "Balancer",
    "Hold",
    "MEMBER_STATES",
    "flow_hash",
    "host_hash",
    "rendezvous_owners",
    "shard_hash",
    "shard_of",
    "shard_of_frame",
]

AFFINITIES = ("none", "flow", "host")
RUNNING, STARTING, DRAINING, MOVING, FAILED, STOPPED = (
    "running",
    "starting",
    "draining",
    "moving",
    "failed",
    "stopped",
)
MEMBER_STATES = (RUNNING, STARTING, DRAINING, MOVING, FAILED, STOPPED)
_ELIGIBLE = (RUNNING, MOVING)  # may own buckets (take new flows)
_GONE = (FAILED, STOPPED)  # treated like a member that left the table

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN64 = 0x9E3779B97F4A7C15
_HOST_SEED = 0x686F7374  # "host"

# TCP flags
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
# flow entry: [instance, last_seen, flags, bucket, host]
_FIN0, _FIN1, _CLOSED, _KEPT = 1, 2, 4, 8


# --- stable hashes -------------------------------------------------------------------------------
def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def flow_hash(key: tuple) -> int:
    """The stable 32-bit hash of a symmetric flow key (see the module docstring)."""
    proto, a, pa, b, pb, vlans = key
    h = crc32(b, crc32(a, (pa & 0xFFFF) << 16 | (pb & 0xFFFF)))
    if vlans:
        h = crc32(b"".join((v & 0xFFFF).to_bytes(2, "big") for v in vlans), h)
    return _fmix32(h ^ (proto & _M32))


def shard_hash(proto: int, a: bytes, pa: int, b: bytes, pb: int) -> int:
    """The stable 32-bit hash that splits flows over shards: symmetric (both directions alike),
    with ports -1 for every fragment of a datagram (as the flow key has them). Cheaper than
    :func:`flow_hash` (every shard hashes every packet of a replayed capture)."""
    if (a, pa) > (b, pb):
        a, pa, b, pb = b, pb, a, pa
    return ((crc32(b, crc32(a, (pa & 0xFFFF) << 16 | (pb & 0xFFFF))) ^ proto) * 0x9E3779B1) & _M32


def shard_of(pkt: Any, n: int) -> int:
    """Which of ``n`` shards a packet's flow belongs to (both directions alike; every fragment of
    a datagram alike, apart from the flow's unfragmented packets, as a NIC's RSS does): the high
    bits of :func:`shard_hash` (``h * n >> 32``, the kernel's ``reciprocal_scale``). Frames
    without IP, and malformed ones, go to shard 0."""
    if n <= 1 or pkt.reason is not None or pkt.proto < 0:
        return 0
    if pkt.frag:
        return (shard_hash(pkt.proto, pkt.src, -1, pkt.dst, -1) * n) >> 32
    return (shard_hash(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport) * n) >> 32


_u16x2 = struct.Struct("!HH").unpack_from


def shard_of_frame(data: bytes, linktype: int, n: int) -> int:
    """:func:`shard_of` straight from a frame's bytes, without parsing a packet, for the common
    case (Ethernet without VLAN tags, IPv4): -1 for any other frame (parse it and ask
    :func:`shard_of`). Equal to :func:`shard_of` wherever both answer for a well-formed frame."""
    if linktype != 1 or len(data) < 34 or data[12] != 8 or data[13] != 0:
        return -1
    vihl = data[14]
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20 or len(data) < 14 + ihl:
        return -1
    proto = data[23]
    if (data[20] & 0x3F) or data[21]:  # a fragment (offset, or more fragments follow)
        pa = pb = -1
    elif proto == 6 or proto == 17 or proto == 132:
        if len(data) < 18 + ihl:
            return -1
        pa, pb = _u16x2(data, 14 + ihl)
    else:
        pa = pb = -1
    return (shard_hash(proto, data[26:30], pa, data[30:34], pb) * n) >> 32


def host_hash(addr: bytes) -> int:
    """The stable 32-bit hash of a host address (``affinity: host``)."""
    return _fmix32(crc32(addr, _HOST_SEED))


def _member_seed(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=64)
def _draws(name: str, buckets: int) -> tuple[int, ...]:
    """splitmix64 draws of member ``name`` for buckets ``0 .. buckets-1`` (cached: a member's
    draws never change, so a table update only compares them)."""
    s = _member_seed(name)
    out = []
    for b in range(buckets):
        z = s ^ ((b * _GOLDEN64) & _M64)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return tuple(out)


def rendezvous_owners(members: Iterable[tuple[str, float]], buckets: int) -> list[str | None]:
    """Weighted rendezvous assignment: ``owners[b]`` is the member owning bucket ``b`` (None when
    ``members`` is empty). ``members``: ``(name, weight)`` pairs with weight > 0. Ties (equal
    draws: practically never) go to the lower name."""
    ms = sorted((str(n), float(w)) for n, w in members)
    if not ms:
        return [None] * buckets
    names = [n for n, _w in ms]
    if len(names) != len(set(names)):
        raise ValueError("member names must be unique")
    if len(ms) == 1:
        return [names[0]] * buckets
    weights = [w for _n, w in ms]
    draws = [_draws(n, buckets) for n in names]
    idx = range(len(names))
    if all(w == weights[0] for w in weights):
        # Equal weights: the highest draw wins (exact integer comparison).
        return [names[max(idx, key=col.__getitem__)] for col in zip(*draws)]
    inv = 1.0 / 2**53
    log = math.log
    owners: list[str | None] = []
    for col in zip(*draws):
        best_i, best = 0, -1.0
        for i in idx:
            score = weights[i] / -log(((col[i] >> 11) + 0.5) * inv)
            if score > best:
                best_i, best = i, score
        owners.append(names[best_i])
    return owners


# --- the balancer --------------------------------------------------------------------------------
class Hold:
    """``pick``'s answer for a packet whose instance is ``moving``: hold it, then deliver it to
    ``instance`` once the move is done (the flow is already recorded there)."""

    __slots__ = ("instance",)

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def __repr__(self) -> str:
        return f"Hold({self.instance!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hold) and other.instance == self.instance

    def __hash__(self) -> int:
        return hash(("Hold", self.instance))


def _member_tuple(m: Any) -> tuple[str, float, str]:
    if isinstance(m, str):
        name, weight, state = m, 1.0, RUNNING
    elif isinstance(m, tuple | list):
        name, weight, state = (*m, 1.0, RUNNING)[:3] if len(m) == 1 else (*m, RUNNING)[:3]
    else:
        name, weight, state = m.instance, m.weight, m.state
    if state not in MEMBER_STATES:
        raise ValueError(f"member {name!r}: unknown state {state!r} (one of {', '.join(MEMBER_STATES)})")
    weight = float(weight)
    if not weight >= 0 or math.isinf(weight):
        raise ValueError(f"member {name!r}: weight must be a finite number >= 0, not {weight!r}")
    return str(name), weight, state


def _hashable(x: Any) -> Any:
    if isinstance(x, list | tuple):
        return tuple(_hashable(i) for i in x)
    return x


class Balancer:
    """Balances one NF group's packets over its members (see the module docstring).

    ``members``: :class:`~e2actors.switch.table.Member` objects (or ``(name, weight, state)``
    tuples). ``affinity``: ``none``, ``flow`` or ``host``. Times are in seconds.
    """

    __slots__ = (
        "pick",
        "affinity",
        "buckets",
        "flow_timeout",
        "fin_timeout",
        "drain_timeout",
        "max_flows",
        "tick_every",
        "version",
        "_members",
        "_eligible",
        "_owners",
        "_out",
        "_bucket_out",
        "_flows",
        "_hosts",
        "_closing",
        "_nflows",
        "_draining",
        "_drained",
        "_new_drained",
        "_next_tick",
        "_now",
        "counters",
        "_bpm",
    )

    def __init__(
        self,
        members: Iterable[Any] = (),
        affinity: str = "flow",
        buckets: int = 4096,
        flow_timeout: float = 60.0,
        fin_timeout: float = 2.0,
        drain_timeout: float | None = 300.0,
        max_flows: int = 1_000_000,
        tick_every: float | None = None,
    ) -> None:
        if affinity not in AFFINITIES:
            raise ValueError(f"unknown affinity {affinity!r} (one of {', '.join(AFFINITIES)})")
        if buckets < 1 or max_flows < 1 or flow_timeout <= 0 or fin_timeout <= 0:
            raise ValueError("buckets and max_flows must be >= 1, timeouts > 0")
        if drain_timeout is not None and drain_timeout < 0:
            raise ValueError("drain_timeout must be >= 0 (or None: wait for the last flow)")
        self.affinity = affinity
        self.buckets = buckets
        self.flow_timeout = float(flow_timeout)
        self.fin_timeout = float(fin_timeout)
        self.drain_timeout = drain_timeout
        self.max_flows = max_flows
        self.tick_every = float(tick_every) if tick_every else min(self.fin_timeout, self.flow_timeout) / 4
        self.version = 0
        self._members: dict[str, tuple[float, str]] = {}
        self._eligible: list[tuple[str, float]] | None = None
        self._owners: list[str | None] = [None] * buckets
        self._out: dict[str, str | Hold] = {}
        self._bucket_out: list[str | Hold | None] = [None] * buckets
        self._flows: OrderedDict[Any, list] = OrderedDict()
        self._hosts: dict[Any, list] = {}  # host -> [instance, live flows]
        self._closing: deque[tuple[Any, list, float]] = deque()
        self._nflows: dict[str, int] = {}
        self._draining: dict[str, float | None] = {}  # member -> drain deadline (None: none)
        self._drained: set[str] = set()
        self._new_drained: list[str] = []
        self._next_tick = -math.inf
        self._now = 0.0
        self._bpm: tuple[int, dict[str, int]] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "new_flows",  # flows started (recorded in the table)
                "kept_flows",  # flows whose bucket moved while they lived: kept on their instance
                "cut_over_flows",  # flows taken from their instance (drain deadline, member gone)
                "closed_flows",  # ended by FIN/RST (after the grace)
                "expired_flows",  # ended by the idle timeout
                "evicted_flows",  # pushed out by max_flows
                "no_instance",  # new flows refused: no member could take them
                "moved_buckets",  # bucket owner changes over all updates
                "updates",
            ),
            0,
        )
        self.pick = self._pick_none if affinity == "none" else self._pick_stateful
        self.update(members, 0.0)

    @classmethod
    def for_group(cls, spec: Any, **kw: Any) -> Balancer:
        """A balancer for a :class:`~e2actors.switch.table.GroupSpec`."""
        return cls(spec.members, spec.affinity, **kw)

    # --- the hot path ----------------------------------------------------------------------------
    def _pick_none(self, pkt: Any, now: float, key: tuple | None = None) -> str | Hold | None:
        """Affinity none: the flow's bucket owner, no table."""
        proto, a, pa, b, pb, vlans = pkt.flow_key if key is None else key
        h = crc32(b, crc32(a, (pa & 0xFFFF) << 16 | (pb & 0xFFFF)))
        if vlans:
            h = crc32(b"".join((v & 0xFFFF).to_bytes(2, "big") for v in vlans), h)
        h ^= proto & _M32
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & _M32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & _M32
        return self._bucket_out[(h ^ (h >> 16)) % self.buckets]

    def _pick_stateful(self, pkt: Any, now: float, key: tuple | None = None) -> str | Hold | None:
        """Affinity flow/host: the recorded instance of a live flow, else start the flow."""
        if now >= self._next_tick:
            self.tick(now)
        if key is None:
            key = pkt.flow_key
        flows = self._flows
        e = flows.get(key)
        if e is not None:
            e[1] = now
            flows.move_to_end(key)
            if pkt.tcp_flags & 7:
                self._tcp_flags(key, e, pkt, now)
            return self._out[e[0]]
        return self._new_flow(pkt, key, now)

    def _tcp_flags(self, key: Any, e: list, pkt: Any, now: float) -> None:
        f = pkt.tcp_flags
        st = e[2]
        if f & _RST:
            if not st & _CLOSED:
                e[2] = st | _CLOSED
                self._closing.append((key, e, now))
        elif f & _FIN:
            st |= _FIN1 if pkt.direction else _FIN0
            if st & 3 == 3 and not st & _CLOSED:
                st |= _CLOSED
                self._closing.append((key, e, now))
            e[2] = st
        elif f & _SYN and not f & _ACK and st & (_CLOSED | 3):
            e[2] = st & ~(_CLOSED | 3)  # a new connection on the same key: same instance

    def _new_flow(self, pkt: Any, key: Any, now: float) -> str | Hold | None:
        if self.affinity == "host":
            host = pkt.dst if pkt.tcp_flags & 0x12 == 0x12 else pkt.src
            if not host:
                host = key
            b = (host_hash(host) if host.__class__ is bytes else flow_hash(host)) % self.buckets
            he = self._hosts.get(host)
            if he is not None:
                inst = he[0]
                he[1] += 1
            else:
                inst = self._owners[b]
                if inst is None:
                    self.counters["no_instance"] += 1
                    return None
                self._hosts[host] = [inst, 1]
        else:
            host = None
            b = flow_hash(key) % self.buckets
            inst = self._owners[b]
            if inst is None:
                self.counters["no_instance"] += 1
                return None
        e = [inst, now, 0, b, host]
        flows = self._flows
        flows[key] = e
        self._nflows[inst] += 1
        self.counters["new_flows"] += 1
        if pkt.tcp_flags & 7:
            self._tcp_flags(key, e, pkt, now)
        if len(flows) > self.max_flows:
            k = next(iter(flows))
            self._end(k, flows[k], "evicted_flows")
        return self._out[inst]

    # --- housekeeping ----------------------------------------------------------------------------
    def tick(self, now: float) -> list[str]:
        """Expire idle flows, end closed flows after their grace, apply drain deadlines. Returns
        the members drained by this call (they are also kept for :meth:`take_drained`)."""
        self._now = now
        self._next_tick = now + self.tick_every
        flows = self._flows
        before = len(self._new_drained)
        # closed flows: removed once idle for fin_timeout
        cl = self._closing
        limit = now - self.fin_timeout
        while cl and cl[0][2] <= limit:
            key, e, _t = cl.popleft()
            if flows.get(key) is not e or not e[2] & _CLOSED:
                continue
            if e[1] <= limit:
                self._end(key, e, "closed_flows")
            else:
                cl.append((key, e, now))
        # idle flows
        limit = now - self.flow_timeout
        while flows:
            key = next(iter(flows))
            e = flows[key]
            if e[1] > limit:
                break
            self._end(key, e, "expired_flows")
        # drain deadlines
        if self._draining:
            for name, deadline in list(self._draining.items()):
                if deadline is not None and now >= deadline and name not in self._drained:
                    self._cut_over(name)
                    self._mark_drained(name)
        return self._new_drained[before:]

    def _end(self, key: Any, e: list, reason: str) -> None:
        del self._flows[key]
        inst = e[0]
        n = self._nflows[inst] - 1
        self._nflows[inst] = n
        host = e[4]
        if host is not None:
            he = self._hosts.get(host)
            if he is not None:
                he[1] -= 1
                if he[1] <= 0:
                    del self._hosts[host]
        self.counters[reason] += 1
        if n == 0 and inst in self._draining:
            self._mark_drained(inst)

    def _cut_over(self, name: str) -> int:
        """Drop every flow of ``name`` from the table (their next packets start over)."""
        doomed = [(k, e) for k, e in self._flows.items() if e[0] == name]
        for k, e in doomed:
            del self._flows[k]
            if e[4] is not None:
                self._hosts.pop(e[4], None)
        self._nflows[name] = 0
        self.counters["cut_over_flows"] += len(doomed)
        return len(doomed)

    def _mark_drained(self, name: str) -> None:
        if name not in self._drained:
            self._drained.add(name)
            self._new_drained.append(name)

    # --- table versions --------------------------------------------------------------------------
    def update(self, members: Iterable[Any], now: float | None = None) -> dict[str, int]:
        """Apply a new member list (a new table version). Returns ``{"moved_buckets": n,
        "kept_flows": n, "cut_over_flows": n}`` for this change. O(buckets x members) when the
        eligible set changes, plus one pass over the flow table."""
        if now is None:
            now = self._now
        new: dict[str, tuple[float, str]] = {}
        for m in members:
            name, weight, state = _member_tuple(m)
            if name in new:
                raise ValueError(f"member {name!r} listed twice")
            new[name] = (weight, state)
        cut0, kept0 = self.counters["cut_over_flows"], self.counters["kept_flows"]
        # Members that left (or failed/stopped): their flows start over elsewhere.
        for name in list(self._members):
            if name not in new or new[name][1] in _GONE or new[name][1] == STARTING:
                if self._nflows.get(name):  # (a member back to starting has lost its state)
                    self._cut_over(name)
        for name in list(self._nflows):
            if name not in new:
                del self._nflows[name]
        for name, (_w, state) in new.items():
            self._nflows.setdefault(name, 0)
            if state == DRAINING:
                if name not in self._draining:
                    self._draining[name] = None if self.drain_timeout is None else now + self.drain_timeout
                    if self._nflows[name] == 0:
                        self._mark_drained(name)
            elif name in self._draining:
                del self._draining[name]
                self._drained.discard(name)
        for name in list(self._draining):
            if name not in new:
                del self._draining[name]
                self._drained.discard(name)
        self._new_drained = [n for n in self._new_drained if n in self._draining]
        self._members = new
        self._out = {n: (Hold(n) if s == MOVING else n) for n, (_w, s) in new.items() if s not in _GONE}
        eligible = sorted((n, w) for n, (w, s) in new.items() if s in _ELIGIBLE and w > 0)
        moved = 0
        if eligible != self._eligible:
            owners = rendezvous_owners(eligible, self.buckets)
            old = self._owners
            moved = sum(1 for b in range(self.buckets) if owners[b] != old[b])
            self._owners = owners
            self._eligible = eligible
            if moved and self.affinity != "none":
                kept = 0
                for e in self._flows.values():
                    if not e[2] & _KEPT and owners[e[3]] != e[0]:
                        e[2] |= _KEPT
                        kept += 1
                self.counters["kept_flows"] += kept
        out = self._out
        self._bucket_out = [None if o is None else out[o] for o in self._owners]
        self.counters["moved_buckets"] += moved
        self.counters["updates"] += 1
        self.version += 1
        return {
            "moved_buckets": moved,
            "kept_flows": self.counters["kept_flows"] - kept0,
            "cut_over_flows": self.counters["cut_over_flows"] - cut0,
        }

    # --- draining --------------------------------------------------------------------------------
    def drained(self, name: str) -> bool:
        """True when ``name`` is draining and has no flows left (or its deadline cut them over)."""
        return name in self._drained

    def take_drained(self) -> list[str]:
        """The members drained since the last call (each reported once)."""
        out, self._new_drained = self._new_drained, []
        return out

    def draining(self) -> dict[str, int]:
        """Draining members and how many flows each still has."""
        return {n: self._nflows.get(n, 0) for n in self._draining}

    # --- inspection ------------------------------------------------------------------------------
    def bucket_of(self, pkt: Any = None, key: Any = None) -> int:
        """The bucket of a packet (or of a flow key, or of a host address for ``affinity: host``)."""
        if key is None:
            if self.affinity == "host":
                key = pkt.dst if pkt.tcp_flags & 0x12 == 0x12 else pkt.src
                key = key or pkt.flow_key
            else:
                key = pkt.flow_key
        h = host_hash(key) if key.__class__ is bytes else flow_hash(key)
        return h % self.buckets

    def owner(self, bucket: int) -> str | None:
        return self._owners[bucket]

    def owners(self) -> list[str | None]:
        """The bucket -> member table (a copy)."""
        return list(self._owners)

    def instance_of(self, key: Any) -> str | None:
        """The recorded instance of a live flow (None when the flow is not in the table)."""
        e = self._flows.get(key)
        return None if e is None else e[0]

    def flows_per_member(self) -> dict[str, int]:
        return {n: self._nflows.get(n, 0) for n in self._members}

    def buckets_per_member(self) -> dict[str, int]:
        # (asked for with every stats poll: counted once per table version)
        cached = self._bpm
        if cached is not None and cached[0] == self.version:
            return dict(cached[1])
        out = dict.fromkeys(self._members, 0)
        for o in self._owners:
            if o is not None:
                out[o] += 1
        self._bpm = (self.version, out)
        return dict(out)

    def members(self) -> dict[str, tuple[float, str]]:
        """``name -> (weight, state)`` of the current version."""
        return dict(self._members)

    def __len__(self) -> int:
        return len(self._flows)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "flows": len(self._flows),
            "hosts": len(self._hosts),
            "flows_per_member": self.flows_per_member(),
            "buckets_per_member": self.buckets_per_member(),
            "draining": self.draining(),
            "version": self.version,
        }

    # --- switch restart --------------------------------------------------------------------------
    def export(self) -> list[list]:
        """The flow table as ``[[key, instance, last_seen, closed, host], ...]``, least recently
        used first; msgpack-safe (tuples become lists; :meth:`load` turns them back)."""
        return [[k, e[0], e[1], bool(e[2] & _CLOSED), e[4]] for k, e in self._flows.items()]

    def load(self, entries: Iterable[Any], now: float | None = None) -> int:
        """Add flows from :meth:`export` (of this or another switch's balancer of the same
        group). Flows of instances that are not current members are skipped. Returns the number
        loaded."""
        if self.affinity == "none":
            return 0
        if now is None:
            now = self._now
        n = 0
        for key, inst, seen, closed, host in sorted(entries, key=lambda x: x[2]):
            key = _hashable(key)
            host = _hashable(host)
            if inst not in self._out or key in self._flows:
                continue
            if host is not None:
                he = self._hosts.get(host)
                if he is None:
                    self._hosts[host] = [inst, 1]
                elif he[0] != inst:
                    continue
                else:
                    he[1] += 1
                b = (host_hash(host) if host.__class__ is bytes else flow_hash(host)) % self.buckets
            else:
                b = flow_hash(key) % self.buckets
            e = [inst, float(seen), _CLOSED if closed else 0, b, host]
            self._flows[key] = e
            self._nflows[inst] += 1
            if closed:
                self._closing.append((key, e, now))
            n += 1
        return n
