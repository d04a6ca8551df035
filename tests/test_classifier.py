"""The classifier: first matching route per source, the flow cache (used only when the rule
allows it; identical decisions with and without it), the candidate index, PENDING for domain."""

from __future__ import annotations

import os
import random
import sys

import pytest

from e2actors.errors import FilterError
from e2actors.packet.packet import Packet, format_addr
from e2actors.packet.traffic import generate
from e2actors.switch.classifier import NO_ROUTE, PENDING, Classifier
from e2actors.switch.condition import compile_condition
from e2actors.switch.table import Route

sys.path.insert(0, os.path.dirname(__file__))
from filter_frames import (  # noqa: E402
    MAC_A, MAC_B, MAC_C, arp, eth, ext6, generated_frames, ip4, ip6, tcp, udp,
)
from test_filter import EXPRESSIONS  # noqa: E402

SRC = "port:in"


def oracle(routes, pkt, host=None):
    """First match, the naive way: every condition in order, no cache, no index."""
    for i, r in enumerate(routes):
        if compile_condition(r.condition)(pkt, host):
            return i
    return NO_ROUTE


class Naive:
    def __init__(self, routes):
        self.conds = [compile_condition(r.condition) for r in routes]

    def __call__(self, pkt, host=None):
        for i, c in enumerate(self.conds):
            if c(pkt, host):
                return i
        return NO_ROUTE


def p4(src="10.0.0.1", dst="10.0.0.2", sport=1234, dport=80, proto=6, flags=0x10, meta=None,
       smac=MAC_B, dmac=MAC_A, **kw):
    l4 = tcp(sport, dport, flags) if proto == 6 else udp(sport, dport)
    return Packet(eth(dmac, smac, 0x0800, ip4(src, dst, proto, l4, **kw)), meta=meta)


@pytest.fixture(scope="module")
def trace():
    pkts = [p for p in generate(400, seed=11) if not p.malformed]
    rnd = random.Random(5)
    for p in pkts:
        x = rnd.random()
        if x < 0.1:
            p.meta["verdict"] = "unsafe"
        elif x < 0.3:
            p.meta["verdict"] = "safe"
    return pkts


def hundred_routes(trace):
    """100 routes mixing what a policy has: hosts and ports that occur in the trace (so many
    match), IPv6 hosts, VLANs, MACs, non-invariant conditions in the middle, metadata."""
    rnd = random.Random(9)
    v4 = sorted({(format_addr(p.src), p.dport) for p in trace if len(p.src) == 4 and p.proto == 6})
    v6 = sorted({format_addr(p.src) for p in trace if len(p.src) == 16})
    conds = []
    for i in range(70):
        a, port = rnd.choice(v4)
        conds.append(rnd.choice([
            f"host {a} and tcp port {port}", f"src host {a}", f"dst port {port} and tcp",
            f"host 198.18.{i}.{i + 1} and tcp port {1000 + i}", f"net {a.rsplit('.', 1)[0]}.0/24 and udp",
        ]))
    conds[20:20] = ["tcp[tcpflags] & tcp-syn != 0 and tcp port 443", 'meta.verdict == "unsafe"',
                    "greater 1000 and ip6"]
    for a in v6[:10]:
        conds.append(f"host {a}")
    conds += ["vlan 10 and tcp", "vlan and udp port 53", "ether src 02:00:5e:00:00:01 and icmp",
              "icmp6", 'udp and not meta.verdict == "safe"', "portrange 50-60", "tcp port 80",
              "tcp port 443", "ip6 and tcp", "ip and udp"]
    conds = conds[:99] + ["ip or ip6"]
    return [Route(SRC, c, f"port:out{i}", f"r{i}") for i, c in enumerate(conds)]


def test_first_match_wins_and_no_route():
    routes = [Route(SRC, "tcp port 80", "nf:a"), Route(SRC, "tcp", "nf:b"),
              Route("nf:a.out", "", "port:out")]
    c = Classifier(routes)
    assert c.classify(SRC, p4(dport=80)) == 0
    assert c.classify(SRC, p4(dport=81)) == 1
    assert c.classify(SRC, p4(proto=17)) == NO_ROUTE
    assert c.classify("nf:a.out", p4(proto=17)) == 0
    assert c.classify("nf:nobody.out", p4()) == NO_ROUTE
    assert c.hits(SRC) == [1, 1] and c.no_route(SRC) == 1 and c.stats()["unknown_source"] == 1
    assert c.routes(SRC) == tuple(routes[:2])
    assert [n for _r, n in c.counts()] == [1, 1, 1]
    assert c.sources == (SRC, "nf:a.out")


def test_bad_condition_raises_with_column():
    with pytest.raises(FilterError) as ei:
        Classifier([Route(SRC, "tcp", "x"), Route(SRC, "tcp and meta.x ==", "y")])
    assert ei.value.column == 18


def test_decisions_identical_with_and_without_cache_100_routes(trace):
    routes = hundred_routes(trace)
    naive = Naive(routes)
    cached = Classifier(routes)
    nocache = Classifier(routes, cache_size=0)
    tiny = Classifier(routes, cache_size=16)
    assert cached._sources[SRC].dispatch is not None  # the index is in use
    want = [naive(p) for p in trace]
    for i, p in enumerate(trace):
        assert cached.classify(SRC, p) == want[i], (i, p)
        assert nocache.classify(SRC, p) == want[i], (i, p)
        assert tiny.classify(SRC, p) == want[i], (i, p)
    # a second pass: now mostly from the cache, still the same
    assert cached.classify_many(SRC, trace) == want
    st = cached.stats()
    assert st["cache_hits"] > len(trace) // 2 and st["cache_stores"] > 0
    assert nocache.stats()["cache_hits"] == 0 and nocache.stats()["cache_stores"] == 0
    assert tiny.stats()["cache_evictions"] > 0 and tiny.stats()["cache_size"] <= 16
    assert sum(cached.hits(SRC)) + cached.no_route(SRC) == 2 * len(trace)
    assert cached.hits(SRC) == [2 * n for n in nocache.hits(SRC)]
    assert len(set(want)) > 20  # many different routes were taken


def test_classify_many_same_as_classify(trace):
    routes = hundred_routes(trace)
    a, b = Classifier(routes), Classifier(routes)
    assert a.classify_many(SRC, trace) == [b.classify(SRC, p) for p in trace]
    assert a.hits(SRC) == b.hits(SRC) and a.stats() == b.stats()


def test_index_is_exact_on_hostile_frames():
    """Routes from the filter test list, over the frames the filter is checked with against
    tcpdump (VLAN, QinQ, fragments, IPv4 options, IPv6 extension headers, truncations...)."""
    exprs = []
    for e in EXPRESSIONS:
        try:
            compile_condition(e)
        except FilterError:
            continue
        exprs.append(e)
    frames = [Packet(f.data, wirelen=f.wirelen) for f in generated_frames()]
    for start in range(0, len(exprs), 40):
        routes = [Route(SRC, e, f"t{i}") for i, e in enumerate(exprs[start:start + 40])]
        naive = Naive(routes)
        for c in (Classifier(routes, index=True), Classifier(routes, cache_size=0, index=True),
                  Classifier(routes, index=False)):
            for _ in range(2):
                for i, p in enumerate(frames):
                    assert c.classify(SRC, p) == naive(p), (i, routes[naive(p)] if naive(p) >= 0 else None)


def test_cache_only_when_every_route_up_to_the_match_is_invariant():
    routes = [Route(SRC, "tcp port 80", "a"), Route(SRC, "tcp[tcpflags] & tcp-syn != 0", "b"),
              Route(SRC, "ip", "c")]
    c = Classifier(routes)
    assert c.classify(SRC, p4(dport=80)) == 0
    assert c.stats()["cache_stores"] == 1
    # route 1 is not invariant: a decision at or after it is never stored
    syn, ack = p4(dport=81, flags=0x02), p4(dport=81, flags=0x10)
    assert c.classify(SRC, syn) == 1
    assert c.classify(SRC, ack) == 2  # same flow and direction: the SYN's answer was not cached
    assert c.classify(SRC, syn) == 1
    assert c.stats()["cache_stores"] == 1
    assert c.classify(SRC, p4(dport=80)) == 0
    assert c.stats()["cache_hits"] == 1
    # a first route that is not invariant: no lookups at all
    c2 = Classifier([Route(SRC, "len > 100", "a"), Route(SRC, "tcp", "b")])
    c2.classify(SRC, p4())
    assert c2.stats()["cache_misses"] == 0 and c2.stats()["cache_stores"] == 0


def test_metadata_routes_are_not_cached():
    c = Classifier([Route(SRC, 'meta.verdict == "unsafe"', "log"), Route(SRC, "", "out")])
    assert c.classify(SRC, p4(meta={"verdict": "unsafe"})) == 0
    assert c.classify(SRC, p4()) == 1
    assert c.classify(SRC, p4(meta={"verdict": "unsafe"})) == 0
    assert c.stats()["cache_stores"] == 0


def test_packets_whose_layout_the_key_does_not_pin_are_not_cached():
    c = Classifier([Route(SRC, "tcp port 80", "a"), Route(SRC, "ip or ip6 or arp", "b")])
    first = p4(dport=80, frag=0, mf=True)  # first fragment: has ports
    later = Packet(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 6, b"x" * 24, frag=3)))
    assert first.flow_key == later.flow_key  # every fragment shares a key
    assert c.classify(SRC, first) == 0
    assert c.classify(SRC, later) == 1
    a1 = Packet(eth(MAC_A, MAC_B, 0x0806, arp(1, MAC_B, "10.0.0.1", MAC_A, "10.0.0.2")))
    hbh = Packet(eth(MAC_A, MAC_B, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 0,
                                                ext6(6) + tcp(1, 80))))
    assert c.classify(SRC, a1) == 1
    assert c.classify(SRC, hbh) == 1  # libpcap's "tcp port" does not look past extension headers
    assert c.stats()["cache_stores"] == 0 and c.stats()["cache_misses"] == 0
    plain = Packet(eth(MAC_A, MAC_B, 0x86DD, ip6("2001:db8::1", "2001:db8::2", 6, tcp(1, 80))))
    assert c.classify(SRC, plain) == 0
    assert c.classify(SRC, plain) == 0
    assert c.stats()["cache_stores"] == 1 and c.stats()["cache_hits"] == 1


def test_mac_conditions_put_the_macs_in_the_key():
    c = Classifier([Route(SRC, "ether src 66:77:88:99:aa:bb", "a"), Route(SRC, "ip", "b")])
    assert c.classify(SRC, p4(smac=MAC_B)) == 0
    assert c.classify(SRC, p4(smac=MAC_C)) == 1  # same five-tuple, other MAC
    assert c.classify(SRC, p4(smac=MAC_B)) == 0
    assert c.classify(SRC, p4(smac=MAC_C)) == 1
    assert c.stats()["cache_hits"] == 2


def test_new_table_new_classifier_empty_cache(trace):
    routes = hundred_routes(trace)
    a = Classifier(routes)
    a.classify_many(SRC, trace[:200])
    assert a.stats()["cache_size"] > 0
    b = Classifier(routes[::-1])
    assert b.stats()["cache_size"] == 0 and b.stats()["cache_hits"] == 0
    naive = Naive(routes[::-1])
    assert b.classify_many(SRC, trace[:200]) == [naive(p) for p in trace[:200]]
    a.clear_cache()
    assert a.stats()["cache_size"] == 0


def test_first_route_always_true():
    c = Classifier([Route(SRC, "", "out"), Route(SRC, "domain x.com", "never")])
    assert c.classify(SRC, p4()) == 0 and not c.needs_domain(SRC)
    assert c.try_classify(SRC, p4()) == 0


# --- domain: PENDING and give-up -------------------------------------------------------------------
def test_needs_domain():
    c = Classifier([
        Route("a", "tcp", "x"), Route("a", "domain youtube.com", "y"),
        Route("b", "tcp", "x"), Route("b", "", "y"), Route("b", "domain youtube.com", "z"),
        Route("c", "tcp port 80", "x"),
    ])
    assert c.needs_domain("a")
    assert not c.needs_domain("b")  # the always-true route decides before any domain test
    assert not c.needs_domain("c") and not c.needs_domain("nosuch")


def test_pending_only_when_the_domain_matters():
    routes = [Route(SRC, "tcp port 22", "ssh"), Route(SRC, "tcp and domain youtube.com", "yt"),
              Route(SRC, "udp and domain example.com", "udp-ex"), Route(SRC, "ip", "rest")]
    c = Classifier(routes)
    assert c.needs_domain(SRC)
    assert c.try_classify(SRC, p4(dport=22)) == 0  # decided before any domain test
    assert c.try_classify(SRC, p4(dport=80)) == PENDING  # tcp: route 1 depends on the host
    assert c.try_classify(SRC, p4(proto=17, dport=53)) == PENDING
    assert c.hits(SRC) == [1, 0, 0, 0]  # PENDING counts nothing
    assert c.stats()["pending"][SRC] == 2
    assert c.try_classify(SRC, p4(dport=80), "www.youtube.com") == 1
    assert c.classify(SRC, p4(dport=80, sport=2), "example.com") == 3
    assert c.try_classify(SRC, p4(proto=17, dport=53), "example.com") == 2
    assert c.decide_unknown_host(SRC, p4(dport=80, sport=3)) == 3  # gave up: domains false
    assert c.decide_unknown_host(SRC, p4(dport=22)) == 0
    # an ICMP packet: no domain test can match it, so no need to wait
    icmp_pkt = Packet(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", 1, b"\x08" + bytes(7))))
    assert c.try_classify(SRC, icmp_pkt) == 3


def test_pending_with_negated_domain():
    routes = [Route("nf:ids.safe", "domain youtube.com", "nf:parental"),
              Route("nf:ids.safe", "not domain youtube.com", "nf:shaper")]
    c = Classifier(routes)
    assert c.needs_domain("nf:ids.safe")
    p = p4()
    assert c.try_classify("nf:ids.safe", p) == PENDING
    assert c.try_classify("nf:ids.safe", p, "m.youtube.com") == 0
    assert c.try_classify("nf:ids.safe", p) == 0  # the flow's decision is cached
    assert c.try_classify("nf:ids.safe", p4(sport=2), "notyoutube.com") == 1
    assert c.decide_unknown_host("nf:ids.safe", p4(sport=3)) == 1
    assert c.classify("nf:ids.safe", p4(sport=4)) == 1


def test_domain_decisions_are_cached_only_once_the_host_is_settled():
    routes = [Route(SRC, "domain youtube.com", "yt"), Route(SRC, "tcp", "other")]
    c = Classifier(routes)
    p = p4()
    assert c.classify(SRC, p) == 1  # host None: not cached (the host may come later)
    assert c.stats()["cache_stores"] == 0
    assert c.classify(SRC, p, "youtube.com") == 0  # known host: cached for the flow
    assert c.stats()["cache_stores"] == 1
    assert c.try_classify(SRC, p) == 0  # from the cache: the flow's decision is made
    q = p4(sport=999)
    assert c.try_classify(SRC, q) == PENDING
    assert c.decide_unknown_host(SRC, q) == 1  # gave up: cached, the flow keeps it
    assert c.stats()["cache_stores"] == 2
    assert c.try_classify(SRC, q) == 1
    assert c.classify(SRC, q, "youtube.com") == 1  # sticky: the flow already took its path


def test_pending_decisions_agree_with_the_oracle(trace):
    """Over the trace: whenever try_classify is definite without a host, it equals the decision
    for every possible host; PENDING only when two hosts give different answers."""
    routes = [Route(SRC, "tcp port 22", "a"), Route(SRC, "domain youtube.com and tcp", "b"),
              Route(SRC, "not domain example.com and udp", "c"), Route(SRC, "icmp", "d"),
              Route(SRC, "domain example.org or tcp port 443", "e"), Route(SRC, "ip", "f")]
    c = Classifier(routes)
    naive = Naive(routes)
    hosts = [None, "youtube.com", "example.com", "www.example.org", "other.net"]
    pend = 0
    for p in trace:
        r = c.try_classify(SRC, p)
        answers = {naive(p, h) for h in hosts}
        if r == PENDING:
            pend += 1
            assert len(answers) > 1 or answers != {naive(p)}
        else:
            assert answers == {r}, p
    assert pend > 0
