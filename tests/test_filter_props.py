"""Property tests of the filter language: random expressions from the grammar agree with tcpdump
on a fixed capture; random text never raises anything but FilterError; random frames never make a
compiled filter raise."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2actors.errors import FilterError
from e2actors.packet.filter import compile_filter

sys.path.insert(0, os.path.dirname(__file__))
from conftest import need_tool  # noqa: E402
from filter_frames import TcpdumpError, generated_frames, tcpdump_matches, write_numbered  # noqa: E402

ATOMS = [
    "tcp", "udp", "icmp", "ip", "ip6", "arp", "icmp6", "vlan", "vlan 10", "vlan 20",
    "port 80", "port 53", "src port 443", "dst port 22", "tcp port 80", "udp port 53",
    "portrange 50-100", "host 10.0.0.1", "src host 198.18.0.1", "dst host 10.0.0.2",
    "net 10.0.0.0/8", "net 198.18", "host 2001:db8::1", "net 2001:db8::/32",
    "ether src 00:11:22:33:44:55", "ether dst ff:ff:ff:ff:ff:ff", "ether proto 0x86dd",
    "broadcast", "multicast", "ip multicast", "ip6 multicast", "ip proto 17", "ip6 proto 6",
    "less 60", "greater 100", "len > 70", "tcp[tcpflags] & tcp-syn != 0",
    "tcp[13] & 0x10 = 0x10", "ip[8] < 64", "ip[6:2] & 0x1fff = 0", "udp[2:2] = 53",
    "icmp[icmptype] = icmp-echo", "ip6[6] = 44", "ether[0] & 1 = 1", "ip[100] = 1",
    "tcp[20:4] = 0x47455420", "arp[7] = 1", "ip[0] & 0xf > 5", "1 + tcp[0] = 1",
]
ABBREVS = ["or 443", "or 10.0.0.2", "and not 22", "or 53"]


@st.composite
def expressions(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        a = draw(st.sampled_from(ATOMS))
        if a.split()[-2:-1] in (["port"], ["host"]) and draw(st.booleans()):
            a += " " + draw(st.sampled_from(ABBREVS))
        return a
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return f"not {draw(expressions(depth - 1))}"
    if kind == 1:
        return f"({draw(expressions(depth - 1))})"
    op = draw(st.sampled_from(["and", "or", "&&", "||"]))
    return f"{draw(expressions(depth - 1))} {op} {draw(expressions(depth - 1))}"


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory):
    tcpdump = need_tool("tcpdump")
    frames = generated_frames()[::3]
    path = str(tmp_path_factory.mktemp("props") / "small.pcap")
    write_numbered(path, frames)
    return tcpdump, path, frames


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expr=expressions())
def test_random_expressions_match_tcpdump(small_capture, expr):
    tcpdump, path, frames = small_capture
    try:
        expected = tcpdump_matches(tcpdump, path, expr)
    except TcpdumpError:
        with pytest.raises(FilterError):
            compile_filter(expr)
        return
    f = compile_filter(expr)
    results = {i: f.evaluate(p.data, p.wirelen) for i, p in enumerate(frames, 1)}
    got = {i for i, r in results.items() if r}
    aborted = {i for i, r in results.items() if r is None}
    # Exact wherever our evaluation did not abort. Where it aborted (a load past the end of a
    # truncated frame) we reject, as BPF does; libpcap's optimizer may have reordered or removed
    # that load (``x or not x`` becomes "accept"), so tcpdump may accept such a frame.
    assert got <= expected, (expr, sorted(got - expected))
    assert expected - got <= aborted, (expr, sorted(expected - got - aborted))


PIECES = ["tcp", "udp", "port", "host", "net", "src", "dst", "and", "or", "not", "!", "(", ")",
          "[", "]", ":", "=", "==", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "&",
          "|", "^", "<<", ">>", "80", "0x10", "010", "10.0.0.1", "10.0", "::1", "2001:db8::/32",
          "aa:bb:cc:dd:ee:ff", "vlan", "ether", "proto", "\\tcp", "len", "less", "greater",
          "mask", "255.0.0.0", "/", "8", "portrange", "1-2", "http", "ip6", "icmp6", "broadcast",
          "tcpflags", "tcp-syn", "99999999999", "$", "@", "'", '"', "\t", "protochain", "ip",
          "multicast", "gateway", "icmp[", "tcp[0]", "ip[100:4]"]


@settings(max_examples=600, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12), st.sampled_from([" ", ""]))
def test_parser_fuzz_raises_only_filter_error(pieces, sep):
    expr = sep.join(pieces)
    try:
        compile_filter(expr)
    except FilterError as e:
        assert 0 <= e.column <= len(expr) + 1


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(max_size=40))
def test_random_text_raises_only_filter_error(expr):
    try:
        compile_filter(expr)
    except FilterError:
        pass


_FILTERS = [compile_filter(e) for e in ATOMS + ["tcp[tcp[0]:4] = 1", "ip[2:2] / ip[1] = 0",
                                               "(1 << ip[0]) = 0", "ether[len - 1] = 0"]]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 70000))
def test_random_frames_never_raise(data, wirelen):
    for f in _FILTERS:
        assert f.match(data, wirelen) in (True, False)
