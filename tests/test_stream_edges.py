"""Edge cases of deferred stream delivery: reused flow keys, late verdicts, gaps after drops, bounds."""
from __future__ import annotations

from e2actors.nf.pipelet import Verdict
from e2actors.nf.stream import CHUNK, GAP, StreamDriver, tell
from e2actors.switch.stream import StreamDelivery
from nfkit import C, S, tcp_pkt
from test_switch_stream import Snoop, conversation


def test_a_new_connection_on_the_same_addresses_waits_for_the_old_ones_packets() -> None:
    """Data awaits its verdict; the client resets and reconnects on the same 5-tuple. The new SYN
    must not leave before the old connection's data and RST (same flow key, arrival order)."""
    drv = StreamDriver(ports=("good", "bad"))
    syn = tcp_pkt(C, S, 40100, 80, "S", seq=1000, ts=1.0)
    synack = tcp_pkt(S, C, 80, 40100, "SA", seq=5000, ack=1001, ts=1.001)
    ack = tcp_pkt(C, S, 40100, 80, "A", seq=1001, ack=5001, ts=1.002)
    data = tcp_pkt(C, S, 40100, 80, "PA", b"hello", seq=1001, ack=5001, ts=1.003)
    rst = tcp_pkt(C, S, 40100, 80, "R", seq=1006, ts=1.004)
    syn2 = tcp_pkt(C, S, 40100, 80, "S", seq=90000, ts=1.005)
    for p in (syn, synack, ack, data, rst, syn2):
        drv.push(p)
    jobs = drv.take_jobs()
    released = [p for p, _ in drv.take_released()]
    for j in jobs:
        if j.kind in (CHUNK, GAP):
            drv.resolve(j, None)
    released += [p for p, _ in drv.take_released()]
    order = [p.tcp_seq for p in released]
    assert order == [p.tcp_seq for p in (syn, synack, ack, data, rst, syn2)], order


def test_an_ended_flow_is_forgotten_after_a_late_verdict() -> None:
    """A flow ends while its last chunk's verdict is still out (slow instance, > linger). After the
    verdict comes the flow's state must still be forgotten eventually."""
    d = StreamDelivery("snoop", ("good", "bad"), linger=1.0)
    pkts = conversation(40101, b"some request", b"resp", seg=6)
    for p in pkts:
        d.push("snoop#1", [p], 1.0)
    (w,) = d.take_work()
    d.sent(w)
    d.advance(3.0)  # linger passes while the answer is out
    judge = Snoop()
    assert d.answer("snoop#1", w.seq, tuple(tell(judge, *ev) for ev in w.events()))
    d.take_released()
    assert d.pending == 0
    for t in (10.0, 100.0, 1000.0):
        d.advance(t)
    key = pkts[0].flow_key
    assert key not in d.driver._flows and key not in d.flow_instance, \
        (len(d.driver._flows), len(d.flow_instance))


class GapBlocker(Snoop):
    """Blocks a flow once it shows a hole (a common IDS policy); bytes alone never change it."""

    def on_stream(self, flow, direction, data):
        super().on_stream(flow, direction, data)
        return None

    def on_gap(self, flow, direction, missing):
        return Verdict(drop=True, reason="hole in stream")


def test_a_gap_verdict_governs_the_flow_after_queue_full_drops() -> None:
    """A chunk dropped at the bound is told to the instance as a gap; the pipelet's sticky
    verdict on that gap must govern the flow's later bytes, as for any gap."""
    d = StreamDelivery("snoop", ("good", "bad"), window=1, max_backlog=1)
    pkts = conversation(40102, b"x" * 60, b"", seg=10)  # six data segments: pkts[3:9]
    judge = GapBlocker()
    for p in pkts[:4]:
        d.push("snoop#1", [p], 1.0)
    (w1,) = d.take_work()
    d.sent(w1)
    for p in pkts[4:7]:  # 3 segments while busy: 1 gathers, 2 are dropped as queue full
        d.push("snoop#1", [p], 1.0)
    assert d.answer("snoop#1", w1.seq, tuple(tell(judge, *ev) for ev in w1.events()))
    (w2,) = d.take_work()
    d.sent(w2)
    assert d.answer("snoop#1", w2.seq, tuple(tell(judge, *ev) for ev in w2.events()))
    d.take_released()
    d.push("snoop#1", [pkts[7]], 1.0)  # the fourth segment, after the told gaps
    (w3,) = d.take_work()
    d.sent(w3)
    assert d.answer("snoop#1", w3.seq, tuple(tell(judge, *ev) for ev in w3.events()))
    out, nf_drops, ours = d.take_released()
    assert [j.kind for j in w2.jobs].count(GAP) == 2  # the pipelet was told of the hole ...
    # ... and blocked the flow, yet the bytes after the hole leave on "good"
    assert pkts[7].data not in {p.data for p in out.get("good", [])}, (out, nf_drops)


def test_packets_in_the_switch_are_bounded_while_an_instance_is_busy() -> None:
    """What gathers for a busy instance is bounded: max_backlog packets of chunks not sent, and
    max_pending packets in all (beyond it packets are refused before reassembly)."""
    d = StreamDelivery("snoop", ("good", "bad"), window=1, max_backlog=8, max_pending=100)
    n = 2000
    pkts = conversation(40103, b"y" * (10 * n), b"", seg=10)
    for p in pkts[:4]:
        d.push("snoop#1", [p], 1.0)
    (w1,) = d.take_work()
    d.sent(w1)  # the instance is slow: no answer during the test
    refused = 0
    for p in pkts[4:4 + n - 1]:
        refused += len(d.push("snoop#1", [p], 1.0))
        d.take_work()
        d.take_released()
    todo = len(d._todo.get("snoop#1", []))
    assert d.pending <= 100 and todo <= 100 and d.queued <= 8, (d.pending, todo, d.queued)
    assert refused == n - 1 - (100 - 1)  # every packet beyond the bound was refused, counted
    assert d.counters["queue full"] >= refused
