"""Bytestream delivery: the switch reassembles a bytestream NF's flows once and ships the stream.

Pure logic (no asyncio); the :class:`~e2actors.switch.switch.Switch` actor wraps it. One
:class:`StreamDelivery` per bytestream NF group on a server handles the flows of the group's local
instances: its :class:`~e2actors.nf.stream.StreamDriver` (in deferred mode) reassembles each flow
once, turns the stream into jobs (the flow opened; in-order chunks with the packets that carried
them; gaps; the end), and holds the packets until the instance that owns the flow (by affinity)
answered. The switch sends each instance its jobs as one ``StreamWork`` per round, applies the
answers (:meth:`StreamDelivery.answer`) and routes the packets on from the NF's output ports in
their original order per flow. Only verdicts come back; the packets never leave the switch.

Work is windowed: at most ``window`` works per instance are out at once; the jobs that come
meanwhile gather here and go together with the next one (the busier the instance, the bigger
its batches, and its mailbox never overflows with small works). Bounds, like a NIC ring's: at
most ``max_backlog`` packets of chunks gathered per instance (beyond it a chunk's packets drop as
``queue full`` and the chunk is told as a gap, in its place, whose verdict applies like any gap's),
and at most ``max_pending`` packets of the group in the switch in all (beyond it packets are
refused before reassembly; the sender retransmits them). The switch stops reading replayed input
while these fill up.

Nothing waits forever: a work refused by a full mailbox turns its chunks into gaps (packets
dropped as ``queue full``) and goes again; jobs of an instance that failed or left are resolved
here with a non-sticky drop (``lost with failed instance X``); works at an actor that was replaced
and stopped before answering are given up (``lost with replaced instance X``). While an instance
is ``moving`` (its state being exported) nothing is sent to it. An instance that moved to another
server still gets the bytes this switch held for its flows (it answers here, ``reply_to``), but
not their opens and ends: its flows live on at its new server.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Hashable, Iterable
from typing import Any

from e2actors.nf.pipelet import Verdict
from e2actors.nf.stream import CHUNK, GAP, StreamDriver, StreamJob
from e2actors.packet.packet import Packet

__all__ = ["StreamDelivery", "Work"]


class _Account:
    """What one instance's flows did since the last work sent to it."""

    __slots__ = ("packets", "nbytes", "released", "drops")

    def __init__(self) -> None:
        self.packets = 0
        self.nbytes = 0
        self.released: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()

    def __bool__(self) -> bool:
        return bool(self.packets or self.released or self.drops)


# Work numbers are unique in the process, so that a late answer to the work of a group that was
# removed (and added again) cannot be taken for an answer to new work.
_SEQ = itertools.count(1)


class Work:
    """One round of work for one instance: ``jobs`` to tell in order, with the accounting.
    ``ref``: where it was sent (set by the switch)."""

    __slots__ = ("instance", "seq", "jobs", "packets", "nbytes", "released", "drops", "ref")

    def __init__(self, instance: str, seq: int, jobs: list[StreamJob], acct: _Account) -> None:
        self.ref: Any = None
        self.instance = instance
        self.seq = seq
        self.jobs = jobs
        self.packets = acct.packets
        self.nbytes = acct.nbytes
        self.released = tuple(acct.released.items())
        self.drops = tuple(acct.drops.items())

    def events(self) -> tuple[tuple[Any, ...], ...]:
        return tuple([j.event() for j in self.jobs])

    @property
    def needs_answer(self) -> bool:
        return any(j.kind == CHUNK or j.kind == GAP for j in self.jobs)


class StreamDelivery:
    """The switch side of one bytestream NF group (see the module docstring). ``ports``: the NF's
    output ports; ``reassembler_options`` go to the reassembler."""

    def __init__(self, nf: str, ports: Iterable[str], window: int = 2, max_backlog: int = 4096,
                 max_pending: int = 32768, **reassembler_options: Any) -> None:
        self.nf = nf
        self.window = window
        self.max_backlog = max_backlog
        #: Bound on the packets in the switch for this group (held for bytes, awaiting verdicts):
        #: beyond it, packets are refused before reassembly (the sender retransmits them).
        self.max_pending = max_pending
        #: Packets (chunk carriers) gathered for each instance, not sent yet.
        self.backlog: dict[str, int] = {}
        self.driver = StreamDriver(ports=tuple(ports), **reassembler_options)
        #: flow key -> the instance its packets went to last (affinity keeps it one).
        self.flow_instance: dict[Hashable, str] = {}
        self._todo: dict[str, list[StreamJob]] = {}
        self._accounts: dict[str, _Account] = {}
        self._outstanding: dict[str, dict[int, Work]] = {}
        self._last_purge = 0.0
        self._switch_reasons: set[str] = set()  # drops of ours, not the NF's verdicts
        self.counters: collections.Counter[str] = collections.Counter()

    # --- in -------------------------------------------------------------------------------------
    def push(self, instance: str, pkts: list[Packet], now: float) -> list[Packet]:
        """TCP packets the balancer sent to ``instance`` (local to this switch), in arrival order.
        Returns those refused because the group's packets in the switch reached ``max_pending``
        (the caller drops them as ``queue full``)."""
        fi = self.flow_instance
        drv = self.driver
        refused: list[Packet] = []
        room = self.max_pending - drv.pending
        if room < len(pkts):
            room = max(room, 0)
            refused = pkts[room:]
            pkts = pkts[:room]
            self.counters["queue full"] += len(refused)
        acct = self._accounts.get(instance)
        if acct is None:
            acct = self._accounts[instance] = _Account()
        nbytes = 0
        push = drv.push
        for pkt in pkts:
            fi[pkt.flow_key] = instance  # (the balancer computed the key already: cached)
            nbytes += len(pkt.data)
            push(pkt, now)
        acct.packets += len(pkts)
        acct.nbytes += nbytes
        self._collect()
        return refused

    def advance(self, now: float) -> None:
        """Gap and idle timeouts up to ``now``; forget flows the driver forgot (once a second)."""
        self.driver.advance(now)
        self._collect()
        if now - self._last_purge >= 1.0:
            self._last_purge = now
            tracks = self.driver.tracks
            fi = self.flow_instance
            for k in [k for k in fi if not tracks(k)]:
                del fi[k]

    def flush(self, now: float) -> None:
        """End of input: end every flow (the packets leave once their verdicts are in)."""
        self.driver.flush(now)
        self._collect()

    def _collect(self) -> None:
        jobs = self.driver.take_jobs()
        if not jobs:
            return
        fi = self.flow_instance
        todo = self._todo
        backlog = self.backlog
        for job in jobs:
            inst = fi.get(job.flow)
            if inst is None:  # cannot happen: every job's flow came through push
                self.driver.resolve(job, None)
                continue
            if job.kind == CHUNK:
                n = backlog.get(inst, 0) + len(job.carriers)
                if n > self.max_backlog:
                    # Dropped; the instance hears of the bytes as a gap at this place in its stream.
                    self._drop_chunk(job, "queue full")
                else:
                    backlog[inst] = n
            lst = todo.get(inst)
            if lst is None:
                todo[inst] = [job]
            else:
                lst.append(job)

    # --- out ------------------------------------------------------------------------------------
    def take_work(self, hold: frozenset[str] | set[str] = frozenset()) -> list[Work]:
        """One :class:`Work` per instance with jobs or accounting to send; call :meth:`sent`,
        :meth:`refused` or :meth:`lost` for each. Instances in ``hold`` (moving: their state is
        being exported) and those with ``window`` works out get nothing now."""
        out: list[Work] = []
        todo = self._todo
        busy = {i for i, o in self._outstanding.items() if len(o) >= self.window} | set(hold)
        self._todo = {i: j for i, j in todo.items() if i in busy}  # they wait for an answer
        for inst, jobs in todo.items():
            if inst in busy:
                continue
            self.backlog.pop(inst, None)
            acct = self._accounts.pop(inst, None) or _Account()
            out.append(Work(inst, next(_SEQ), jobs, acct))
        for inst in [i for i, a in self._accounts.items() if a and i not in busy]:
            out.append(Work(inst, -1, [], self._accounts.pop(inst)))
        return out

    @property
    def queued(self) -> int:
        """Packets gathered for all instances, not sent yet."""
        return sum(self.backlog.values())

    def sent(self, work: Work) -> None:
        """The work reached the instance's mailbox: wait for its answer."""
        if work.seq >= 0 and work.needs_answer:
            out = self._outstanding.get(work.instance)
            if out is None:
                out = self._outstanding[work.instance] = {}
            out[work.seq] = work

    def refused(self, work: Work, reason: str = "queue full") -> None:
        """The instance's mailbox was full: its chunks' packets are dropped (not sticky) and it will
        hear of the missed bytes as a gap. Its openings and ends (they hold no packets), and its
        accounting, go with the next work."""
        for j in work.jobs:
            if j.kind == CHUNK:
                self._drop_chunk(j, reason)
        self._todo[work.instance] = [j for j in work.jobs if not j.done] + self._todo.get(work.instance, [])
        acct = self._accounts.get(work.instance)
        if acct is None:
            acct = self._accounts[work.instance] = _Account()
        acct.packets += work.packets
        acct.nbytes += work.nbytes
        acct.released.update(dict(work.released))
        acct.drops.update(dict(work.drops))

    def lost(self, work: Work, reason: str) -> None:
        """The work cannot go to its instance (gone, failed, elsewhere): resolve its jobs here."""
        self._give_up(work.instance, work.jobs, reason)

    def _drop_chunk(self, job: StreamJob, reason: str) -> None:
        """The chunk's packets are dropped (counted, not sticky); the job stays, as a gap."""
        self._switch_reasons.add(reason)
        self.counters[reason] += len(job.carriers)
        self.driver.as_gap(job, Verdict(drop=True, reason=reason, sticky=False))

    def _give_up(self, inst: str, jobs: list[StreamJob], reason: str) -> None:
        v = Verdict(drop=True, reason=reason, sticky=False)
        self._switch_reasons.add(reason)
        for j in jobs:
            if j.done:
                continue
            if j.kind == CHUNK:
                self.counters[reason] += len(j.carriers)
                self.driver.resolve(j, v)
            elif j.kind == GAP:
                self.driver.resolve(j, None)
            else:
                j.done = True

    def answer(self, instance: str, seq: int, answers: tuple[Any, ...]) -> bool:
        """The instance answered work ``seq``; False if nothing waited for it (a repeat)."""
        out = self._outstanding.get(instance)
        work = out.pop(seq, None) if out is not None else None
        if work is None:
            return False
        jobs = work.jobs
        drv = self.driver
        if len(answers) != len(jobs):  # (the codec checked the types; the count is ours to check)
            self.counters["malformed answers"] += 1
            answers = (None,) * len(jobs)
        for job, a in zip(jobs, answers):
            if not job.done:
                drv.resolve(job, a)
        return True

    def fail(self, instance: str, reason: str) -> int:
        """``instance`` failed or left: resolve whatever waits for it; returns how many jobs."""
        n = 0
        for work in (self._outstanding.pop(instance, {}) or {}).values():
            n += len(work.jobs)
            self._give_up(instance, work.jobs, reason)
        jobs = self._todo.pop(instance, None)
        self.backlog.pop(instance, None)
        if jobs:
            n += len(jobs)
            self._give_up(instance, jobs, reason)
        self._accounts.pop(instance, None)
        return n

    def take_released(self) -> tuple[dict[str, list[Packet]], dict[str, list[Packet]], dict[str, list[Packet]]]:
        """Decided since the last call, in order: ``port -> packets`` that leave the NF,
        ``reason -> packets`` its verdicts dropped, ``reason -> packets`` dropped here (the
        instance failed or refused them)."""
        out: dict[str, list[Packet]] = {}
        dropped: dict[str, list[Packet]] = {}
        ours: dict[str, list[Packet]] = {}
        sr = self._switch_reasons
        fi = self.flow_instance
        accts = self._accounts
        default = self.driver.ports[0]
        last_key: Any = None
        acct: _Account | None = None
        released: collections.Counter[str] | None = None
        for pkt, v in self.driver.take_released():
            k = pkt.flow_key
            if k is not last_key:  # packets leave in runs of one flow: look its instance up once
                last_key = k
                inst = fi.get(k)
                acct = accts.get(inst) if inst is not None else None
                if acct is None and inst is not None:
                    acct = accts[inst] = _Account()
                released = acct.released if acct is not None else None
            if v.drop:
                r = v.reason or "dropped by verdict"
                if r in sr and not v.sticky:
                    ours.setdefault(r, []).append(pkt)
                    continue
                dropped.setdefault(r, []).append(pkt)  # (rare: verdicts that drop)
                if acct is not None:
                    acct.drops[r] += 1
            else:
                port = v.port or default
                lst = out.get(port)
                if lst is None:
                    out[port] = [pkt]
                else:
                    lst.append(pkt)
                if released is not None:
                    released[port] += 1
        return out, dropped, ours

    # --- state ----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Packets in the switch for this group: held for bytes or waiting for a verdict."""
        return self.driver.pending

    @property
    def has_work(self) -> bool:
        return bool(self._todo) or any(self._accounts.values())

    @property
    def has_released(self) -> bool:
        """Packets were decided and wait for :meth:`take_released`."""
        return self.driver.has_released

    def instances(self) -> set[str]:
        """Instances with work out or waiting to go."""
        return {*self._outstanding, *self._todo}

    def instances_awaiting(self) -> list[str]:
        """Instances with works out (not answered yet)."""
        return [i for i, o in self._outstanding.items() if o]

    def stale(self, instance: str, alive: Any) -> int:
        """Give up on the works out at ``instance`` that were sent to an actor ``alive(ref)`` says
        is gone (a replaced actor stopped before answering); returns how many."""
        out = self._outstanding.get(instance)
        if not out:
            return 0
        gone = [seq for seq, w in out.items() if w.ref is not None and not alive(w.ref)]
        for seq in gone:
            self._give_up(instance, out.pop(seq).jobs, f"lost with replaced instance {instance}")
        return len(gone)

    @property
    def awaiting(self) -> int:
        """Works sent and not answered."""
        return sum(len(o) for o in self._outstanding.values())

    def stats(self) -> dict[str, Any]:
        return {**self.driver.stats, "flows": len(self.flow_instance), "awaiting_works": self.awaiting,
                "reassembler": dict(self.driver.reassembler.stats), **dict(self.counters)}
