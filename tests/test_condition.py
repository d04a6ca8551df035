"""E2 conditions: the pcap-filter language (exactly as the filter compiles it) plus metadata
tests and ``domain``; error columns in the whole text; flow invariance."""

from __future__ import annotations

import os
import random
import sys

import pytest

from e2actors.errors import FilterError
from e2actors.packet.filter import compile_filter
from e2actors.packet.packet import Packet
from e2actors.packet.traffic import generate
from e2actors.switch.condition import compile_condition, normalize_host

sys.path.insert(0, os.path.dirname(__file__))
from filter_frames import MAC_A, MAC_B, eth, generated_frames, ip4, tcp, udp  # noqa: E402
from test_filter import EXPRESSIONS, KNOWN_DEVIATIONS, SEMANTIC_ERRORS, SYNTAX_ERRORS  # noqa: E402


def pkt(meta=None, sport=1234, dport=80, proto=6):
    l4 = tcp(sport, dport) if proto == 6 else udp(sport, dport)
    return Packet(eth(MAC_A, MAC_B, 0x0800, ip4("10.0.0.1", "10.0.0.2", proto, l4)), meta=meta)


@pytest.fixture(scope="module")
def trace():
    return generate(300, seed=7)


# --- the pcap part stays exactly the filter ---------------------------------------------------------
@pytest.fixture(scope="module")
def frames():
    return generated_frames()


@pytest.mark.parametrize("expr", EXPRESSIONS + KNOWN_DEVIATIONS)
def test_pcap_expressions_match_exactly_like_the_filter(frames, expr):
    try:
        f = compile_filter(expr)
    except FilterError as e:
        with pytest.raises(FilterError) as ei:
            compile_condition(expr)
        assert ei.value.column == e.column
        return
    c = compile_condition(expr)
    got = [c(p) for p in frames]
    want = [f.match(p.data, p.wirelen) for p in frames]
    assert got == want


def test_pcap_expressions_agree_on_the_generated_trace(trace):
    for expr in EXPRESSIONS[::7]:
        try:
            f = compile_filter(expr)
        except FilterError:
            continue
        c = compile_condition(expr)
        assert [c(p) for p in trace] == [f(p) for p in trace], expr


@pytest.mark.parametrize("expr,column", SYNTAX_ERRORS)
def test_pcap_syntax_errors_keep_their_column(expr, column):
    with pytest.raises(FilterError) as ei:
        compile_condition(expr)
    assert ei.value.column == column
    assert ei.value.expression == expr


@pytest.mark.parametrize("expr,words", SEMANTIC_ERRORS)
def test_pcap_semantic_errors_still_raise(expr, words):
    with pytest.raises(FilterError) as ei:
        compile_condition(expr)
    assert words in str(ei.value)


def test_empty_condition_is_always_true(trace):
    for text in ("", "   "):
        c = compile_condition(text)
        assert c.always and c.flow_invariant and not c.uses_domain and not c.uses_meta
        assert all(c(p) for p in trace[:50])
        assert c(trace[0], "example.com")


# --- metadata --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,meta,want", [
    ('meta.verdict == "unsafe"', {"verdict": "unsafe"}, True),
    ('meta.verdict == "unsafe"', {"verdict": "safe"}, False),
    ('meta.verdict == "unsafe"', {}, False),
    ('meta.verdict == "unsafe"', None, False),
    ("meta.verdict == 'unsafe'", {"verdict": "unsafe"}, True),
    ('meta.verdict = "unsafe"', {"verdict": "unsafe"}, True),
    ('meta.verdict=="unsafe"', {"verdict": "unsafe"}, True),
    ('meta.verdict != "unsafe"', {"verdict": "unsafe"}, False),
    ('meta.verdict != "unsafe"', {"verdict": "safe"}, True),
    ('meta.verdict != "unsafe"', {}, True),
    ('meta.verdict != "unsafe"', None, True),
    ('meta.q == "say \\"hi\\""', {"q": 'say "hi"'}, True),
    ("meta.n == 3", {"n": 3}, True),
    ("meta.n == 3", {"n": 3.0}, True),
    ("meta.n == 3", {"n": "3"}, False),
    ("meta.n == 1", {"n": True}, False),
    ("meta.n == 0x10", {"n": 16}, True),
    ("meta.n == 010", {"n": 10}, True),
    ("meta.n == -2", {"n": -2}, True),
    ("meta.n == 0.5", {"n": 0.5}, True),
    ('meta.n == "3"', {"n": 3}, False),
    ("meta.flag == true", {"flag": True}, True),
    ("meta.flag == true", {"flag": 1}, False),
    ("meta.flag == false", {"flag": False}, True),
    ("meta.flag == false", {}, False),
    ("meta.flag != true", {"flag": False}, True),
    ('meta.tag in ("a", "b")', {"tag": "b"}, True),
    ('meta.tag in ("a", "b")', {"tag": "c"}, False),
    ('meta.tag in ("a", "b")', {}, False),
    ('meta.tag in ("a", 2, true)', {"tag": 2}, True),
    ('meta.tag in ("a", 2, true)', {"tag": True}, True),
    ('meta.tag in ("a", 2)', {"tag": True}, False),
    ('meta.tag in ("a")', {"tag": "a"}, True),
    ('meta.tag in ("a", "b")', {"tag": ["a"]}, False),
    ("meta.tag exists", {"tag": None}, True),
    ("meta.tag exists", {"other": 1}, False),
    ("meta.tag exists", None, False),
    ("not meta.tag exists", None, True),
    ("meta.my-key_2 exists", {"my-key_2": 0}, True),
    ("meta.score < 5", {"score": 4}, True),
    ("meta.score < 5", {"score": 5}, False),
    ("meta.score <= 5", {"score": 5}, True),
    ("meta.score > 0.5", {"score": 0.75}, True),
    ("meta.score >= -1", {"score": -1}, True),
    ("meta.score > 1", {"score": "9"}, False),
    ("meta.score > 1", {"score": True}, False),
    ("meta.score > 1", {}, False),
    ("not meta.score > 1", {}, True),
])
def test_metadata_tests(text, meta, want):
    c = compile_condition(text)
    assert c.uses_meta and not c.flow_invariant and not c.uses_domain
    assert c(pkt(meta)) is want


def test_metadata_combined_with_pcap_parts():
    text = 'tcp and (src port 80 or 443) and not meta.verdict == "unsafe"'
    c = compile_condition(text)
    base = compile_filter("tcp and (src port 80 or 443)")
    rnd = random.Random(3)
    for _ in range(200):
        meta = rnd.choice([None, {}, {"verdict": "unsafe"}, {"verdict": "safe"}])
        p = pkt(meta, sport=rnd.choice([80, 443, 22]), proto=rnd.choice([6, 17]))
        want = base(p) and not (meta or {}).get("verdict") == "unsafe"
        assert c(p) is want
    # a metadata test inside the parentheses of a pcap abbreviation
    c2 = compile_condition('tcp port 80 or (meta.x exists and udp)')
    assert c2(pkt(None, dport=80))
    assert not c2(pkt(None, dport=81))
    assert c2(pkt({"x": 1}, dport=81, proto=17))
    assert not c2(pkt({"x": 1}, dport=81, proto=6))
    # abbreviations keep working after E2 atoms too
    c3 = compile_condition('meta.k exists and src port 1234 or 1235')
    assert c3(pkt({"k": 1}, sport=1235)) and not c3(pkt({}, sport=1234))


def test_metadata_values_are_not_python_code():
    c = compile_condition("meta.x == \"'); import os; os._exit(1); ('\"")
    assert c(pkt({"x": "'); import os; os._exit(1); ('"}))


# --- domain ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("host,want", [
    ("youtube.com", True), ("www.youtube.com", True), ("m.youtube.com", True),
    ("a.b.youtube.com", True), ("notyoutube.com", False), ("youtube.com.evil.net", False),
    ("youtube.co", False), ("example.com", False), (None, False), ("", False),
])
def test_domain_suffix_match(host, want):
    p = pkt()
    for text in ("domain youtube.com", "domain YouTube.COM", 'domain "youtube.com"',
                 "domain youtube.com."):
        c = compile_condition(text)
        assert c.uses_domain and c.flow_invariant and not c.uses_meta
        assert c(p, host) is want, (text, host)
        assert c(p, normalize_host(host.upper() + ".") if host else host) is want


def test_normalize_host():
    assert normalize_host("WWW.YouTube.com:443") == "www.youtube.com"
    assert normalize_host(b"example.com.") == "example.com"
    assert normalize_host("[2001:db8::1]:80") == "2001:db8::1"
    assert normalize_host("2001:db8::1") == "2001:db8::1"
    assert normalize_host("") is None and normalize_host(None) is None


def test_domain_combined_with_pcap_and_meta():
    c = compile_condition('tcp port 80 and (domain youtube.com or domain example.org) '
                          'and not meta.verdict == "unsafe"')
    assert c.uses_domain and c.uses_meta and not c.flow_invariant
    assert c(pkt(), "www.example.org")
    assert not c(pkt({"verdict": "unsafe"}), "www.example.org")
    assert not c(pkt(dport=81), "www.example.org")
    assert not c(pkt(), "example.net")
    n = compile_condition("not domain youtube.com")
    assert n(pkt(), None) and n(pkt(), "example.com") and not n(pkt(), "youtube.com")


def test_domain_stays_the_pcap_port_name_where_pcap_means_it(trace):
    for text in ("port domain", "udp port 53 or domain", "udp port domain and not tcp",
                 "\\domain"):
        try:
            f = compile_filter(text)
        except FilterError as e:
            with pytest.raises(FilterError) as ei:
                compile_condition(text)
            assert ei.value.column == e.column
            continue
        c = compile_condition(text)
        assert not c.uses_domain
        assert [c(p) for p in trace] == [f(p) for p in trace]


def test_eval3_three_valued_domain():
    p = pkt()
    c = compile_condition("domain youtube.com")
    assert c.eval3(p) is None
    assert c.eval3(p, "youtube.com") is True and c.eval3(p, "example.com") is False
    assert compile_condition("udp and domain youtube.com").eval3(p) is False  # tcp packet
    assert compile_condition("tcp or domain youtube.com").eval3(p) is True
    assert compile_condition("tcp and domain youtube.com").eval3(p) is None
    assert compile_condition("not domain youtube.com").eval3(p) is None
    assert compile_condition("not (udp and domain a.com)").eval3(p) is True
    assert compile_condition("tcp and not domain a.com").eval3(p) is None
    assert compile_condition("tcp").eval3(p) is True


# --- errors ----------------------------------------------------------------------------------------
ERRORS = [
    ('meta.verdict == ', 17),
    ('tcp and meta.verdict', 21),
    ('tcp and meta.verdict ~ "x"', 22),
    ('meta.x == abc', 11),
    ('meta.x < "a"', 10),
    ('meta.x in (1, 2', 16),
    ('meta.x in 1', 11),
    ('meta.x in ()', 12),
    ('meta.x in (1 2)', 14),
    ('meta. == 1', 6),
    ('meta.a.b == 1', 7),
    ('tcp and meta.x == "abc', 19),
    ('domain', 7),
    ('tcp and domain', 9),  # pcap's reading: the port name 'domain' without a qualifier
    ('domain ""', 8),
    ('tcp and "x"', 9),
    ('meta.x == 1 meta.y == 2', 13),
    ('meta.x exists and tcp port', 27),
    ('tcp and (src port 80 or 443) and not meta.verdict == "unsafe" and tcp[1-1] = 0', 71),
    ('domain youtube.com and port 70000', 29),
    ('meta.x exists or host 10.0.0.0/8', 23),
    ('meta.x exists and (tcp', 23),
    ('meta.verdict == "unsafe" and TCP', 30),
    ('domain youtube.com or 10.0.0.1', 23),
    ('meta.x == 1,', 12),
]


@pytest.mark.parametrize("text,column", ERRORS)
def test_errors_carry_the_column_in_the_whole_text(text, column):
    with pytest.raises(FilterError) as ei:
        compile_condition(text)
    assert ei.value.column == column, str(ei.value)
    assert ei.value.expression == text


def test_not_a_string():
    with pytest.raises(TypeError):
        compile_condition(None)  # type: ignore[arg-type]


# --- flow invariance -------------------------------------------------------------------------------
INVARIANT = [
    "", "tcp", "udp or icmp", "ip6", "arp", "host 198.18.0.1", "src host 10.0.0.1 and dst port 80",
    "net 10.0.0.0/8", "tcp port 80 or 443", "portrange 1000-2000", "ip proto 17", "proto \\tcp",
    "ether proto 0x0800", "vlan 10 and tcp port 80", "vlan", "ether host 00:11:22:33:44:55",
    "ether src 00:11:22:33:44:55 or 66:77:88:99:aa:bb", "broadcast", "ip multicast",
    "ip6 multicast", "host 2001:db8::1", "not (tcp or udp)", "domain youtube.com",
    "tcp and not domain youtube.com", "port domain",
]
NOT_INVARIANT = [
    "tcp[13] & 2 != 0", "tcp[tcpflags] & tcp-syn != 0", "len > 100", "less 60", "greater 1000",
    "ip[8] < 64", "ip[6:2] & 0x1fff != 0", "tcp and ip[2:2] > 40", "ether[0] & 1 = 1",
    'meta.verdict == "unsafe"', "tcp and meta.x exists", "host 10.0.0.1 or len > 5",
    "not len > 5", "1 = 1", "domain youtube.com and meta.k exists",
]


@pytest.mark.parametrize("text", INVARIANT)
def test_flow_invariant(text):
    assert compile_condition(text).flow_invariant


@pytest.mark.parametrize("text", NOT_INVARIANT)
def test_not_flow_invariant(text):
    assert not compile_condition(text).flow_invariant


def test_uses_macs():
    assert compile_condition("ether host 00:11:22:33:44:55").uses_macs
    assert compile_condition("broadcast").uses_macs
    assert compile_condition("ether multicast").uses_macs
    assert not compile_condition("ip multicast").uses_macs
    assert not compile_condition("host 10.0.0.1 and tcp").uses_macs


def test_generated_source_and_repr():
    c = compile_condition("tcp port 80 and meta.x exists")
    assert "def cond" in c.source and "'x' in m" in c.source
    assert "tcp port 80" in repr(c)
