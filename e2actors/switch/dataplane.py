"""The switch's dataplane core: batches in, decisions out. Pure code (no asyncio, no sockets).

The :class:`~e2actors.switch.switch.Switch` actor is a thin shell around one :class:`Dataplane`:
it feeds it what arrives (a batch from a port, an instance's output, a batch from another
switch, stream verdicts, credits, the clock) and carries out what :meth:`Dataplane.take`
returns — messages to send, batches for local ports, batches for inline NFs. Everything in
between happens here, synchronously:

* **classify** a batch against the routes of its source (an external port, or an NF's output
  port), split once by route; ``domain`` conditions hold a flow until its host is known;
* **balance** the packets of an NF group over its instances (affinity, migration avoidance,
  packets held for a moving instance) and split the batch once by instance;
* **deliver**: to a local instance through its queue, to another server's switch, to a local
  external port, to an inline NF, or into the group's bytestream reassembly;
* **account**: every packet leaves or is dropped with a reason, and its ingress credit goes back
  (:mod:`e2actors.switch.credits`).

Coalescing: nothing is sent while the shell feeds the core; what is bound for one destination
gathers (from every message the shell handed over in that turn) and goes as one batch in
:meth:`Dataplane.take`. Instance queues are windowed: at most ``window`` batches are out at an
instance; what comes meanwhile waits here and goes as one bigger batch when an answer comes, so
a busy instance gets big batches (the busier, the bigger) and its mailbox never overflows. Those
queues are bounded (``max_queue`` packets; beyond it: ``queue full``, counted, and the autoscaler
hears of it), and a queue whose instance has not answered for ``stall_timeout`` seconds is
dropped (``instance X stalled``) so a stuck instance cannot hold the ingress credits forever.

Batch sizes are counted per hop (``hops``): what the ports read, what each instance gets and
returns, what goes to other switches and to ports; the run summary prints their means.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Hashable
from typing import Any

from e2actors.nf.messages import NFBatch, StreamWork
from e2actors.nf.runner import REPLAY_IDLE, PipeletRunner
from e2actors.nf.stream import CHUNK, GAP
from e2actors.packet.batch import MAX_BATCH, Batch
from e2actors.packet.packet import Packet
from e2actors.runtime.ref import ActorRef
from e2actors.switch.balancer import Balancer, Hold
from e2actors.switch.classifier import PENDING, Classifier
from e2actors.switch.credits import DEFAULT_WINDOW, INPUT_KINDS, LIVE_WINDOW, Credits
from e2actors.switch.hosts import UNKNOWN, HostTracker
from e2actors.switch.messages import Credit, Drained, RemoteBatch
from e2actors.switch.stream import StreamDelivery, Work
from e2actors.switch.table import GroupSpec, Member, Route, SwitchTable

__all__ = ["Dataplane", "Group", "HOP_BUCKETS", "Send"]

#: Upper bounds of the batch size histogram buckets (packets); the last bucket is +Inf.
HOP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# (ref, message, context): the shell sends ``message`` to ``ref`` and, when ``context`` is not
# None or the send failed, calls Dataplane.settle(message, context, ok).
Send = tuple[ActorRef, Any, Any]


class Group:
    """One NF group as this switch sees it: its balancer, members, and (inline) runner or
    (bytestream by instance actors) stream delivery."""

    __slots__ = ("spec", "balancer", "members", "runner", "sent", "only", "no_instance", "stream", "local")

    def __init__(self, spec: GroupSpec, balancer: Balancer | None, runner: PipeletRunner | None,
                 stream: StreamDelivery | None = None) -> None:
        self.spec = spec
        self.stream = stream
        self.balancer = balancer
        self.members: dict[str, Member] = {m.instance: m for m in spec.members}
        self.runner = runner
        self.sent: collections.Counter[str] = collections.Counter()
        # Stateless group with a single running instance (and nothing else in the table): every
        # packet goes there, so the balancer need not look at each one.
        self.only: str | None = None
        # The drop reason when no member can take a packet: every member failed, or none.
        failed = bool(spec.members) and all(m.state == "failed" for m in spec.members)
        self.no_instance = f"nf {spec.nf} failed" if failed else f"no instance of {spec.nf}"
        self.local: tuple[Member, ...] = ()
        if spec.affinity == "none" and len(spec.members) == 1 and spec.members[0].state == "running":
            self.only = spec.members[0].instance


class _Queue:
    """Packets for one local instance: what waits here, and the batches out at it."""

    __slots__ = ("backlog", "out", "last")

    def __init__(self) -> None:
        self.backlog: list[Packet] = []
        self.out: dict[int, list[Packet]] = {}  # seq -> the batch's packets (in this process)
        self.last = 0.0  # when it last answered (or was first sent to)


def local_members(spec: GroupSpec, server: str) -> tuple[Member, ...]:
    """The members a sharded switch balances over: its own server's, when the group keeps to
    shards (``spec.local``) and some of them take new flows; otherwise all (see
    :class:`~e2actors.switch.table.GroupSpec`)."""
    if not getattr(spec, "local", False):
        return spec.members
    mine = tuple(m for m in spec.members if m.server == server)
    if any(m.state in ("running", "moving") and m.weight > 0 for m in mine):
        # Members elsewhere stay known (as draining) so the flows they carry keep going there.
        return mine + tuple(Member(m.instance, m.server, m.ref, m.weight, "draining")
                            if m.state in ("running", "moving") else m
                            for m in spec.members if m.server != server)
    return spec.members


class Dataplane:
    """One server's dataplane (see the module docstring). ``install`` a table first."""

    def __init__(self, server: str, *, trace_every: int = 0, hold_packets: int = 64,
                 hold_seconds: float = 0.5, live: bool = False, window: int = 2,
                 max_batch: int = MAX_BATCH, max_queue: int = 65536, stall_timeout: float = 5.0,
                 max_domain_held: int = 65536) -> None:
        self.server = server
        self.trace_every = trace_every
        self.hold_packets = hold_packets
        self.hold_seconds = hold_seconds
        self.live_traffic = live
        self.live = live
        self.window = window
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stall_timeout = stall_timeout
        self.max_domain_held = max_domain_held
        self.table: SwitchTable | None = None
        self.version = 0
        self.manager: ActorRef | None = None
        self.self_ref: ActorRef | None = None
        self.port_names: frozenset[str] = frozenset()
        self.groups: dict[str, Group] = {}
        self.instance_nf: dict[str, str] = {}
        self.routes: dict[str, list[Route]] = {}
        self.classifier: Classifier | None = None
        self.reverse_of: dict[str, str] = {}
        self.port_origin: dict[str, int] = {}
        self._local_origins: dict[str, int] = {}
        self.hosts = HostTracker()
        self.credits = Credits(server)
        self.drops: collections.Counter[str] = collections.Counter()
        self.route_hits: collections.Counter[str] = collections.Counter()
        self.remote_tx: collections.Counter[str] = collections.Counter()
        self.remote_rx = 0
        self.counters: collections.Counter[str] = collections.Counter()
        #: Packets dropped for lack of room, per instance (the autoscaler's overload signal).
        self.congestion: collections.Counter[str] = collections.Counter()
        #: hop -> [batches, packets, per-bucket counts (HOP_BUCKETS, then +Inf)]
        self.hops: dict[str, list] = {}
        # Flows waiting for their host (domain conditions): (source, flow key) -> [first time, packets]
        self._pending: dict[tuple[str, Hashable], list] = {}
        self._pending_n = 0
        self._later: collections.deque[tuple[str, list[Packet], str]] = collections.deque()
        # Packets waiting for an instance that is moving: instance -> packets
        self._held: dict[str, list[Packet]] = {}
        self._queues: dict[str, _Queue] = {}
        self._seq = 0
        self._trace_n = 0
        self.traces: collections.deque = collections.deque(maxlen=1000)
        # --- what the current turn decided (see take)
        self._to_ports: dict[str, list[Packet]] = {}
        self._to_remote: dict[tuple[str, str], list[Packet]] = {}
        self._inline: dict[str, list[Packet]] = {}
        self._dirty: dict[str, Group] = {}
        self._ready: set[str] = set()  # instances whose queue has packets
        self._sends: list[Send] = []
        #: Wall-clock times of the first packet a port read and of the last packet that left or
        #: was dropped here (a run's active time, across processes of one machine).
        self.t_first = 0.0
        self.t_last = 0.0
        self.drops_changed = False
        # The dataplane's clock (see _clock): "wall", or "packet" for a capture replayed as fast
        # as the deployment takes it (timeouts in the capture's time: results do not depend on
        # the machine's speed).
        self.clock = "wall"
        self.now = 0.0
        self.last_ts = 0.0
        self.wall = 0.0
        self.wall_last = 0.0
        #: Every local input port is done (a replay ended): packet time goes on with the wall.
        self.inputs_done = False
        self._stage_ts: dict[str, float] = {}

    # --- time -----------------------------------------------------------------------------------
    def _clock(self, wall: float, pkts: list[Packet] | None = None) -> float:
        """The dataplane's time at wall-clock ``wall``, with ``pkts`` just arrived. Packet clock:
        the latest packet time seen; when no packet came for REPLAY_IDLE seconds (at once when
        the local inputs are done) it moves on with the wall clock from there. Never backwards."""
        self.wall = wall
        if self.clock != "packet":
            self.now = wall
            return wall
        if pkts:
            ts = max([p.ts for p in pkts])
            if ts > self.last_ts:
                self.last_ts = ts
            self.wall_last = wall
        idle = wall - self.wall_last
        grace = 0.0 if self.inputs_done else REPLAY_IDLE
        if idle > grace and self.last_ts:
            t = self.last_ts + idle - grace
            if t > self.now:
                self.now = t
        elif self.last_ts > self.now:
            self.now = self.last_ts
        return self.now

    def _stage(self, key: str, pkts: list[Packet] | None) -> float:
        """The time at one stage of the chain (a source's classification, an NF group): with the
        packet clock, the latest packet time seen there (stages after a bytestream NF lag behind
        the ingress by what waits for its verdicts, and their timeouts must not count that lag),
        plus the clock's run past the last packet when the input went quiet."""
        if self.clock != "packet":
            return self.now
        cur = self._stage_ts.get(key, 0.0)
        if pkts:
            ts = max([p.ts for p in pkts])
            if ts > cur:
                cur = self._stage_ts[key] = ts
        return (cur or self.last_ts) + (self.now - self.last_ts)

    # --- tables ---------------------------------------------------------------------------------
    def install(self, table: SwitchTable, runners: dict[str, PipeletRunner], wall: float,
                stream_options: dict[str, dict[str, Any]] | None = None) -> None:
        """Swap in ``table`` (atomically for the traffic). ``runners``: the inline NFs' runners,
        built by the shell (they start asynchronously); ``stream_options``: reassembly options of
        bytestream NFs (from their pipelet class)."""
        if table.clock != self.clock:
            self.clock = table.clock
            self.now = 0.0  # (a new kind of time: the first table's, in practice)
        now = self._clock(wall)
        groups: dict[str, Group] = {}
        for gs in table.groups:
            old_g = self.groups.get(gs.nf)
            if gs.inline:
                groups[gs.nf] = Group(gs, None, runners[gs.nf])
                continue
            stream = None
            if gs.input == "bytestream":
                # The reassembly state outlives table changes (scaling, moves on this server).
                stream = old_g.stream if old_g is not None and old_g.stream is not None \
                    else StreamDelivery(gs.nf, gs.ports, **(stream_options or {}).get(gs.nf, {}))
            members = local_members(gs, self.server)
            if old_g is not None and old_g.balancer is not None:
                old_g.balancer.update(members, now)  # migration avoidance keeps live flows
                g = Group(gs, old_g.balancer, None, stream)
                g.sent = old_g.sent
            else:
                g = Group(gs, Balancer(members, gs.affinity), None, stream)
            g.local = members
            if members is not gs.members:
                g.only = None
            groups[gs.nf] = g
        for nf, old_g in self.groups.items():
            if old_g.stream is not None and (groups.get(nf) is None or groups[nf].stream is not old_g.stream):
                # A bytestream NF left the table: what waits in its reassembly is dropped, counted.
                st = old_g.stream
                for inst in st.instances():
                    st.fail(inst, f"nf {nf} removed")
                st.flush(now)
                for w in st.take_work():
                    st.lost(w, f"nf {nf} removed")
                out, nf_drops, ours = st.take_released()
                for lst in [*out.values(), *nf_drops.values(), *ours.values()]:
                    self.drop(lst, f"nf {nf} removed")
        old_table = self.table
        routes: dict[str, list[Route]] = {}
        for r in table.routes:
            routes.setdefault(r.source, []).append(r)
        self.classifier = Classifier(table.routes)
        self.routes = routes
        self.groups = groups
        self.instance_nf = {m.instance: gs.nf for gs in table.groups for m in gs.members}
        self.table = table
        self.version = table.version
        self.clock = table.clock
        self.port_names = frozenset(p.name for p in table.ports)
        self.live = self.live_traffic or any(p.kind == "afpacket" for p in table.ports)
        self.reverse_of = {spec.name: str(spec.params["reverse_of"]) for spec in table.ports
                           if spec.params.get("reverse_of")}
        # Input ports and their credit windows. A table that numbers none (one built by hand)
        # gets local numbers here (negative: never confused with the manager's), whose credits
        # only this switch can hand back.
        origins: dict[str, int] = {}
        windows: dict[int, int] = {}
        for spec in table.ports:
            if spec.kind not in INPUT_KINDS:
                continue
            o = spec.params.get("origin")
            if not o:
                o = self._local_origins.get(spec.name)
                if o is None:
                    o = self._local_origins[spec.name] = -(len(self._local_origins) + 1)
            origins[spec.name] = int(o)
            windows[int(o)] = int(spec.params.get("window") or
                                  (DEFAULT_WINDOW if spec.kind == "pcap-in" else LIVE_WINDOW))
        self.port_origin = origins
        self.credits.configure(dict(table.origins), windows)
        gone = set(old_table.switches) - set(table.switches) if old_table is not None else set()
        if gone:
            # A server left the deployment: it was lost, and the packets of our inputs that were
            # there will never finish. Their credits are written off now (provisionally: those
            # that were elsewhere come back and are taken back), so the inputs keep their window.
            for o in windows:
                n = self.credits.write_off(o)
                if n:
                    self.counters["credits written off (server lost)"] += n
        self._release_held()
        self._forget_gone()

    # --- input ----------------------------------------------------------------------------------
    def admit(self, port: str, pkts: list[Packet]) -> None:
        """A port read ``pkts``: they take its credit (called as they are read)."""
        o = self.port_origin.get(port)
        if not self.t_first and pkts:
            self.t_first = time.time()
        if o:
            for p in pkts:
                p.origin = o
            self.credits.admit(o, len(pkts))

    def ingress(self, port: str, pkts: list[Packet], wall: float) -> None:
        """A batch from a local external port."""
        now = self._clock(wall, pkts)
        self._hop("port_in", len(pkts))
        good = []
        bad = []
        for p in pkts:
            if p.reason is not None:
                bad.append(p)
            else:
                good.append(p)
        if bad:
            self.drop(bad, "malformed")
        if self.trace_every:
            for p in good:
                self._trace_n += 1
                if self._trace_n % self.trace_every == 0:
                    p.meta["_trace"] = [[time.time(), f"in {self.server}:{port}"]]
        if good:
            rev = self.reverse_of.get(port)
            if rev is not None:
                # The return direction of a bump in the wire: it takes the policy as if it had
                # entered at ``rev`` and leaves through ``rev`` where the policy says "out".
                for p in good:
                    p.meta["reverse"] = rev
                port = rev
            self.route(f"port:{port}", good, now)

    def from_instance(self, instance: str, seq: int, outputs: Any, dropped: int, lost: int,
                      finished: Any, wall: float) -> None:
        """An instance's ``NFOutput``: its answer to batch ``seq`` (or, ``seq < 0``, output of
        its own: timers, held packets released)."""
        now = self._clock(wall)
        q = self._queues.get(instance)
        if seq >= 0 and q is not None:
            q.out.pop(seq, None)
            q.last = wall
            if q.backlog:
                self._ready.add(instance)
        if finished:
            self.credits.finish_counts(finished)
        nf = self.instance_nf.get(instance)
        if lost:
            self.drops[f"nf error in {nf or instance}"] += lost
        if dropped:
            self.counters[f"dropped by {nf or instance}"] += dropped
        n = 0
        for _port, batch in outputs:
            n += len(batch.packets)
        self._hop("from_instance", n)
        if nf is None:
            if n:
                self.drop([p for _port, b in outputs for p in b.packets], f"output of unknown instance {instance}")
            return
        for port, batch in outputs:
            if batch.packets:
                self.route(f"nf:{nf}.{port}", batch.packets, now)

    def from_inline(self, nf: str, out: dict[str, list[Packet]], finished: Any, wall: float) -> None:
        """What an inline NF emitted (the shell ran it)."""
        now = self._clock(wall)
        if finished:
            self.credits.finish_counts(finished)
        for port, lst in out.items():
            if lst:
                self.route(f"nf:{nf}.{port}", lst, now)

    def inline_failed(self, nf: str, pkts: list[Packet], exc: BaseException, finished: Any) -> None:
        if finished:
            self.credits.finish_counts(finished)
        self.drops[f"nf error in {nf}: {type(exc).__name__}"] += len(pkts)

    def from_remote(self, target: str, pkts: list[Packet], wall: float) -> None:
        """A ``RemoteBatch`` from another server's switch."""
        now = self._clock(wall, pkts)
        self.remote_rx += len(pkts)
        self._hop("from_switch", len(pkts))
        kind, _, name = target.partition(":")
        if kind == "inst":
            nf = self.instance_nf.get(name)
            g = self.groups.get(nf) if nf else None
            if g is None:
                self.drop(pkts, f"unknown instance {name}")
                return
            m = g.members.get(name)
            if m is not None and m.state == "moving":
                for p in pkts:
                    self._hold(name, p)
                return
            self._to_instance(g, name, pkts, now)
        elif kind == "port":
            self._to_port(name, pkts)
        elif kind == "nf":
            self._to_group(name, pkts, now)
        else:
            self.drop(pkts, f"bad remote target {target}")

    def stream_answer(self, instance: str, seq: int, answers: tuple[Any, ...]) -> None:
        """An instance's ``StreamVerdicts`` (its field types checked by the codec)."""
        nf = self.instance_nf.get(instance)
        g = self.groups.get(nf) if nf else None
        if g is None or g.stream is None:
            return
        if g.stream.answer(instance, seq, answers):
            self._dirty[g.spec.nf] = g

    def credit(self, pairs: tuple[tuple[int, int], ...]) -> None:
        """Credits another switch hands back for our origins (a ``Credit``: types checked by the codec)."""
        self.credits.give_back(pairs)

    # --- classification -------------------------------------------------------------------------
    def route(self, source: str, pkts: list[Packet], now: float) -> None:
        """Classify ``pkts`` from ``source`` and deliver them, split once by route."""
        routes = self.routes.get(source)
        if not routes:
            self.drop(pkts, "no route")
            return
        cls = self.classifier
        assert cls is not None
        if cls.always(source):  # an unconditional first route: the whole batch takes it
            r = routes[0]
            cls.classify_many(source, pkts)  # counts the hits
            self.route_hits[r.name] += len(pkts)
            self._deliver(r.target, pkts, r.name, now)
            return
        if cls.needs_domain(source):
            snow = self._stage(source, pkts)
            idxs = [self._classify_domain(source, pkt, snow) for pkt in pkts]
        else:
            idxs = cls.classify_many(source, pkts)
        by_route: dict[int, list[Packet]] = {}
        nomatch: list[Packet] = []
        for pkt, idx in zip(pkts, idxs):
            if idx is None:
                continue  # held until its flow's host is known
            if idx < 0:
                nomatch.append(pkt)
                continue
            lst = by_route.get(idx)
            if lst is None:
                by_route[idx] = [pkt]
            else:
                lst.append(pkt)
        if nomatch:
            self.drop(nomatch, "no route")
        # Flows whose host just became known go first: their held packets came before any later
        # packet of theirs in this batch.
        while self._later:
            t, lst, n = self._later.popleft()
            self._deliver(t, lst, n, now)
        for idx, lst in by_route.items():
            r = routes[idx]
            self.route_hits[r.name] += len(lst)
            self._deliver(r.target, lst, r.name, now)

    def _classify_domain(self, source: str, pkt: Packet, now: float) -> int | None:
        """Classify where a ``domain`` test may matter: hold the flow while its host is unknown."""
        cls = self.classifier
        assert cls is not None
        key = (source, pkt.flow_key)
        pend = self._pending.get(key)
        host = self.hosts.lookup(pkt, now)
        if pend is not None:
            self._park(pkt)
            pend[1].append(pkt)
            self._pending_n += 1
            # Replayed in packet time, the flow's own packets say when its hold is over: the stage's
            # clock runs ahead of a flow whose instance is behind the others.
            late = self.clock == "packet" and pkt.ts - pend[2] >= self.hold_seconds
            if host is UNKNOWN and not late and len(pend[1]) < self.hold_packets \
                    and self._pending_n < self.max_domain_held:
                return None
            if host is UNKNOWN:
                self.hosts.give_up(pkt, now)
                host = None
                self.counters["domain hold timeouts" if late else "domain hold bound hit"] += 1
            del self._pending[key]
            self._pending_n -= len(pend[1])
            self._release_pending(source, pend[1], host)
            return None
        if host is UNKNOWN:
            idx = cls.try_classify(source, pkt, None)
            if idx != PENDING:
                return idx
            if self.live and pkt.payload_len <= 0:
                # Live traffic: the host cannot be known before the handshake completes, so
                # payload-less packets go the host-less way (see docs/policies.md).
                return cls.classify(source, pkt, None)
            self._park(pkt)
            self._pending[key] = [now, [pkt], pkt.ts]
            self._pending_n += 1
            self.counters["flows held for host"] += 1
            return None
        return cls.classify(source, pkt, host)  # type: ignore[arg-type]

    def _park(self, pkt: Packet) -> None:
        """A packet held for its flow's host gives its credit back (see e2actors.switch.credits)."""
        if pkt.origin:
            self.credits.finish_counts(((pkt.origin, 1),))
            pkt.origin = 0

    def _release_pending(self, source: str, pkts: list[Packet], host: str | None) -> None:
        cls = self.classifier
        assert cls is not None
        routes = self.routes[source]
        decided: list[tuple[str, list[Packet], str]] = []
        for pkt in pkts:
            idx = cls.classify(source, pkt, host)
            if idx < 0:
                self.drop([pkt], "no route")
                continue
            r = routes[idx]
            self.route_hits[r.name] += 1
            if decided and decided[-1][0] == r.target:
                decided[-1][1].append(pkt)
            else:
                decided.append((r.target, [pkt], r.name))
        # Delivered by the caller (route or housekeeping) once it is done with its own batch.
        self._later.extend(decided)

    # --- delivery -------------------------------------------------------------------------------
    def _deliver(self, target: str, pkts: list[Packet], why: str, now: float) -> None:
        kind, _, name = target.partition(":")
        if self.trace_every:
            for p in pkts:
                tr = p.meta_if_any.get("_trace") if p.meta_if_any else None
                if tr is not None:
                    tr.append([time.time(), f"route {why} -> {target}"])
        if kind == "nf":
            self._to_group(name, pkts, now)
        elif kind == "port":
            self._to_port(name, pkts)
        elif target == "drop":
            self.drop(pkts, f"dropped by route {why}" if why else "dropped by policy")
        else:
            self.drop(pkts, f"bad target {target}")

    def _to_group(self, nf: str, pkts: list[Packet], now: float) -> None:
        g = self.groups.get(nf)
        if g is None:
            self.drop(pkts, f"unknown nf {nf}")
            return
        if g.runner is not None:
            lst = self._inline.get(nf)
            if lst is None:
                self._inline[nf] = pkts
            else:
                lst.extend(pkts)
            g.sent[nf] += len(pkts)
            return
        now = self._stage(nf, pkts)
        if g.only is not None:  # affinity none, one instance: no per-packet choice to make
            self._to_instance(g, g.only, pkts, now)
            return
        bal = g.balancer
        assert bal is not None
        per: dict[str, list[Packet]] = {}
        refused: list[Packet] = []
        pick = bal.pick
        for pkt in pkts:
            inst = pick(pkt, now)
            if inst is None:
                refused.append(pkt)
                continue
            if type(inst) is Hold:
                self._hold(inst.instance, pkt)
                continue
            lst = per.get(inst)
            if lst is None:
                per[inst] = [pkt]
            else:
                lst.append(pkt)
        if refused:
            self.drop(refused, g.no_instance)
        for inst, lst in per.items():
            self._to_instance(g, inst, lst, now)

    def _to_instance(self, g: Group, inst: str, pkts: list[Packet], now: float) -> None:
        m = g.members.get(inst)
        if m is None:
            self.drop(pkts, f"unknown instance {inst}")
            return
        if self.trace_every:
            for p in pkts:
                tr = p.meta_if_any.get("_trace") if p.meta_if_any else None
                if tr is not None:
                    tr.append([time.time(), f"nf {inst} on {m.server}"])
        if m.server != self.server:
            self._to_switch(m.server, f"inst:{inst}", pkts)
            return
        if m.ref is None:
            self.drop(pkts, f"instance {inst} has no actor")
            return
        if g.stream is not None:
            pkts = self._to_stream(g, inst, pkts, now)
            if not pkts:
                return
        g.sent[inst] += len(pkts)
        q = self._queues.get(inst)
        if q is None:
            q = self._queues[inst] = _Queue()
            q.last = self.wall
        room = self.max_queue - len(q.backlog)
        if room < len(pkts):
            over = pkts[max(room, 0):]
            pkts = pkts[:max(room, 0)]
            self.drop(over, "queue full")
            self.congestion[inst] += len(over)
        if pkts:
            if not q.backlog and not q.out:
                q.last = self.wall  # (an idle instance's clock starts with its first packet)
            q.backlog.extend(pkts)
            self._ready.add(inst)

    def _to_stream(self, g: Group, inst: str, pkts: list[Packet], now: float) -> list[Packet]:
        """Feed the TCP packets to the group's reassembly (they wait here for the instance's
        verdicts); return the others, which go to the instance as packets."""
        tcp = [p for p in pkts if p.proto == 6 and p.l4_offset >= 0]
        if not tcp:
            return pkts
        g.sent[inst] += len(tcp)
        refused = g.stream.push(inst, tcp, now)  # type: ignore[union-attr]
        if refused:
            self.drop(refused, "queue full")
            self.congestion[inst] += len(refused)
        self._dirty[g.spec.nf] = g
        return [p for p in pkts if not (p.proto == 6 and p.l4_offset >= 0)] if len(tcp) < len(pkts) else []

    def _to_port(self, name: str, pkts: list[Packet]) -> None:
        if any(p.meta_if_any and "reverse" in p.meta_if_any for p in pkts):
            by_port: dict[str, list[Packet]] = {}
            for p in pkts:
                dest = p.meta_if_any.get("reverse", name) if p.meta_if_any else name
                by_port.setdefault(dest, []).append(p)
            for dest, lst in by_port.items():
                self._out_port(dest, lst)
            return
        self._out_port(name, pkts)

    def _out_port(self, name: str, pkts: list[Packet]) -> None:
        if name in self.port_names:
            if self.trace_every:
                self._finish_traces(pkts, f"out {self.server}:{name}")
            lst = self._to_ports.get(name)
            if lst is None:
                self._to_ports[name] = pkts
            else:
                lst.extend(pkts)
            return
        server = self.table.port_servers.get(name) if self.table else None
        if server is None or server == self.server:
            self.drop(pkts, f"no port {name}")
            return
        if self.trace_every:
            self._finish_traces(pkts, f"out {self.server}:{name} via {server}")
        self._to_switch(server, f"port:{name}", pkts)

    def _to_switch(self, server: str, target: str, pkts: list[Packet]) -> None:
        key = (server, target)
        lst = self._to_remote.get(key)
        if lst is None:
            self._to_remote[key] = pkts
        else:
            lst.extend(pkts)

    def _hold(self, inst: str, pkt: Packet) -> None:
        lst = self._held.setdefault(inst, [])
        if len(lst) >= 100_000:
            self.drop([pkt], "hold overflow")
        else:
            lst.append(pkt)

    def drop(self, pkts: list[Packet], reason: str) -> None:
        """Drop ``pkts``, counted under ``reason`` (their credits go back)."""
        self.drops[reason] += len(pkts)
        self.drops_changed = True
        self.credits.finish(pkts)
        if self.trace_every:
            self._finish_traces(pkts, f"drop {reason}")

    def _finish_traces(self, pkts: list[Packet], last: str) -> None:
        for p in pkts:
            tr = p.meta_if_any.pop("_trace", None) if p.meta_if_any else None
            if tr is not None:
                tr.append([time.time(), last])
                self.traces.append({"flow": _flow_text(p), "meta": dict(p.meta_if_any or {}), "hops": tr})

    def _hop(self, hop: str, n: int) -> None:
        h = self.hops.get(hop)
        if h is None:
            h = self.hops[hop] = [0, 0, [0] * (len(HOP_BUCKETS) + 1)]
        h[0] += 1
        h[1] += n
        h[2][min((n - 1).bit_length(), len(HOP_BUCKETS)) if n > 0 else 0] += 1

    # --- the end of a turn ----------------------------------------------------------------------
    def take(self, wall: float) -> tuple[list[Send], dict[str, list[Packet]], dict[str, list[Packet]]]:
        """What this turn decided: ``(sends, port outputs, inline work)``. Sends are
        ``(ref, message, context)``; report each failed send, and each send with a context, to
        :meth:`settle`. Port outputs are counted finished here (the shell hands them to the
        ports). Inline work: ``nf -> packets`` to run; feed the result to :meth:`from_inline`
        and call ``take`` again."""
        now = self._clock(wall)
        if self._dirty:
            self._pump_streams(now)
        sends = self._sends
        self._sends = []
        if self._ready:
            self._fill(wall, sends)
        if self._to_remote:
            self._flush_remote(sends)
        ports = self._to_ports
        if ports or self.drops_changed:
            self.t_last = wall
            self.drops_changed = False
        if ports:
            self._to_ports = {}
            for lst in ports.values():
                self._hop("to_port", len(lst))
                self.credits.finish(lst)
        inline = self._inline
        if inline:
            self._inline = {}
            for lst in inline.values():
                self._hop("inline", len(lst))
        if self.credits.owed and self.table is not None:
            for server, pairs in self.credits.take_owed().items():
                ref = self.table.switches.get(server)
                if ref is not None:
                    sends.append((ref, Credit(pairs), None))
        return sends, ports, inline

    def _fill(self, wall: float, sends: list[Send]) -> None:
        """Cut the waiting packets of ready instances into batches, within their windows."""
        ready = self._ready
        self._ready = set()
        for inst in ready:
            q = self._queues.get(inst)
            if q is None or not q.backlog:
                continue
            nf = self.instance_nf.get(inst)
            g = self.groups.get(nf) if nf else None
            m = g.members.get(inst) if g is not None else None
            if m is None or m.ref is None or m.server != self.server:
                # Left the table (or moved away) while its packets waited: they cannot go.
                self.drop(q.backlog, f"instance {inst} gone")
                q.backlog = []
                continue
            if m.state == "moving":
                for p in q.backlog:
                    self._hold(inst, p)
                q.backlog = []
                continue
            while q.backlog and len(q.out) < self.window:
                pkts = q.backlog
                if len(pkts) <= self.max_batch:
                    q.backlog = []
                else:
                    pkts, q.backlog = pkts[:self.max_batch], pkts[self.max_batch:]
                self._seq += 1
                q.out[self._seq] = pkts
                if len(q.out) == 1:
                    q.last = wall
                self._hop("to_instance", len(pkts))
                sends.append((m.ref, NFBatch(Batch(pkts), self._seq), inst))

    def _flush_remote(self, sends: list[Send]) -> None:
        remote = self._to_remote
        self._to_remote = {}
        switches = self.table.switches if self.table is not None else {}
        for (server, target), pkts in remote.items():
            ref = switches.get(server)
            if ref is None:
                self.drop(pkts, f"no switch for server {server}")
                continue
            for i in range(0, len(pkts), self.max_batch):
                part = pkts[i:i + self.max_batch]
                self._hop("to_switch", len(part))
                self.remote_tx[server] += len(part)
                sends.append((ref, RemoteBatch(target, Batch(part)), server))

    def settle(self, msg: Any, ctx: Any, ok: bool, gone: bool = False) -> None:
        """The shell's report on a send from :meth:`take` (always for failures, and for sends
        with a context: stream work). ``gone``: the receiver no longer runs."""
        t = type(msg)
        if t is NFBatch:
            if not ok:
                q = self._queues.get(ctx)
                if q is not None:
                    q.out.pop(msg.seq, None)
                if gone:
                    self.drop(msg.batch.packets, f"lost with failed instance {ctx}")
                else:
                    self.drop(msg.batch.packets, "queue full")
                    self.congestion[ctx] += len(msg.batch.packets)
        elif t is StreamWork:
            w: Work = ctx
            nf = self.instance_nf.get(w.instance)
            g = self.groups.get(nf) if nf else None
            if g is None or g.stream is None:
                return
            if ok:
                if msg.seq >= 0:
                    g.stream.sent(w)
            else:
                g.stream.refused(w)  # retried by housekeeping, not in a loop here
                self._dirty[g.spec.nf] = g
        elif t is RemoteBatch:
            if not ok:
                self.remote_tx[ctx] -= len(msg.batch.packets)
                self.drop(msg.batch.packets, f"remote {ctx} unreachable")
        elif t is Credit:
            if not ok:
                self.counters["credits undeliverable"] += sum(n for _o, n in msg.credits)

    # --- bytestreams ------------------------------------------------------------------------------
    def _pump_streams(self, now: float) -> None:
        """Route what the verdicts released and queue the stream work; again while routing feeds
        another bytestream group."""
        for _ in range(100):
            if not self._dirty:
                return
            dirty = self._dirty
            self._dirty = {}
            for nf, g in dirty.items():
                st = g.stream
                if st is None:
                    continue
                out, nf_drops, ours = st.take_released()
                for reason, lst in ours.items():
                    self.drop(lst, reason)
                if nf_drops:
                    self.counters[f"dropped by {nf}"] += sum(len(x) for x in nf_drops.values())
                    for reason, lst in nf_drops.items():
                        self.credits.finish(lst)
                        if self.trace_every:
                            self._finish_traces(lst, f"drop by {nf}: {reason}")
                for port, lst in out.items():
                    self.route(f"nf:{nf}.{port}", lst, now)
                hold = {m.instance for m in g.members.values() if m.state == "moving"}
                for w in st.take_work(hold):  # (with the accounting of what just left)
                    self._send_work(g, w)

    def _send_work(self, g: Group, w: Work) -> None:
        st = g.stream
        assert st is not None
        m = g.members.get(w.instance)
        # (An instance that moved to another server still gets the work of the flows reassembled
        # here, and answers us: reply_to.)
        if m is None or m.ref is None or m.state in ("failed", "stopped"):
            why = f"lost with failed instance {w.instance}" if m is not None and m.state == "failed" \
                else f"instance {w.instance} gone"
            st.lost(w, why)
            self._dirty[g.spec.nf] = g
            return
        if m.server != self.server:
            # The instance moved away: its flows live on at its new server's switch, which tells
            # it of their openings and ends; here only the bytes still held go to it.
            for j in w.jobs:
                if j.kind != CHUNK and j.kind != GAP:
                    j.done = True
            w.jobs = [j for j in w.jobs if not j.done]
        ask = w.seq >= 0 and w.needs_answer
        msg = StreamWork(w.seq if ask else -1, w.events(), w.packets, w.nbytes, w.released, w.drops, self.self_ref)
        w.ref = m.ref
        if ask:
            self._hop("stream_work", sum(len(j.carriers) for j in w.jobs if j.kind == CHUNK))
        self._sends.append((m.ref, msg, w))

    # --- tables and time --------------------------------------------------------------------------
    def _release_held(self) -> None:
        for inst in list(self._held):
            nf = self.instance_nf.get(inst)
            g = self.groups.get(nf) if nf else None
            m = g.members.get(inst) if g else None
            if g is None or m is None:
                self.drop(self._held.pop(inst), f"held for vanished instance {inst}")
            elif m.state != "moving":
                self._to_instance(g, inst, self._held.pop(inst), self.now)

    def _forget_gone(self) -> None:
        """Batches at instances that failed or left the table will not come back: count their
        packets as lost and stop waiting for them; what waited for them here is dropped."""
        for inst in list(self._queues):
            nf = self.instance_nf.get(inst)
            g = self.groups.get(nf) if nf else None
            m = g.members.get(inst) if g else None
            if m is not None and m.state not in ("failed", "stopped") and m.server == self.server:
                continue
            q = self._queues.pop(inst)
            for pkts in q.out.values():  # (what the pipelet held comes back in its last NFOutput)
                self.drop(pkts, f"lost with failed instance {inst}")
            if q.backlog:
                self.drop(q.backlog, f"lost with failed instance {inst}" if m is not None else f"instance {inst} gone")
        # Stream work at such instances: resolved here (its packets dropped, counted).
        for nf, g in self.groups.items():
            st = g.stream
            if st is None:
                continue
            for inst in st.instances():
                m = g.members.get(inst)
                if m is not None and m.state not in ("failed", "stopped"):
                    continue
                st.fail(inst, f"lost with failed instance {inst}" if m is not None else f"instance {inst} gone")
                self._dirty[nf] = g

    def housekeeping(self, wall: float, alive: Any = None) -> list[Send]:
        """Timeouts (domain holds, stream gaps, flows, drains, stalled instances). ``alive(ref)``
        tells whether a local actor still runs (for stream work at replaced actors). Returns the
        ``Drained`` notices for the manager; call :meth:`take` after."""
        now = self._clock(wall)
        notices: list[Send] = []
        # Holds that time out here: live, after hold_seconds; replayed, once the input ended (a
        # flow whose host never came), or far behind the stage's time (a bound on the wait).
        packet = self.clock == "packet"
        for key, (t0, pkts, _ts) in list(self._pending.items()):
            waited = self._stage(key[0], None) - t0
            if waited >= self.hold_seconds and (not packet or self.inputs_done) or \
                    waited >= max(10.0, 20 * self.hold_seconds):
                del self._pending[key]
                self._pending_n -= len(pkts)
                self.hosts.give_up(pkts[0], now)
                self.counters["domain hold timeouts"] += 1
                self._release_pending(key[0], pkts, None)
        while self._later:
            t, lst, n = self._later.popleft()
            self._deliver(t, lst, n, now)
        self.hosts.expire(now)
        for inst, q in self._queues.items():
            if q.backlog and q.out and wall - q.last > self.stall_timeout:
                # The instance took batches and has not answered for a long time: what waits
                # for it goes, so the ingress' credits are not held by a stuck consumer.
                self.drop(q.backlog, f"instance {inst} stalled")
                self.congestion[inst] += len(q.backlog)
                q.backlog = []
            elif q.backlog:
                self._ready.add(inst)
        for nf, g in self.groups.items():
            if g.balancer is None:
                continue
            gnow = self._stage(nf, None)
            if g.stream is not None:
                g.stream.advance(gnow)  # gap and idle timeouts of the reassembled flows
                if alive is not None:
                    self._stale_stream_work(g, alive)
                if g.stream.has_work or g.stream.has_released:
                    self._dirty[nf] = g
            g.balancer.tick(gnow)
            for inst in g.balancer.take_drained():  # each drain is reported once
                if self.manager is not None:
                    notices.append((self.manager, Drained(nf, inst, self.server), None))
        return notices

    def _stale_stream_work(self, g: Group, alive: Any) -> None:
        """Works out at an actor that was replaced (a move, an upgrade) and stopped before it
        answered will never be answered: give them up, counted."""
        st = g.stream
        assert st is not None
        for inst in st.instances_awaiting():
            m = g.members.get(inst)
            cur = m.ref if m is not None else None
            n = st.stale(inst, lambda ref: ref == cur or alive(ref))
            if n:
                self._dirty[g.spec.nf] = g

    # --- introspection --------------------------------------------------------------------------
    def backlog(self) -> dict[str, int]:
        """Local instance -> packets waiting here for it (queued and out at it)."""
        return {i: len(q.backlog) + sum(len(b) for b in q.out.values()) for i, q in self._queues.items()
                if q.backlog or q.out}

    @property
    def outstanding(self) -> int:
        """Batches out at local instances, not answered yet (stream works included)."""
        return sum(len(q.out) for q in self._queues.values()) + sum(
            g.stream.awaiting for g in self.groups.values() if g.stream is not None)

    @property
    def queued(self) -> int:
        """Packets waiting here for local instances."""
        return sum(len(q.backlog) for q in self._queues.values())

    @property
    def idle(self) -> bool:
        """Nothing in flight, queued, held or waiting here."""
        return (not any(q.out or q.backlog for q in self._queues.values()) and not self._pending
                and not any(self._held.values()) and not self._to_ports and not self._to_remote
                and not self._inline and not self._sends
                and all(g.runner is None or g.runner.held == 0 for g in self.groups.values())
                and all(g.stream is None or (g.stream.pending == 0 and not g.stream.awaiting
                                             and not g.stream.has_work)
                        for g in self.groups.values()))

    def hop_stats(self) -> dict[str, dict[str, Any]]:
        return {h: {"batches": v[0], "packets": v[1], "buckets": list(v[2])} for h, v in self.hops.items()}

    def stats(self) -> dict[str, Any]:
        return {
            "server": self.server, "version": self.version, "idle": self.idle, "inflight": self.outstanding,
            "queued": self.queued,
            "drops": dict(self.drops), "routes": dict(self.route_hits), "counters": dict(self.counters),
            "groups": {nf: {"sent": dict(g.sent), "inline": g.runner is not None,
                            "balancer": g.balancer.stats() if g.balancer is not None else None,
                            "runner": g.runner.stats.as_dict() if g.runner is not None else None,
                            "stream": g.stream.stats() if g.stream is not None else None}
                       for nf, g in self.groups.items()},
            "remote_tx": dict(self.remote_tx), "remote_rx": self.remote_rx,
            "held": {k: len(v) for k, v in self._held.items() if v},
            "pending_domain_flows": len(self._pending), "hosts_learned": self.hosts.learned,
            "classifier": self.classifier.stats() if self.classifier is not None else None,
            "credits": self.credits.stats(), "congestion": dict(self.congestion),
            "hops": self.hop_stats(), "t_first": self.t_first, "t_last": self.t_last,
            "clock": {"kind": self.clock, "now": self.now, "last_packet": self.last_ts, "inputs_done": self.inputs_done},
        }


def _flow_text(p: Packet) -> str:
    if p.proto < 0:
        return "non-ip"
    return f"{p.proto} {p.src_str}:{p.sport} -> {p.dst_str}:{p.dport}"
