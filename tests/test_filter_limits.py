"""Long and deep filter expressions: a run of hundreds of ``host X or ...`` terms (which tcpdump
accepts) compiles and matches the frames tcpdump matches; nesting past MAX_DEPTH is a FilterError
naming the column, never a SyntaxError or RecursionError, in the pcap-filter compiler and in the
switch's condition language alike."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from e2actors.errors import FilterError
from e2actors.packet.filter import MAX_DEPTH, compile_filter
from e2actors.switch.condition import compile_condition

sys.path.insert(0, os.path.dirname(__file__))
from conftest import need_tool  # noqa: E402
from filter_frames import (  # noqa: E402
    TcpdumpError, ethernet_frames_of, generated_frames, real_captures, tcpdump_matches, write_numbered,
)

# Addresses and ports the test frames use, among many they do not.
HOSTS = ["198.18.0.1", "198.18.0.2", "10.0.0.1", "10.1.2.3", "192.168.1.10", "172.16.5.4"]


def host_run(n: int, op: str = "or") -> str:
    """``host A or host B or ...``: ``n`` terms, every 37th an address the frames use."""
    addrs = [HOSTS[(i // 37) % len(HOSTS)] if i % 37 == 0 else f"203.0.{i // 250}.{i % 250 + 1}"
             for i in range(n)]
    return f" {op} ".join(f"host {a}" for a in addrs)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """(tcpdump, path of the numbered capture, frames): generated frames and the real captures."""
    tcpdump = need_tool("tcpdump")
    d = tmp_path_factory.mktemp("limits")
    frames = generated_frames()
    for path in real_captures():
        frames += ethernet_frames_of(path, str(d), tcpdump)
    path = str(d / "all.pcap")
    write_numbered(path, frames)
    return tcpdump, path, frames


def agree(capture, expr: str) -> set[int]:
    """Assert we match what tcpdump matches; return the matching frame numbers."""
    tcpdump, path, frames = capture
    expected = tcpdump_matches(tcpdump, path, expr)
    f = compile_filter(expr)
    results = {i: f.evaluate(p.data, p.wirelen) for i, p in enumerate(frames, 1)}
    got = {i for i, r in results.items() if r}
    # As in test_filter: exact except where a load ran past a truncated frame's end (we reject
    # the packet, as BPF does; libpcap's optimizer may have dropped that load).
    aborted = {i for i, r in results.items() if r is None}
    assert got <= expected and expected - got <= aborted, (sorted(got ^ expected)[:20])
    assert {i for i, p in enumerate(frames, 1) if f.match(p.data, p.wirelen)} == got
    return got


def test_two_hundred_host_terms_match_tcpdump(capture):
    """The issue's case: 200 ``host X or`` terms (4 KB), a SyntaxError before."""
    expr = host_run(200)
    assert len(expr) > 3500
    assert agree(capture, expr)


@pytest.mark.parametrize("expr", [
    host_run(300, "or") + " and tcp",                                 # a run, then a switch of operator
    "not (" + host_run(120) + ") and (" + " or ".join(f"port {p}" for p in range(1, 150)) + ")",
    " or ".join(f"(tcp port {p} and not host 10.0.0.1)" for p in range(40, 240)),
    # alternating operators: each switch is a level (libpcap groups to the left)
    " ".join(f"port {p} {'and' if p % 2 else 'or'}" for p in range(20, 20 + MAX_DEPTH - 10)) + " tcp",
])
def test_long_mixed_expressions_match_tcpdump(capture, expr):
    agree(capture, expr)


def test_cli_with_long_expression_matches_tcpdump(capture):
    tcpdump, path, _frames = capture
    expr = host_run(250)
    r = subprocess.run([sys.executable, "-m", "e2actors", "filter", expr, path], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    printed = {int(x) for x in r.stdout.split()}
    assert printed and printed <= tcpdump_matches(tcpdump, path, expr)


# --- nesting -------------------------------------------------------------------------------------------
def shapes(k: int) -> dict[str, str]:
    """Expressions whose syntax tree is about ``k`` levels deep, one per kind of nesting."""
    alt = "tcp"
    for i in range(k - 1):
        alt = f"port {i} {'and' if i % 2 else 'or'} ({alt})"
    arith = "len"
    for i in range(k - 2):
        arith = f"({arith} {'+' if i % 2 else '*'} len)"
    loads = "1"
    for _ in range(k // 2 - 1):
        loads = f"tcp[{loads}]"
    return {
        "parens": "(" * k + "tcp" + ")" * k,
        "not": "not " * (k - 1) + "tcp",
        "alternation": alt,
        "chain of alternations": " ".join(f"port {i} {'and' if i % 2 else 'or'}" for i in range(k - 1)) + " tcp",
        "arithmetic": arith + " > 1",
        "unary minus": "-" * (k - 2) + "len = 1",
        "tcp[] in tcp[]": loads + " = 1",
        "no-precedence operators": "len" + " % len" * (k - 2) + " = 1",
    }


def deep_stack(n: int, fn):
    """Call ``fn`` from ``n`` frames further down the stack (callers are not always shallow)."""
    return fn() if n == 0 else deep_stack(n - 1, fn)


@pytest.mark.parametrize("kind, compile_", [
    pytest.param(kind, c, id=f"{name}-{kind}")
    for kind in shapes(10) for name, c in (("filter", compile_filter), ("condition", compile_condition))
])
def test_nesting_at_the_bound_compiles_beyond_it_is_a_filter_error(kind, compile_):
    at = shapes(MAX_DEPTH)[kind]
    f = deep_stack(200, lambda: compile_(at))
    frame = bytes(range(256)) * 2
    if compile_ is compile_filter:
        assert f.match(frame, len(frame)) in (True, False)
    for k in (MAX_DEPTH + 2, 1_000):
        expr = shapes(k)[kind]
        with pytest.raises(FilterError) as ei:
            compile_(expr)
        assert f"nested deeper than {MAX_DEPTH} levels" in str(ei.value)
        assert 1 <= ei.value.column <= len(expr)


def test_thousand_nested_parentheses_cli_one_error(tmp_path):
    """The issue's case: 1,000 nested parentheses (a RecursionError before); the message shows the
    part of the expression around the column, not all of it."""
    pcap = tmp_path / "empty.pcap"
    write_numbered(str(pcap), [])
    expr = "(" * 1000 + "tcp" + ")" * 1000
    r = subprocess.run([sys.executable, "-m", "e2actors", "filter", expr, str(pcap)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and f"nested deeper than {MAX_DEPTH} levels at column {MAX_DEPTH + 1}" \
        in r.stderr, r.stderr[:300]
    assert len(r.stderr) < 800


def test_tcpdump_accepts_what_we_refuse_as_too_deep(capture):
    """A documented difference (docs/policies.md): libpcap nests up to about 10,000 levels."""
    tcpdump, path, _frames = capture
    expr = shapes(MAX_DEPTH + 50)["parens"]
    assert tcpdump_matches(tcpdump, path, expr) == tcpdump_matches(tcpdump, path, "tcp")
    with pytest.raises(FilterError):
        compile_filter(expr)
    with pytest.raises(TcpdumpError, match="memory exhausted"):
        tcpdump_matches(tcpdump, path, "(" * 20_000 + "tcp" + ")" * 20_000)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))


def test_very_long_run_compiles_in_bounded_memory():
    """3,000 terms (63 KB): compiled piece by piece, well inside 400 MB of address space (one
    ``compile`` of the whole expression would need about 200 bytes per byte of generated code)."""
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_filter_limits import host_run\n"
        "from e2actors.packet.filter import compile_filter\n"
        "f = compile_filter(host_run(3000))\n"
        "frame = bytes.fromhex('ffffffffffff00112233445508004500001c0001000040110000c6120001c6120002') + bytes(8)\n"
        "print(f.match(frame, len(frame)), f.source.count('def _h'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limit_memory,
                       timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-800:]
    matched, helpers = r.stdout.split()
    assert matched == "True" and int(helpers) > 100


def test_constant_folding_computes_only_the_operation_asked_for():
    """``1 | 0xffffffff`` once also computed ``1 << 0xffffffff`` (a 512 MB integer, seconds of
    CPU) because every operation was evaluated; found by tests/test_fuzz_inputs.py."""
    import tracemalloc

    tracemalloc.start()
    try:
        f = compile_filter("1 | 0xffffffff | 1 | 0xffffffff <= 0xffffffff | 0xffffffff")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak
    assert f.match(bytes(60), 60) is True
