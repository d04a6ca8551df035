"""The NF group load balancer: stable hashing, weighted rendezvous buckets, affinity, migration
avoidance, draining, and the proof that no flow ever reaches two instances while a group scales."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.packet.build import ether, ipv4, tcp, udp
from e2actors.packet.packet import Packet
from e2actors.packet.traffic import generate
from e2actors.switch.balancer import Balancer, Hold, flow_hash, host_hash, rendezvous_owners
from e2actors.switch.table import GroupSpec, Member


def tp(src: str, dst: str, sport: int, dport: int, flags: str = "A", ts: float = 0.0) -> Packet:
    """A real TCP packet."""
    return Packet(ether(ipv4(src, dst, 6, tcp(src, dst, sport, dport, flags=flags))), ts)


def up(src: str, dst: str, sport: int, dport: int, ts: float = 0.0) -> Packet:
    return Packet(ether(ipv4(src, dst, 17, udp(src, dst, sport, dport, b"x"))), ts)


def members(*names: str, state: str = "running") -> list[Member]:
    return [Member(n, "s1", state=state) for n in names]


def flows_on_moved_buckets(bal: Balancer, old: list, new: list, n: int = 20000):
    """Client ports (of 10.0.0.1 -> 10.9.9.9:80) whose bucket moved between owner tables."""
    out = []
    for p in range(1024, 1024 + n):
        b = bal.bucket_of(key=tp("10.0.0.1", "10.9.9.9", p, 80).flow_key)
        if old[b] != new[b]:
            out.append(p)
    return out


# --- hashing -------------------------------------------------------------------------------------
def test_flow_hash_is_symmetric_and_pinned():
    a = tp("198.18.0.1", "198.19.0.5", 40000, 443, "S")
    b = tp("198.19.0.5", "198.18.0.1", 443, 40000, "SA")
    assert a.flow_key == b.flow_key
    assert flow_hash(a.flow_key) == flow_hash(b.flow_key)
    # Pinned values: every switch of a cluster, in every version, must compute these.
    assert flow_hash(a.flow_key) == 0x3819F12E
    assert flow_hash((17, b"\x0a\x00\x00\x01", 53, b"\x0a\x00\x00\x02", 5353, (10,))) == 0x5995F40E
    assert host_hash(b"\xc6\x12\x00\x01") == 0xCB313A58
    owners = rendezvous_owners([("a", 1.0), ("b", 1.0), ("c", 1.0)], 16)
    assert "".join(owners) == "aacbcacbcbccccac"


_CHILD = r"""
import json, sys
from e2actors.switch.balancer import Balancer, flow_hash, rendezvous_owners
from e2actors.packet.traffic import generate
pk = generate(200, seed=5)
eq = rendezvous_owners([("nf-0", 1), ("nf-1", 1), ("nf-2", 1)], 4096)
wt = rendezvous_owners([("nf-0", 1), ("nf-1", 2.5), ("nf-2", 0.7)], 4096)
bal = Balancer(["nf-0", "nf-1", "nf-2"], "flow")
picks = [bal.pick(p, p.ts) for p in pk]
host = Balancer(["nf-0", "nf-1", "nf-2"], "host")
hpicks = [host.pick(p, p.ts) for p in pk]
print(json.dumps({"hashes": [flow_hash(p.flow_key) for p in pk], "eq": eq, "wt": wt,
                  "picks": picks, "hpicks": hpicks, "hashseed": hash("x")}))
"""


def test_assignment_is_identical_across_processes():
    """Python's hash() is salted per process; the balancer must not depend on it."""
    runs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    assert runs[0]["hashseed"] != runs[1]["hashseed"]  # the salt really differed
    for k in ("hashes", "eq", "wt", "picks", "hpicks"):
        assert runs[0][k] == runs[1][k], k
    # ... and this process agrees too.
    pk = generate(200, seed=5)
    assert runs[0]["hashes"] == [flow_hash(p.flow_key) for p in pk]
    assert runs[0]["eq"] == rendezvous_owners([("nf-0", 1), ("nf-1", 1), ("nf-2", 1)], 4096)


# --- buckets -------------------------------------------------------------------------------------
def test_equal_weights_spread_evenly():
    bal = Balancer(members("a", "b", "c", "d"))
    per = bal.buckets_per_member()
    assert sum(per.values()) == 4096
    for n in per.values():
        assert abs(n - 1024) < 0.1 * 1024


def test_weights_are_proportional():
    bal = Balancer([Member("a", "s", weight=1), Member("b", "s", weight=2), Member("c", "s", weight=3)])
    per = bal.buckets_per_member()
    for name, w in (("a", 1), ("b", 2), ("c", 3)):
        assert abs(per[name] - 4096 * w / 6) < 0.1 * 4096 * w / 6, per
    # weight 0: no buckets
    bal.update([Member("a", "s", weight=0), Member("b", "s"), Member("c", "s")])
    assert bal.buckets_per_member()["a"] == 0


def test_adding_a_member_moves_about_one_nth_all_to_it():
    bal = Balancer(members("a", "b", "c"))
    old = bal.owners()
    r = bal.update(members("a", "b", "c", "d"))
    new = bal.owners()
    moved = [b for b in range(4096) if old[b] != new[b]]
    assert r["moved_buckets"] == len(moved)
    assert all(new[b] == "d" for b in moved)  # only to the new member
    assert abs(len(moved) - 1024) < 0.12 * 1024


def test_removing_a_member_moves_only_its_buckets():
    bal = Balancer(members("a", "b", "c", "d"))
    old = bal.owners()
    bal.update(members("a", "b", "d"))
    new = bal.owners()
    for b in range(4096):
        if old[b] != "c":
            assert new[b] == old[b]
        else:
            assert new[b] in ("a", "b", "d")


def test_weight_change_moves_buckets_only_to_that_member():
    bal = Balancer(members("a", "b", "c"))
    old = bal.owners()
    bal.update([Member("a", "s"), Member("b", "s", weight=2.0), Member("c", "s")])
    new = bal.owners()
    for b in range(4096):
        if old[b] != new[b]:
            assert new[b] == "b"
    assert bal.buckets_per_member()["b"] > 1700


def test_assignment_does_not_depend_on_history():
    bal = Balancer(members("a", "b"))
    bal.update(members("a", "b", "c", "d"))
    bal.update(members("b", "c", "d"))
    bal.update(members("b", "c", "d", "a"))
    assert bal.owners() == Balancer(members("d", "c", "b", "a")).owners()


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(st.text("abcdefgh0123456789-", min_size=1, max_size=6), min_size=1, max_size=6, unique=True),
    weights=st.lists(st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0]), min_size=7, max_size=7),
    new=st.text("ijklmn", min_size=1, max_size=4),
)
def test_rendezvous_moves_only_what_it_must(names, weights, new):
    ms = [(n, weights[i]) for i, n in enumerate(names)]
    before = rendezvous_owners(ms, 256)
    after = rendezvous_owners([*ms, (new, weights[-1])], 256)
    assert all(a == b or a == new for a, b in zip(after, before))  # only to the new member
    gone = names[0]
    shrunk = rendezvous_owners(ms[1:], 256)
    assert all(a == b for a, b in zip(shrunk, before) if b != gone)  # only the removed one's
    assert rendezvous_owners(list(reversed(ms)), 256) == before  # order does not matter


# --- migration avoidance -------------------------------------------------------------------------
def test_scale_out_keeps_existing_flows_and_sends_new_ones_to_the_new_member():
    bal = Balancer(members("a", "b"), "flow")
    old = bal.owners()
    new = Balancer(members("a", "b", "c")).owners()
    moved = flows_on_moved_buckets(bal, old, new, 3000)
    assert len(moved) > 500
    first = {}
    for p in moved[:400]:
        first[p] = bal.pick(tp("10.0.0.1", "10.9.9.9", p, 80, "S", 1.0), 1.0)
    r = bal.update(members("a", "b", "c"), 1.5)
    assert r["kept_flows"] == 400 and bal.counters["kept_flows"] == 400
    for p in moved[:400]:  # old flows, both directions: their old instance
        assert bal.pick(tp("10.0.0.1", "10.9.9.9", p, 80, "A", 2.0), 2.0) == first[p]
        assert bal.pick(tp("10.9.9.9", "10.0.0.1", 80, p, "A", 2.0), 2.0) == first[p]
    for p in moved[400:]:  # new flows on moved buckets: the new member
        assert bal.pick(tp("10.0.0.1", "10.9.9.9", p, 80, "S", 2.0), 2.0) == "c"
    assert bal.flows_per_member()["c"] == len(moved) - 400
    assert bal.counters["cut_over_flows"] == 0


def test_a_moved_bucket_is_plain_again_once_its_old_flows_end():
    bal = Balancer(members("a", "b"), "flow", fin_timeout=1.0)
    old = bal.owners()
    new = Balancer(members("a", "b", "c")).owners()
    p = flows_on_moved_buckets(bal, old, new, 500)[0]
    c, s = ("10.0.0.1", p), ("10.9.9.9", 80)
    was = bal.pick(tp(c[0], s[0], c[1], s[1], "S", 0.0), 0.0)
    bal.update(members("a", "b", "c"), 0.5)
    assert bal.pick(tp(c[0], s[0], c[1], s[1], "FA", 1.0), 1.0) == was
    assert bal.pick(tp(s[0], c[0], s[1], c[1], "FA", 1.1), 1.1) == was
    assert bal.pick(tp(c[0], s[0], c[1], s[1], "A", 1.2), 1.2) == was  # the last ACK: still there
    bal.tick(5.0)
    assert bal.instance_of(tp(c[0], s[0], c[1], s[1]).flow_key) is None
    assert bal.pick(tp(c[0], s[0], c[1], s[1], "S", 6.0), 6.0) == "c"  # a new flow, new owner


# --- flow ends -----------------------------------------------------------------------------------
def test_flow_ends_on_fin_both_ways_after_grace_and_syn_reopens():
    bal = Balancer(members("a", "b"), "flow", fin_timeout=2.0, flow_timeout=100)
    k = tp("10.0.0.1", "10.0.0.2", 1000, 80).flow_key
    bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "S", 0), 0)
    bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "FA", 1), 1)  # half-closed: a live flow
    bal.tick(50)
    assert len(bal) == 1
    bal.pick(tp("10.0.0.2", "10.0.0.1", 80, 1000, "FA", 50.5), 50.5)  # closed
    bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "A", 51.0), 51.0)  # last ACK extends the grace
    bal.tick(52.5)  # 1.5 s idle: kept (removed between 2 and 4 s after the last packet)
    assert len(bal) == 1
    bal.tick(55.1)
    assert len(bal) == 0 and bal.counters["closed_flows"] == 1
    # port reuse before the grace ends: the same instance, and the entry lives on
    inst = bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "S", 60), 60)
    bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "R", 61), 61)
    assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1000, 80, "S", 61.5), 61.5) == inst
    bal.tick(70)
    assert bal.instance_of(k) == inst  # reopened: not removed by the RST's grace


def test_flow_ends_on_rst_and_on_idle():
    bal = Balancer(members("a"), "flow", fin_timeout=1.0, flow_timeout=10.0)
    bal.pick(tp("10.0.0.1", "10.0.0.2", 1, 80, "S", 0), 0)
    bal.pick(tp("10.0.0.2", "10.0.0.1", 80, 1, "R", 0.1), 0.1)
    bal.pick(up("10.0.0.1", "10.0.0.3", 5, 53, 0.2), 0.2)
    bal.pick(up("10.0.0.3", "10.0.0.1", 53, 5, 5.0), 5.0)
    bal.tick(1.2)
    assert len(bal) == 1 and bal.counters["closed_flows"] == 1
    bal.tick(14.9)
    assert len(bal) == 1
    bal.tick(15.1)
    assert len(bal) == 0 and bal.counters["expired_flows"] == 1
    assert bal.flows_per_member() == {"a": 0}


def test_pick_runs_housekeeping_itself():
    bal = Balancer(members("a"), "flow", flow_timeout=1.0)
    for i in range(100):
        bal.pick(up("10.0.0.1", "10.0.0.2", 1000 + i, 53, i * 0.01), i * 0.01)
    bal.pick(up("10.0.0.9", "10.0.0.2", 1, 53, 10.0), 10.0)
    assert len(bal) == 1 and bal.counters["expired_flows"] == 100


def test_max_flows_evicts_least_recently_used():
    bal = Balancer(members("a"), "flow", max_flows=10)
    for i in range(15):
        bal.pick(up("10.0.0.1", "10.0.0.2", 1000 + i, 53, 0.0), 0.0)
    assert len(bal) == 10 and bal.counters["evicted_flows"] == 5
    assert bal.instance_of(up("10.0.0.1", "10.0.0.2", 1000, 53).flow_key) is None
    assert bal.flows_per_member() == {"a": 10}


# --- member states -------------------------------------------------------------------------------
def test_starting_members_get_nothing_and_none_when_nobody_can_take_a_flow():
    bal = Balancer(members("a", "b", state="starting"), "flow")
    assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1, 80, "S", 0), 0) is None
    assert bal.counters["no_instance"] == 1 and len(bal) == 0
    bal.update([Member("a", "s"), Member("b", "s", state="starting")])
    for i in range(200):
        assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 1), 1) == "a"


def test_drain_keeps_old_flows_refuses_new_ones_and_reports_once():
    bal = Balancer(members("a", "b"), "flow", fin_timeout=1.0, drain_timeout=None)
    on_b = []
    for i in range(300):
        if bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 0), 0) == "b":
            on_b.append(1000 + i)
    bal.update([Member("a", "s"), Member("b", "s", state="draining")], 1.0)
    assert bal.draining() == {"b": len(on_b)} and not bal.drained("b")
    for i in range(300, 600):  # new flows: never b
        assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 1), 1) == "a"
    for p in on_b:  # old flows: still b
        assert bal.pick(tp("10.0.0.2", "10.0.0.1", 80, p, "A", 2), 2) == "b"
    for p in on_b:
        bal.pick(tp("10.0.0.1", "10.0.0.2", p, 80, "R", 3), 3)
    assert bal.take_drained() == []  # the grace is not over
    bal.tick(10)
    assert bal.drained("b") and bal.take_drained() == ["b"] and bal.take_drained() == []
    bal.update(members("a"), 11)
    assert bal.members() == {"a": (1.0, "running")} and bal.counters["cut_over_flows"] == 0


def test_drain_deadline_cuts_flows_over():
    bal = Balancer(members("a", "b"), "flow", drain_timeout=5.0)
    keys = [tp("10.0.0.1", "10.0.0.2", 1000 + i, 80).flow_key for i in range(100)]
    for i in range(100):
        bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 0), 0)
    nb = bal.flows_per_member()["b"]
    bal.update([Member("a", "s"), Member("b", "s", state="draining")], 1.0)
    assert bal.tick(5.9) == []
    assert bal.tick(6.0) == ["b"] and bal.drained("b")
    assert bal.counters["cut_over_flows"] == nb and bal.flows_per_member()["b"] == 0
    assert all(bal.pick(tp("10.0.0.2", "10.0.0.1", 80, 1000 + i, "A", 7), 7, keys[i]) == "a" for i in range(100))


def test_a_member_with_no_flows_is_drained_at_once_and_undraining_works():
    bal = Balancer(members("a", "b"), "flow")
    bal.update([Member("a", "s"), Member("b", "s", state="draining")], 1.0)
    assert bal.take_drained() == ["b"]
    bal.update(members("a", "b"), 2.0)  # back to running (scale-in cancelled)
    assert not bal.drained("b") and bal.draining() == {}
    assert bal.buckets_per_member()["b"] > 1500


def test_moving_member_packets_are_held():
    bal = Balancer(members("a", "b"), "flow")
    got = {}
    for i in range(100):
        got[i] = bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 0), 0)
    bal.update([Member("a", "s"), Member("b", "s2", state="moving")], 1.0)
    for i in range(200):
        r = bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "A", 1), 1)
        if i < 100:
            assert r == (Hold("b") if got[i] == "b" else "a")
        else:
            assert r in ("a", Hold("b"))  # b keeps its buckets while moving
    bal.update(members("a", "b"), 2.0)
    for i in range(100):
        assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "A", 2), 2) == got[i]
    assert bal.counters["cut_over_flows"] == 0


def test_removed_or_failed_member_flows_cut_over():
    bal = Balancer(members("a", "b", "c"), "flow")
    for i in range(300):
        bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "S", 0), 0)
    per = bal.flows_per_member()
    r = bal.update([Member("a", "s"), Member("b", "s", state="failed")], 1)
    assert r["cut_over_flows"] == per["b"] + per["c"]
    for i in range(300):
        assert bal.pick(tp("10.0.0.1", "10.0.0.2", 1000 + i, 80, "A", 2), 2) == "a"
    r = bal.update([Member("a", "s", state="starting"), Member("b", "s")], 3)  # a restarted: state lost
    assert bal.flows_per_member() == {"a": 0, "b": 0} and r["cut_over_flows"] == 300


def test_bad_arguments():
    with pytest.raises(ValueError):
        Balancer(members("a"), "sticky")
    with pytest.raises(ValueError):
        Balancer([Member("a", "s", state="sleeping")])
    with pytest.raises(ValueError):
        Balancer([Member("a", "s", weight=-1)])
    with pytest.raises(ValueError):
        Balancer(members("a", "a"))


# --- affinity none and host ----------------------------------------------------------------------
def test_affinity_none_hashes_per_packet_without_a_table():
    bal = Balancer(members("a", "b", "c"), "none")
    trace = generate(300, seed=3)
    seen = defaultdict(set)
    for p in trace:
        seen[p.flow_key].add(bal.pick(p, p.ts))
    assert all(len(s) == 1 for s in seen.values()) and len(bal) == 0
    assert set().union(*seen.values()) == {"a", "b", "c"}
    bal.update([Member("a", "s"), Member("b", "s"), Member("c", "s", state="draining")], 1.0)
    assert bal.take_drained() == ["c"]  # stateless: nothing to wait for
    assert all(bal.pick(p, p.ts) != "c" for p in trace)


def test_affinity_host_keeps_a_client_on_one_instance():
    bal = Balancer(members("a", "b", "c", "d"), "host")
    by_client = defaultdict(set)
    for c in range(50):
        client = f"198.18.0.{c + 1}"
        for s in range(10):
            server = f"198.19.0.{s + 1}"
            # the server's SYN+ACK may be the first packet the switch sees
            first = "SA" if s % 3 == 0 else "S"
            src, dst, sp, dp = (server, client, 443, 5000 + s) if first == "SA" else (client, server, 5000 + s, 443)
            by_client[client].add(bal.pick(tp(src, dst, sp, dp, first, 0), 0))
            by_client[client].add(bal.pick(tp(server, client, 443, 5000 + s, "A", 0.1), 0.1))
            by_client[client].add(bal.pick(tp(client, server, 5000 + s, 443, "A", 0.2), 0.2))
    assert all(len(s) == 1 for s in by_client.values())
    assert len(set().union(*by_client.values())) == 4
    assert bal.stats()["hosts"] == 50


def test_affinity_host_migration_avoidance_is_per_host():
    bal = Balancer(members("a", "b"), "host", fin_timeout=1.0)
    new = Balancer(members("a", "b", "c")).owners()
    old = bal.owners()
    client = next(
        f"198.18.{i // 250}.{i % 250 + 1}"
        for i in range(5000)
        if old[bal.bucket_of(key=tp(f"198.18.{i // 250}.{i % 250 + 1}", "1.1.1.1", 1, 2).src)]
        != new[bal.bucket_of(key=tp(f"198.18.{i // 250}.{i % 250 + 1}", "1.1.1.1", 1, 2).src)]
    )
    was = bal.pick(tp(client, "198.19.0.1", 4000, 443, "S", 0), 0)
    bal.update(members("a", "b", "c"), 0.5)
    # a new flow of a host that still has a live flow: the host's instance, not the new owner
    assert bal.pick(tp(client, "198.19.0.2", 4001, 80, "S", 1), 1) == was
    for sp, dp, srv in ((4000, 443, "198.19.0.1"), (4001, 80, "198.19.0.2")):
        bal.pick(tp(client, srv, sp, dp, "R", 2), 2)
    bal.tick(10)
    assert bal.stats()["hosts"] == 0
    assert bal.pick(tp(client, "198.19.0.3", 4002, 80, "S", 11), 11) == "c"  # now it moves


# --- switch restart and the table format ---------------------------------------------------------
def test_export_load_roundtrip_through_msgpack():
    for aff in ("flow", "host"):
        a = Balancer(members("x", "y", "z"), aff)
        trace = generate(200, seed=9)
        for p in trace[: len(trace) // 2]:
            a.pick(p, p.ts)
        blob = msgpack.packb(a.export(), use_bin_type=True)
        b = Balancer(members("x", "y", "z", "w"), aff)  # a different table: w takes buckets
        assert b.load(msgpack.unpackb(blob, raw=False)) == len(a)
        assert b.flows_per_member() == {**a.flows_per_member(), "w": 0}
        for p in trace[len(trace) // 2 :]:
            k = p.flow_key
            if a.instance_of(k) is not None:
                assert b.pick(p, p.ts) == a.pick(p, p.ts)


def test_for_group():
    spec = GroupSpec("ids", (Member("ids-0", "s1"), Member("ids-1", "s2", weight=2)), affinity="host")
    bal = Balancer.for_group(spec, buckets=1024)
    assert bal.affinity == "host" and bal.buckets == 1024
    assert sum(bal.buckets_per_member().values()) == 1024


# --- a real trace through a scaling group --------------------------------------------------------
@pytest.mark.parametrize("affinity", ["flow", "host"])
def test_generated_trace_while_scaling(affinity):
    """Real packets (IPv4/IPv6, VLANs, fragments, ICMP, DNS, malformed frames) while the group
    scales out and in: no flow reaches two instances, no packet is refused."""
    trace = generate(3000, seed=21)
    bal = Balancer(members("a", "b"), affinity, fin_timeout=2.0, drain_timeout=None)
    steps = {
        len(trace) // 5: [Member("a", "s"), Member("b", "s"), Member("c", "s", state="starting")],
        2 * len(trace) // 5: members("a", "b", "c"),
        3 * len(trace) // 5: [*members("a", "b", "c"), Member("d", "s")],
        4 * len(trace) // 5: [*members("a", "b", "c"), Member("d", "s", state="draining")],
    }
    where = defaultdict(set)
    late = Counter()
    for i, p in enumerate(trace):
        if i in steps:
            bal.update(steps[i], p.ts)
        r = bal.pick(p, p.ts)
        assert isinstance(r, str), r
        where[p.flow_key].add(r)
        if i > 2 * len(trace) // 5:
            late[r] += 1
    assert all(len(s) == 1 for s in where.values())
    assert late["c"] > 0 and bal.counters["cut_over_flows"] == 0
    assert bal.counters["kept_flows"] > 0


# --- THE PROOF -----------------------------------------------------------------------------------
class SimPacket:
    """What the balancer reads from a packet, without building frames (the simulation pushes
    about a million packets)."""

    __slots__ = ("flow_key", "src", "dst", "tcp_flags", "direction")

    def __init__(self, src: bytes, sport: int, dst: bytes, dport: int) -> None:
        self.src, self.dst = src, dst
        lo, hi = sorted(((src, sport), (dst, dport)))
        self.flow_key = (6, lo[0], lo[1], hi[0], hi[1], ())
        self.direction = 0 if (src, sport) <= (dst, dport) else 1
        self.tcp_flags = 0


@functools.lru_cache(maxsize=2)
def _workload(seed: int = 7) -> tuple:
    """The simulated traffic, once per seed: 2,000 new flows per second for 26 s, each a TCP
    connection (handshake, heavy-tailed data both ways, FIN/FIN/ACK or an RST) lasting a
    heavy-tailed time; ``(events, per-flow packets, starts, clients, last packet of each flow)``."""
    rng = random.Random(seed)
    rate = 2000.0  # new flows per simulated second
    t_arrivals = 26.0
    cap = 10.0  # longest flow (s): heavy-tailed below it
    nclients = 40000  # about 0.25 live flows per client: hosts go idle, so they can move
    servers = [bytes((198, 19, 0, i)) for i in range(1, 65)]
    next_port = [32768] * nclients
    # events: (time, seq, flow, from_client, flags)
    ev: list[tuple[float, int, int, int, int]] = []
    flow_pk: list[tuple[SimPacket, SimPacket]] = []
    flow_start: list[float] = []
    flow_client: list[bytes] = []
    last_seq: list[int] = []
    t, seq = 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= t_arrivals:
            break
        f = len(flow_pk)
        c = rng.randrange(nclients)
        client = bytes((198, 18 + (c >> 16), (c >> 8) & 0xFF, c & 0xFF))
        cport = next_port[c]
        next_port[c] += 1
        server = rng.choice(servers)
        flow_pk.append((SimPacket(client, cport, server, 443), SimPacket(server, 443, client, cport)))
        flow_start.append(t)
        flow_client.append(client)
        dur = min(cap, rng.paretovariate(1.5) * 2.4)  # mean about 5 s: ~10,000 concurrent flows
        data = min(200, int(rng.paretovariate(1.4)))  # data packets, heavy-tailed
        rtt = rng.uniform(0.002, 0.06)
        evs = [(t, 1, 0x02), (t + rtt / 2, 0, 0x12), (t + rtt, 1, 0x10)]
        for _ in range(data):
            evs.append((t + rtt + rng.random() * dur, rng.random() < 0.3, 0x18))
        end = t + rtt + dur
        if rng.random() < 0.05:
            evs.append((end, rng.random() < 0.5, 0x04))
        else:
            evs += [(end, 1, 0x11), (end + rtt / 2, 0, 0x11), (end + rtt, 1, 0x10)]
        for et, fc, fl in evs:
            ev.append((et, seq, f, fc, fl))
            seq += 1
        last_seq.append(seq - 1)  # the final ACK (or the RST) is the flow's last packet
    ev.sort()

    return ev, flow_pk, flow_start, flow_client, last_seq


def _simulate(affinity: str, seed: int = 7) -> dict:
    ev, flow_pk, flow_start, flow_client, last_seq = _workload(seed)
    M = lambda n, s="running": Member(n, "s1", state=s)  # noqa: E731
    # (time, members): scale out 2 -> 3 -> 4 (each new instance starts first), a state move of b,
    # scale in 4 -> 3 by draining d (removed from the table once the balancer reports it drained).
    plan = [
        (6.0, [M("a"), M("b"), M("c", "starting")]),
        (7.0, [M("a"), M("b"), M("c")]),
        (12.0, [M("a"), M("b"), M("c"), M("d", "starting")]),
        (13.0, [M("a"), M("b"), M("c"), M("d")]),
        (16.0, [M("a"), M("b", "moving"), M("c"), M("d")]),
        (16.3, [M("a"), M("b"), M("c"), M("d")]),
        (19.0, [M("a"), M("b"), M("c"), M("d", "draining")]),
    ]
    bal = Balancer([M("a"), M("b")], affinity, fin_timeout=2.0, flow_timeout=30.0, drain_timeout=120.0)
    allowed = {"a", "b"}  # running or draining: may receive packets
    table = {"a": "running", "b": "running"}
    nflows = len(flow_pk)
    inst_of: list[str | None] = [None] * nflows  # the instance each flow reached first
    others: dict[int, set[str]] = {}  # flows that reached another instance too (must stay empty)
    per_inst_packets = Counter()
    new_flows_at = Counter()  # (phase, instance) -> flows started
    held: list[tuple[int, int, Hold]] = []
    host_live: dict[bytes, Counter] = defaultdict(Counter)  # host -> instance -> live flows
    host_prev: dict[bytes, str] = {}  # host -> instance of its latest flow
    live = max_live = packets = pi = nheld = 0
    live_at_scale = {}
    drained_at = None

    def first_packet(f: int, inst: str) -> None:
        nonlocal live, max_live
        inst_of[f] = inst
        live += 1
        max_live = max(max_live, live)
        s = flow_start[f]
        phase = "2" if s < 7.0 else "3" if s < 13.0 else "4" if s < 19.0 else "drain"
        new_flows_at[phase, inst] += 1
        st = table[inst]
        if affinity == "host":
            # a host never has live flows on two instances; a draining instance takes new flows
            # only from hosts already on it (the host is the unit of affinity)
            h = flow_client[f]
            hl = host_live[h]
            assert not [i for i, n in hl.items() if n and i != inst], "a host on two instances"
            assert st != "draining" or host_prev.get(h) == inst, f"new host {h} sent to draining {inst}"
            hl[inst] += 1
            host_prev[h] = inst
        else:
            assert st != "draining", f"new flow {f} sent to draining {inst}"

    def deliver(f: int, inst: str, sq: int) -> None:
        nonlocal live
        assert inst in allowed, (inst, table)  # never a starting, moving or removed instance
        per_inst_packets[inst] += 1
        was = inst_of[f]
        if was is None:
            first_packet(f, inst)
        elif was != inst:
            others.setdefault(f, {was}).add(inst)
        if sq == last_seq[f]:
            live -= 1
            if affinity == "host":
                host_live[flow_client[f]][inst] -= 1

    def set_table(ms: list[Member]) -> None:
        nonlocal table, allowed
        table = {m.instance: m.state for m in ms}
        allowed = {n for n, st in table.items() if st in ("running", "draining")}

    pick = bal.pick
    last_t = 0.0
    for et, sq, f, fc, fl in ev:
        if et >= plan[pi][0] if pi < len(plan) else False:
            pt, ms = plan[pi]
            bal.update(ms, pt)
            live_at_scale[pt] = live
            set_table(ms)
            pi += 1
            if table.get("b") == "running" and held:  # the move is done: release, in order
                for hf, hsq, h in held:
                    assert h.instance == "b"
                    deliver(hf, h.instance, hsq)
                held.clear()
        if drained_at is None and pi == len(plan):
            for name in bal.take_drained():
                assert name == "d"
                drained_at = et
                ms = [M("a"), M("b"), M("c")]
                bal.update(ms, et)
                set_table(ms)
        pk = flow_pk[f][0 if fc else 1]
        pk.tcp_flags = fl
        r = pick(pk, et, pk.flow_key)
        packets += 1
        if r.__class__ is str:
            deliver(f, r, sq)
        else:
            assert isinstance(r, Hold), f"packet of flow {f} not assigned: {r!r}"
            held.append((f, sq, r))
            nheld += 1
        last_t = et
    assert not held
    if drained_at is None:  # the last flows' grace, after the traffic stopped
        assert bal.tick(last_t + 2 * bal.fin_timeout + 1) == ["d"]
        drained_at = last_t + 2 * bal.fin_timeout + 1
    return {
        "bal": bal,
        "others": others,
        "unassigned": inst_of.count(None),
        "flows": nflows,
        "packets": packets,
        "per_inst_packets": per_inst_packets,
        "took": Counter(inst_of),
        "new_flows_at": new_flows_at,
        "max_live": max_live,
        "live_at_scale": live_at_scale,
        "drained_at": drained_at,
        "held": nheld,
    }


@pytest.mark.parametrize("affinity", ["flow", "host"])
def test_proof_no_flow_ever_reaches_two_instances(affinity):
    """~9,000 concurrent flows, 2,000 new flows per simulated second with heavy-tailed lengths,
    both directions; scale out 2 -> 3 -> 4, move an instance's state, scale in 4 -> 3 by draining,
    while packets keep flowing."""
    r = _simulate(affinity)
    bal = r["bal"]
    assert r["others"] == {}, f"{len(r['others'])} flows reached two instances"
    assert r["unassigned"] == 0  # every flow reached an instance (every packet: asserted inside)
    assert r["held"] > 1000  # b's packets were held during its move, then delivered to b
    c = bal.counters
    assert c["no_instance"] == 0 and c["cut_over_flows"] == 0 and c["evicted_flows"] == 0
    assert c["kept_flows"] > 1000  # migration avoidance was really exercised
    assert r["max_live"] > 8000 and min(r["live_at_scale"].values()) > 5000
    nf = r["new_flows_at"]
    # new flows after a scale-out reach the new member, about its share
    assert nf["3", "c"] > 0.2 * sum(v for (ph, _i), v in nf.items() if ph == "3")
    assert nf["4", "d"] > 0.15 * sum(v for (ph, _i), v in nf.items() if ph == "4")
    if affinity == "flow":
        assert nf["drain", "d"] == 0
    else:  # only flows of hosts that were still on d
        assert nf["drain", "d"] < 0.05 * sum(v for (ph, _i), v in nf.items() if ph == "drain")
    if affinity == "flow":  # its last flow began before 19 s and lasts at most 10 s
        assert r["drained_at"] < 19.0 + 10.0 + 5.0
    print(
        f"\n[{affinity}] {r['flows']} flows, {r['packets']} packets, max {r['max_live']} concurrent, "
        f"live at scale events {r['live_at_scale']}, {r['held']} packets held while b moved, "
        f"d drained at t={r['drained_at']:.2f}s"
    )
    print(f"[{affinity}] flows per instance: {dict(sorted(r['took'].items()))}")
    print(f"[{affinity}] packets per instance: {dict(sorted(r['per_inst_packets'].items()))}")
    print(
        f"[{affinity}] new flows per phase: "
        + ", ".join(f"{ph}:{i}={v}" for (ph, i), v in sorted(nf.items()))
    )
    print(f"[{affinity}] counters: {c}")
