"""Bytestream delivery in the switch: each flow reassembled once in the switch, stream chunks shipped
to the NF instance with the packets that carried them, verdicts applied there, original order kept.

The pure parts (the deferred StreamDriver, StreamDelivery) are tested without an event loop; then
the Switch actor with real NF instance actors."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SECRET, eventually
from e2actors import Node
from e2actors.nf.instance import NFInstance
from e2actors.nf.messages import GetStats, StreamVerdicts, StreamWork
from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.nf.stream import CHUNK, GAP, OPEN, SYNACK, StreamDriver, tell
from e2actors.packet.packet import Packet
from e2actors.runtime import codec
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import GetSwitchStats, SetTable
from e2actors.switch.stream import StreamDelivery
from e2actors.switch.switch import Switch
from e2actors.switch.table import GroupSpec, Member, Route, SwitchTable
from nfkit import C, S, tcp_pkt, udp_pkt
from test_switch import mem, settle

ALLOW = ("e2actors.", "test_switch_stream")


def conversation(cport: int, request: bytes, response: bytes, seg: int = 5, swap: bool = False,
                 t0: float = 1.0) -> list[Packet]:
    """A TCP connection whose request is cut into ``seg``-byte segments (the second and third
    swapped when ``swap``), then the response and FINs both ways."""
    ci, si = 1000, 5000
    t = iter(t0 + i * 0.001 for i in range(10_000))
    pkts = [tcp_pkt(C, S, cport, 80, "S", seq=ci, ts=next(t)),
            tcp_pkt(S, C, 80, cport, "SA", seq=si, ack=ci + 1, ts=next(t)),
            tcp_pkt(C, S, cport, 80, "A", seq=ci + 1, ack=si + 1, ts=next(t))]
    data = [tcp_pkt(C, S, cport, 80, "PA", request[i:i + seg], seq=ci + 1 + i, ack=si + 1, ts=next(t))
            for i in range(0, len(request), seg)]
    if swap and len(data) >= 3:
        data[1], data[2] = data[2], data[1]
    pkts += data
    cend = ci + 1 + len(request)
    pkts += [tcp_pkt(S, C, 80, cport, "PA", response, seq=si + 1, ack=cend, ts=next(t)),
             tcp_pkt(C, S, cport, 80, "FA", seq=cend, ack=si + 1 + len(response), ts=next(t)),
             tcp_pkt(S, C, 80, cport, "FA", seq=si + 1 + len(response), ack=cend + 1, ts=next(t)),
             tcp_pkt(C, S, cport, 80, "A", seq=cend + 1, ack=si + 2 + len(response), ts=next(t))]
    return pkts


class Snoop(Pipelet):
    """A bytestream NF that records every chunk with the packets that carried it; a stream that
    has shown ``EVIL`` goes to ``bad`` with ``meta.verdict = "unsafe"``."""

    ports = ("good", "bad")
    input = "bytestream"
    affinity = "flow"

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[Any, int, bytes, list[tuple[int, bytes]]]] = []
        self.opened: list[tuple[Any, int]] = []
        self.ended: list[Any] = []
        self.streams: dict[tuple[Any, int], bytes] = defaultdict(bytes)

    def set_client(self, flow: Any, direction: int) -> None:
        self.opened.append((flow, direction))

    def on_stream(self, flow: Any, direction: int, data: bytes) -> Verdict | str | None:
        self.chunks.append((flow, direction, data, [(c.tcp_seq, c.payload) for c in self.carriers]))
        self.streams[flow, direction] += data
        self.flows.set(flow, True, self.now)
        if b"EVIL" in self.streams[flow, direction]:
            return Verdict(port="bad", meta={"verdict": "unsafe"})
        return None

    def on_flow_end(self, flow: Any, state: Any) -> None:
        self.ended.append(flow)


class Chooser(Pipelet):
    """Answers from the data alone (so two copies answer alike): every answer form there is."""

    ports = ("out", "alt")
    input = "bytestream"

    def on_stream(self, flow: Any, direction: int, data: bytes) -> Any:
        h = sum(data) % 6
        return (None, "out", "alt", Verdict(port="alt", meta={"h": h}, sticky=False),
                Verdict(drop=True, reason="nope", sticky=False), Verdict(meta={"x": 1}))[h]

    def on_gap(self, flow: Any, direction: int, missing: int) -> Any:
        return "alt" if missing % 2 else None


def per_flow(released: list[tuple[Packet, Verdict]]) -> dict:
    out: dict = defaultdict(list)
    for p, v in released:
        out[p.flow_key].append((p.data, v.port, v.drop, v.reason, dict(p.meta)))
    return dict(out)


def scrambled(seed: int, n: int = 6) -> list[Packet]:
    """Several interleaved connections, some segments swapped, one lost for a gap."""
    r = random.Random(seed)
    flows = [conversation(42000 + i, bytes(r.randrange(256) for _ in range(r.randrange(5, 60))),
                          bytes(r.randrange(256) for _ in range(r.randrange(0, 30))), seg=r.randrange(2, 9),
                          swap=r.random() < 0.5) for i in range(n)]
    if r.random() < 0.5 and len(flows[0]) > 6:
        del flows[0][4]  # a lost segment: a hole that only the gap timeout ends
    out: list[Packet] = []
    while any(flows):
        f = r.choice([f for f in flows if f])
        out.append(f.pop(0))
    return out


# --- the deferred driver is the synchronous one, answered later -------------------------------------
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), lag=st.integers(0, 7))
def test_deferred_driver_releases_what_the_synchronous_one_does(seed: int, lag: int) -> None:
    pkts = scrambled(seed)
    sync = StreamDriver(Chooser(), gap_timeout=0.5)
    judge = Chooser()
    deferred = StreamDriver(ports=Chooser.ports, gap_timeout=0.5)
    waiting: list = []
    got_sync: list = []
    got_def: list = []
    for i, p in enumerate(pkts):
        q = Packet(p.data, p.ts)  # each driver gets its own packet objects (meta is per object)
        sync.push(p)
        deferred.push(q)
        waiting.extend(deferred.take_jobs())
        # answer the jobs older than ``lag`` packets, in order, as an instance would
        while waiting and (len(waiting) > lag or i == len(pkts) - 1):
            job = waiting.pop(0)
            a = tell(judge, job.kind, job.flow, job.direction, job.arg, job.carriers)
            deferred.resolve(job, a)
        got_sync += sync.take_released()
        got_def += deferred.take_released()
    for d in (sync, deferred):
        d.advance(pkts[-1].ts + 10)
        d.flush(pkts[-1].ts + 20)
    for job in deferred.take_jobs():
        deferred.resolve(job, tell(judge, job.kind, job.flow, job.direction, job.arg, job.carriers))
    got_sync += sync.take_released()
    got_def += deferred.take_released()
    assert per_flow(got_def) == per_flow(got_sync)
    assert len(got_def) == len(pkts) and deferred.pending == 0 and deferred.stats["awaiting"] == 0
    assert deferred.stats["chunks"] == sync.stats["chunks"] and deferred.stats["gaps"] == sync.stats["gaps"]


def test_deferred_packets_wait_for_their_verdict_and_keep_their_order() -> None:
    drv = StreamDriver(ports=("good", "bad"))
    pkts = conversation(40000, b"GET /EVIL HTTP/1.1\r\n", b"ok", seg=4, swap=True)
    for p in pkts[:5]:  # handshake, one data segment, the third one (out of order)
        drv.push(p)
    jobs = drv.take_jobs()
    assert [j.kind for j in jobs] == [OPEN, OPEN, CHUNK]  # the SYN, the SYN/ACK, the bytes
    assert jobs[0].direction == pkts[0].direction and jobs[0].arg is None
    assert jobs[1].direction == pkts[1].direction and jobs[1].arg == SYNACK
    jobs = [jobs[0], jobs[2]]
    assert [c.data for c in jobs[1].carriers] == [pkts[3].data]
    # The handshake left at once; the data segment waits for its verdict, the next for its bytes.
    assert [p.data for p, _ in drv.take_released()] == [p.data for p in pkts[:3]]
    assert drv.pending == 2 and drv.held == 1
    drv.push(pkts[5])  # the hole is filled: one chunk with both segments' bytes
    (chunk,) = drv.take_jobs()
    assert chunk.arg == b"/EVIL HT" and {c.data for c in chunk.carriers} == {pkts[4].data, pkts[5].data}
    assert drv.take_released() == []
    drv.resolve(chunk, Verdict(port="bad", meta={"verdict": "unsafe"}))
    assert drv.take_released() == []  # the first chunk's carrier is still undecided: order holds
    drv.resolve(jobs[1], None)
    out = drv.take_released()
    assert [p.data for p, _ in out] == [p.data for p in pkts[3:6]]
    assert [v.port for _, v in out] == ["good", "bad", "bad"]
    assert out[2][0].meta == {"verdict": "unsafe"}


# --- StreamDelivery: the switch side, per instance ------------------------------------------------
def test_delivery_ships_each_instance_its_flows_and_answers_in_any_order() -> None:
    d = StreamDelivery("snoop", ("good", "bad"))
    a = conversation(40001, b"hello EVIL world", b"resp", seg=6)
    b = conversation(40002, b"all fine here", b"resp", seg=6)
    for pa, pb in zip(a, b):
        d.push("snoop#1", [pa], 1.0)
        d.push("snoop#2", [pb], 1.0)
    works = {w.instance: w for w in d.take_work()}
    assert set(works) == {"snoop#1", "snoop#2"}
    for w in works.values():
        d.sent(w)
        assert {j.flow for j in w.jobs} == {(a if w.instance == "snoop#1" else b)[0].flow_key}
        assert w.packets > 0 and w.nbytes > 0
    pipelets = {"snoop#1": Snoop(), "snoop#2": Snoop()}
    # snoop#2 answers first, then snoop#1; each through the codec as between processes
    for inst in ("snoop#2", "snoop#1"):
        w = works[inst]
        msg = codec.decode(codec.encode(StreamWork(w.seq, w.events(), w.packets, w.nbytes)))
        answers = tuple(tell(pipelets[inst], *ev) for ev in msg.events)
        reply = codec.decode(codec.encode(StreamVerdicts(inst, msg.seq, answers)))
        assert d.answer(reply.instance, reply.seq, reply.answers)
        assert not d.answer(reply.instance, reply.seq, reply.answers)  # a repeat changes nothing
    assert pipelets["snoop#1"].streams[a[0].flow_key, a[3].direction] == b"hello EVIL world"
    out, nf_drops, ours = d.take_released()
    assert not nf_drops and not ours
    flow_a = [p.data for p in out.get("bad", []) + out.get("good", []) if p.flow_key == a[0].flow_key]
    assert sorted(flow_a) == sorted(p.data for p in a) and d.pending == 0
    # the order within each port's list follows arrival order per flow
    pos = {p.data: i for i, p in enumerate(a + b)}
    for lst in out.values():
        for f in (a[0].flow_key, b[0].flow_key):
            idx = [pos[p.data] for p in lst if p.flow_key == f]
            assert idx == sorted(idx)
    assert a[3].data in {p.data for p in out["good"]}  # "hello ": before EVIL
    assert {p.data for p in out["bad"]} >= {a[4].data, a[5].data}  # the chunk with EVIL and after
    assert not any(p.flow_key == b[0].flow_key for p in out.get("bad", []))
    # what left is accounted to each instance in its next work
    acct = {w.instance: w for w in d.take_work()}
    assert dict(acct["snoop#1"].released)["bad"] >= 2 and acct["snoop#1"].seq == -1
    assert sum(dict(acct["snoop#2"].released).values()) == len(b)


def test_refused_work_drops_its_packets_and_tells_the_gap_next_time() -> None:
    d = StreamDelivery("snoop", ("good", "bad"))
    pkts = conversation(40003, b"0123456789abcdefghij", b"", seg=10)
    for p in pkts[:4]:
        d.push("snoop#1", [p], 1.0)
    (w,) = d.take_work()
    d.refused(w)  # the instance's mailbox was full
    out, nf_drops, ours = d.take_released()
    assert [p.data for p in ours["queue full"]] == [pkts[3].data]
    assert sum(len(v) for v in out.values()) == 3  # the handshake went on
    d.push("snoop#1", [pkts[4]], 1.0)
    (w2,) = d.take_work()
    kinds = [(j.kind, j.arg) for j in w2.jobs]
    assert kinds[0] == (OPEN, None)  # the refused opening is told again
    assert (GAP, 10) in kinds and kinds.index((GAP, 10)) < [k for k, _ in kinds].index(CHUNK)
    assert w2.packets == 5  # the refused work's accounting came along


def test_failed_instance_resolves_what_waited_for_it() -> None:
    d = StreamDelivery("snoop", ("good", "bad"))
    pkts = conversation(40004, b"some request bytes", b"", seg=6)
    for p in pkts:
        d.push("snoop#1", [p], 1.0)
    (w,) = d.take_work()
    d.sent(w)
    assert d.pending > 0 and d.awaiting == 1
    d.fail("snoop#1", "lost with failed instance snoop#1")
    out, nf_drops, ours = d.take_released()
    lost = ours["lost with failed instance snoop#1"]
    assert {p.data for p in lost} == {p.data for p in pkts[3:6]}  # the data segments
    assert sum(len(v) for v in out.values()) + len(lost) == len(pkts)
    assert d.pending == 0 and d.awaiting == 0


# --- the Switch actor with NF instance actors -------------------------------------------------------
async def _hang(msg: Any) -> None:
    return None



def table(v: int, members: tuple[Member, ...]) -> SwitchTable:
    return SwitchTable(
        v, "s1", mem("in", "out", "log"),
        (GroupSpec("snoop", members, affinity="flow", input="bytestream", ports=("good", "bad")),),
        (Route("port:in", "", "nf:snoop", "in->snoop"),
         Route("nf:snoop.bad", "", "port:log", "snoop.bad->log"),
         Route("nf:snoop.good", "", "port:out", "snoop.good->out")))


async def one_instance(node: Node, replacement: bool = False) -> tuple[ActorRef, ActorRef, ActorRef | None]:
    """A switch on server s1 whose snoop group has one instance, ``snoop#0``; with
    ``replacement``, a second actor ready to carry on as that member. Returns (switch, instance,
    replacement)."""
    swref = ActorRef(node.address, "switch-s1")
    ref = node.spawn(NFInstance, "snoop#0", pipelet=Snoop, nf="snoop", output=swref)
    new = node.spawn(NFInstance, "snoop#0~2", pipelet=Snoop, nf="snoop", instance="snoop#0",
                     output=swref) if replacement else None
    sw = node.spawn(Switch, "switch-s1", server="s1")
    await node.ask(sw, SetTable(table(1, (Member("snoop#0", "s1", ref),))))
    return sw, ref, new


async def test_switch_reassembles_once_and_instances_get_chunks_with_their_carriers() -> None:
    async with Node("t", allow_spawn=ALLOW) as node:
        swref = ActorRef(node.address, "switch-s1")
        refs = [node.spawn(NFInstance, f"snoop#{i}", pipelet=Snoop, nf="snoop", output=swref) for i in range(2)]
        sw = node.spawn(Switch, "switch-s1", server="s1")
        await node.ask(sw, SetTable(table(1, tuple(Member(f"snoop#{i}", "s1", r) for i, r in enumerate(refs)))))
        convs = [conversation(43000 + i, b"GET /" + (b"EV" if i % 3 == 0 else b"ok") + b"IL?x=%d HTTP/1.1\r\n" % i,
                              b"HTTP/1.1 200 OK\r\n\r\nbody", seg=3 + i % 4, swap=i % 2 == 1) for i in range(12)]
        dns = udp_pkt(C, S, 5000, 53, b"\x00" * 20)
        mixed = [p for group in zip(*convs) for p in group]
        mixed += [p for c in convs for p in c[len(min(convs, key=len)):]] + [dns]
        node.cell(sw).actor.ports["in"].inject(mixed)
        st = await settle(node, sw)
        out = node.cell(sw).actor.ports["out"].received
        log = node.cell(sw).actor.ports["log"].received
        assert len(out) + len(log) == len(mixed)
        assert all(p.meta.get("verdict") == "unsafe" for p in log)
        evil = {c[0].flow_key for i, c in enumerate(convs) if i % 3 == 0}
        # every data packet from "EVIL" on (and everything of the flow after it) was logged
        for i, c in enumerate(convs):
            got = [p for p in log if p.flow_key == c[0].flow_key]
            assert bool(got) == (i % 3 == 0)
        # original order per flow, on each port
        pos = {p.data: k for k, p in enumerate(mixed)}
        for lst in (out, log):
            for c in convs:
                idx = [pos[p.data] for p in lst if p.flow_key == c[0].flow_key]
                assert idx == sorted(idx)
        # the reassembly happened in the switch, once: the instances' own drivers never ran
        snoops = [node.cell(r).actor.runner for r in refs]
        assert all(r._stream.stats["packets"] == 0 for r in snoops)
        sst = st["groups"]["snoop"]["stream"]
        assert sst["chunks"] >= 24 and sst["pending"] == 0 and sst["reassembler"]["segments"] > 0
        # each instance got whole streams with the packets that carried them, for its flows only
        seen_flows: dict = {}
        for r in snoops:
            p = r.pipelet
            for flow, direction, data, carriers in p.chunks:
                seen_flows.setdefault(flow, set()).add(p.name)
                # no overlaps in this traffic: the carriers' payloads in sequence order are the chunk
                assert data == b"".join(pl for _seq, pl in sorted(carriers))
            for (flow, direction), stream in p.streams.items():
                conv = next(c for c in convs if c[0].flow_key == flow)
                sent = [x for x in conv if x.direction == direction and x.payload_len > 0]
                sent.sort(key=lambda x: x.tcp_seq)
                assert stream == b"".join(x.payload for x in sent)
            assert sorted(p.ended) == sorted({f for f, *_ in p.chunks})  # on_flow_end for each flow
            assert {d for _f, d in p.opened} == {convs[0][0].direction}  # the client side
        assert all(len(v) == 1 for v in seen_flows.values())  # affinity: one instance per flow
        assert len(seen_flows) == 12 and evil <= set(seen_flows)
        # the instances' counters account for the packets the switch handled for them
        stats = [await node.ask(r, GetStats()) for r in refs]
        assert sum(s["packets_in"] for s in stats) == len(mixed)
        assert sum(s["per_port"].get("bad", 0) for s in stats) == len(log)
        assert sum(s["per_port"].get("good", 0) for s in stats) == len(out)


async def test_a_failed_instance_loses_only_what_it_had_and_the_switch_goes_idle() -> None:
    async with Node("t", allow_spawn=ALLOW) as node:
        sw, ref, _ = await one_instance(node)
        pkts = conversation(44000, b"a request that nobody will judge", b"", seg=8)
        node.cell(ref).actor.on_message = _hang  # type: ignore[method-assign]  # it takes work, never answers
        node.cell(sw).actor.ports["in"].inject(pkts)

        async def awaiting() -> bool:  # the instance took work it will never answer
            st = await node.ask(sw, GetSwitchStats())
            return st["groups"]["snoop"]["stream"]["awaiting_works"] > 0

        await eventually(awaiting)
        st = await node.ask(sw, GetSwitchStats())
        assert not st["idle"]  # the data waits for a verdict the instance never gives
        await node.ask(sw, SetTable(table(2, (Member("snoop#0", "s1", ref, state="failed"),))))
        st = await settle(node, sw)
        lost = st["drops"].get("lost with failed instance snoop#0", 0)
        out = node.cell(sw).actor.ports["out"].received
        assert lost > 0 and lost + len(out) == len(pkts)


async def test_stream_work_crosses_nodes_to_an_instance_that_moved_away() -> None:
    """Flows reassembled on server s1 whose instance moved to s2: what s1 still holds for them (bytes
    behind a hole) goes, when the gap times out, to the instance on s2 over the transport, and its
    answers come back to s1's switch (reply_to)."""
    async with Node("a", listen="mem://st-a", secret=SECRET, allow_spawn=ALLOW) as na, \
            Node("b", listen="mem://st-b", secret=SECRET, allow_spawn=ALLOW) as nb:
        swa = ActorRef(na.address, "switch-s1")
        local = na.spawn(NFInstance, "snoop#0", pipelet=Snoop, nf="snoop", output=swa)
        sw = na.spawn(Switch, "switch-s1", server="s1")
        await na.ask(sw, SetTable(table(1, (Member("snoop#0", "s1", local),))))
        pkts = conversation(45000, b"GET /x HTTP/1.1\r\nX: EVIL\r\n", b"", seg=6)
        lost = pkts[4]  # never arrives: the bytes after it wait for the gap timeout
        sent = pkts[:4] + pkts[5:9]
        na.cell(sw).actor.ports["in"].inject(sent)

        async def held() -> bool:
            st = await na.ask(sw, GetSwitchStats())
            return st["groups"]["snoop"]["stream"]["held"] == 3  # the data segments after the hole

        await eventually(held)
        remote = nb.spawn(NFInstance, "snoop#0~2", pipelet=Snoop, nf="snoop", instance="snoop#0",
                          output=ActorRef(nb.address, "switch-s2"))
        moved = table(2, (Member("snoop#0", "s2", remote),))
        await na.ask(sw, SetTable(moved))
        st = await settle(na, sw, timeout=5)  # the gap times out after 1 s
        got = na.cell(sw).actor.ports["log"].received + na.cell(sw).actor.ports["out"].received
        assert sorted(p.data for p in got) == sorted(p.data for p in sent)
        assert all(p.meta.get("verdict") == "unsafe" for p in na.cell(sw).actor.ports["log"].received)
        judged = nb.cell(remote).actor.runner.pipelet
        assert judged.chunks and b"EVIL" in b"".join(c[2] for c in judged.chunks)  # judged on s2
        assert st["drops"] == {} and st["groups"]["snoop"]["stream"]["gaps"] == 1
        assert lost.data not in {p.data for p in got}


def test_work_is_windowed_and_what_gathers_meanwhile_is_bounded() -> None:
    d = StreamDelivery("snoop", ("good", "bad"), window=1, max_backlog=3)
    pkts = conversation(40005, b"x" * 60, b"", seg=10)  # six data segments
    for p in pkts[:4]:
        d.push("snoop#1", [p], 1.0)
    (w1,) = d.take_work()
    d.sent(w1)
    for p in pkts[4:9]:  # five more segments while the first work is out
        d.push("snoop#1", [p], 1.0)
    assert d.take_work() == [] and d.queued == 3  # the instance is busy: they gather, up to 3
    judge = Snoop()
    assert d.answer("snoop#1", w1.seq, tuple(tell(judge, *ev) for ev in w1.events()))
    (w2,) = d.take_work()  # everything gathered goes at once, the dropped bytes told as gaps
    assert [(j.kind, len(j.arg) if j.kind == CHUNK else j.arg) for j in w2.jobs] == \
        [(CHUNK, 10), (CHUNK, 10), (CHUNK, 10), (GAP, 10), (GAP, 10)]
    assert d.queued == 0
    d.sent(w2)
    assert d.answer("snoop#1", w2.seq, tuple(tell(judge, *ev) for ev in w2.events()))
    out, _nf, ours = d.take_released()
    assert [p.data for p in ours["queue full"]] == [p.data for p in pkts[7:9]]  # beyond the bound
    assert judge.streams[pkts[4].flow_key, pkts[4].direction] == b"x" * 40  # what it was given


async def test_malformed_stream_work_is_counted_and_answered_never_raised() -> None:
    """Work from the wire that makes no sense (wrong shapes, unknown kinds, unhashable flows) gets
    None answers and error counts; the instance keeps working."""
    from e2actors.nf.runner import PipeletRunner

    r = PipeletRunner(Snoop())
    await r.start({})
    good = conversation(47000, b"hello", b"", seg=5)[3]
    events = ((CHUNK, good.flow_key, 0, b"hello", (good,)),  # fine
              (CHUNK, good.flow_key, 0),  # too short
              (9, good.flow_key, 0, None, ()),  # unknown kind
              (3, ["unhashable"], -1, "fin", ()),  # an END whose flow cannot be a key
              "not a tuple")
    answers = r.judge(events, packets=1, nbytes=len(good.data))
    assert answers == (None, None, None, None, None)
    assert r.stats.errors == 4 and len(r.stream_errors) == 4
    assert r.pipelet.streams[good.flow_key, 0] == b"hello"
    assert r.judge(((CHUNK, good.flow_key, 0, b"EVIL", (good,)),)) == (Verdict(port="bad", meta={"verdict": "unsafe"}),)


def test_malformed_answers_keep_the_flow_verdict_and_never_raise() -> None:
    """Answers from a bad peer: fields of the wrong types never decode (the codec checks them);
    what decodes but makes no sense (the wrong count, an unknown port, something that is not a
    verdict) is counted and each flow keeps its verdict."""
    import msgpack
    import pytest

    from e2actors.errors import CodecError
    from e2actors.runtime import codec

    def frame(fields: list) -> bytes:
        return msgpack.packb([0, "t", None, 207, fields])

    with pytest.raises(CodecError, match="answers"):  # not a sequence
        codec.decode_frame_body(frame(["snoop#1", 1, 42]))
    # Verdicts whose meta, port or reason are of the wrong type
    for verdict in ([208, None, False, 5, "", True], [208, ["x"], False, {}, "", True],
                    [208, "bad", False, {}, None, True]):
        body = msgpack.packb([0, "t", None, 207, ["snoop#1", 1, [msgpack.ExtType(codec.EXT_MESSAGE,
                                                                                msgpack.packb(verdict))]]])
        with pytest.raises(CodecError, match="Verdict"):
            codec.decode_frame_body(body)
    d = StreamDelivery("snoop", ("good", "bad"))
    pkts = conversation(47001, b"0123456789" * 3, b"", seg=10)
    for p in pkts:
        d.push("snoop#1", [p], 1.0)
    (w,) = d.take_work()
    d.sent(w)
    assert d.answer("snoop#1", w.seq, (None,))  # the wrong count: every job keeps the flow's verdict
    out, nf_drops, ours = d.take_released()
    assert sum(len(v) for v in out.values()) == len(pkts) and set(out) == {"good"}
    assert d.counters["malformed answers"] == 1
    pkts2 = conversation(47002, b"0123456789" * 3, b"", seg=10)
    for p in pkts2:
        d.push("snoop#1", [p], 1.0)
    (w2,) = d.take_work()
    d.sent(w2)
    bad = ["nope", {}, 7]  # an unknown port, then things that are no verdict
    answers = tuple(bad[i % len(bad)] if j.kind in (CHUNK, GAP) else None for i, j in enumerate(w2.jobs))
    assert d.answer("snoop#1", w2.seq, answers)
    out, nf_drops, ours = d.take_released()
    assert sum(len(v) for v in out.values()) == len(pkts2) and set(out) == {"good"} and not nf_drops
    assert d.driver.stats["errors"] == sum(1 for a in answers if a is not None)
