"""Hypothesis fuzzing of the two languages operators and peers hand us: policy/hardware YAML and
filter expressions.

- Policy and hardware YAML, garbled from real files or built from the policy vocabulary (with
  anchors, aliases and merge keys): loading either succeeds or raises a PolicyError naming the file
  and a line, never another exception.
- Filter expressions from a grammar that reaches long runs, deep nesting (past MAX_DEPTH),
  arithmetic and garbage: compiling either succeeds or raises FilterError; a compiled filter never
  raises on random bytes; and, with tcpdump installed, acceptance agrees with ``tcpdump -d`` except
  where we refuse on purpose (unsupported syntax, nesting past our bound: see docs/policies.md).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2actors.errors import FilterError, PolicyError
from e2actors.manager.hardware import Hardware
from e2actors.manager.policy import Policy
from e2actors.packet.filter import MAX_DEPTH, compile_filter

sys.path.insert(0, os.path.dirname(__file__))
from conftest import need_tool  # noqa: E402
from filter_frames import generated_frames, write_numbered  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [
    (ROOT / "examples/seed/policy.yaml").read_text(),
    (ROOT / "examples/seed/hardware.yaml").read_text(),
    (ROOT / "docs/policies.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0],   # web.yaml
]


def load_each(text: str) -> None:
    """Load ``text`` as a policy and as a hardware file: success, or a PolicyError at a line."""
    lines = text.count("\n") + 2
    for load in (lambda: Policy.from_yaml(text, "fuzz.yaml"), lambda: Hardware.from_yaml(text, "fuzz.yaml")):
        try:
            load()
        except PolicyError as e:
            assert e.file == "fuzz.yaml" and 1 <= e.line <= lines, (str(e), text)


# --- policy YAML ---------------------------------------------------------------------------------------
SNIPPETS = [":", "- ", " ", "\n", "  ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b", "<<: *a\n", "? ",
            "!!int ", "!!binary ", "!!set ", "!!python/object:os.system ", "!!float ", "!!timestamp ",
            "'", '"', "#", "|\n", ">\n", "---\n", "...\n", "%YAML 1.1\n---\n", "\t", "0x", "1e9999", ".nan",
            "~", "null", "yes", "2001-02-30", "nfs", "edges", "classes", "servers", "ports", "from", "to", "in",
            "out", "drop", "fraction", "load_pps", "class", "when", "filter", "config", "cores", "(((",
            "e2actors.nf.builtin.counter:Counter", "\x00", "\ufeff", "\u2028", "\x85", "é", "\x7f"]


@st.composite
def garbled(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.integers(0, 2))
        if op == 0:
            text = text[:i] + draw(st.sampled_from(SNIPPETS)) + text[i:]
        elif op == 1:
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        else:
            j = draw(st.integers(0, len(text)))
            text = text[:i] + text[j:j + draw(st.integers(1, 60))] + text[i:]
    return text


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbled())
def test_garbled_files_give_policy_errors_with_lines(text):
    load_each(text)


CLASSES = ["e2actors.nf.builtin.counter:Counter", "e2actors.nf.builtin.ids:IDS", "e2actors.nf.builtin.shaper:Shaper",
           "e2actors.nf.builtin.firewall:Firewall", "e2actors.nf.builtin.hostfilter:HostFilter", "x:Y", "nope"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**6), st.floats(allow_nan=True), st.sampled_from(
    ["", "x", "in", "out", "drop", "a", "b", "a.out", "b.safe", "ids.unsafe", "tcp", "ip or", "domain x.com",
     "meta.k == 'v'", "10Gbit", "1M", "-5", "flow", "bytestream", "packets", "100k", *CLASSES]), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.sampled_from(["a", "b", "rules", "rate",
                                                                                      "pcap", "block", "k"]),
                                                     inner, max_size=3)), max_leaves=6)


def record(keys: list[str]):
    return st.dictionaries(st.sampled_from(keys), VALUES, max_size=len(keys))


NF = st.one_of(st.sampled_from(CLASSES), record(["class", "ports", "input", "affinity", "cost_pps", "config",
                                                 "min_instances", "max_instances", "bogus"]))
POLICY = st.fixed_dictionaries({}, optional={
    "name": SCALARS,
    "nfs": st.one_of(VALUES, st.dictionaries(st.sampled_from(["a", "b", "ids", "in", "c.d"]), NF, max_size=3)),
    "classes": st.one_of(VALUES, st.lists(record(["name", "filter", "load_pps", "load_bps", "packet_bytes"]),
                                          max_size=2)),
    "edges": st.one_of(VALUES, st.lists(record(["from", "to", "when", "fraction", "class", "name"]), max_size=4)),
    "servers": st.lists(record(["name", "cores", "nic", "address"]), max_size=3),
    "ports": VALUES,
})


def with_aliases(text: str, draw) -> str:
    """Anchor the first value of a few lines and alias it from others (YAML's sharing)."""
    lines = text.splitlines()
    spots = [i for i, ln in enumerate(lines) if ": " in ln and not ln.rstrip().endswith(":")]
    if len(spots) < 2:
        return text
    a = draw(st.sampled_from(spots))
    key, _, val = lines[a].partition(": ")
    lines[a] = f"{key}: &x {val}"
    for b in draw(st.lists(st.sampled_from(spots), max_size=3)):
        if b > a:
            k2, _, _ = lines[b].partition(": ")
            lines[b] = f"{k2}: *x"
    return "\n".join(lines) + "\n"


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_policies_give_policy_errors_with_lines(data):
    doc = data.draw(POLICY)
    text = yaml.safe_dump(doc, default_flow_style=data.draw(st.sampled_from([None, False, True])))
    if data.draw(st.booleans()):
        text = with_aliases(text, data.draw)
    load_each(text)


# --- filter expressions --------------------------------------------------------------------------------
ATOMS = ["tcp", "udp", "icmp", "ip", "ip6", "arp", "vlan", "vlan 10", "port 80", "src port 53", "tcp dst port 22",
         "portrange 10-20", "host 10.0.0.1", "src host 198.18.0.1", "net 10.0.0.0/8", "net 198.18",
         "host 2001:db8::1", "ether src 00:11:22:33:44:55", "ether proto 0x86dd", "ip proto 17", "less 60",
         "greater 100", "broadcast", "multicast", "ip multicast", "len > 70", "tcp[tcpflags] & tcp-syn != 0",
         "ip[8] < 64", "udp[2:2] = 53", "icmp[icmptype] = icmp-echo", "ether[0] & 1 = 1", "ip[100] = 1",
         "tcp[tcp[0] & 3] = 1", "ip[2:2] / ip[1] = 0", "(1 << ip[0]) = 0", "ether[len - 1] = 0", "-len = 1",
         "len % 7 ^ 3 = 1", "1 | 0xffffffff = 0xffffffff", "80", "10.0.0.2", "not 22"]
# some garbage tcpdump refuses too
JUNK = ["and", "or", "not", "(", ")", "[", "]", "=", "+", "tcp[", "port", "host", "1-2", "$", "@", "0x1g", "99999999999"]


def arith(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(["len", "1", "0", "ip[0]", "tcp[13]", "ether[12:2]", "0xffffffff"])
    if depth <= 0:
        return leaf
    sub = arith(depth - 1)
    return st.one_of(leaf, st.builds(lambda a, op, b: f"{a} {op} {b}", sub, st.sampled_from(
        ["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]), sub), st.builds(lambda a: f"({a})", sub),
        st.builds(lambda a: f"-{a}", sub), st.builds(lambda p, a: f"{p}[{a}]", st.sampled_from(["ip", "tcp", "ether"]),
                                                     sub))


@st.composite
def expressions(draw, depth: int = 4, runs: tuple[int, ...] = (2, 3, 5, 20, 100)) -> str:
    """An expression from the grammar (and some junk); ``runs``: lengths of ``and``/``or`` runs."""
    kind = draw(st.integers(0, 9 if depth > 0 else 1))
    if kind == 0:
        return draw(st.sampled_from(ATOMS))
    if kind == 1:
        return f"{draw(arith(2))} {draw(st.sampled_from(['=', '!=', '<', '>', '<=', '>=']))} {draw(arith(1))}"
    if kind == 2:
        return f"not {draw(expressions(depth - 1, runs))}"
    if kind == 3:
        return f"({draw(expressions(depth - 1, runs))})"
    # runs take their terms from a seeded generator: hundreds of hypothesis draws per example
    # would cost more than compiling the expression
    if kind in (4, 5):   # a run: short or long
        n = draw(st.sampled_from(runs))
        op = draw(st.sampled_from(["and", "or", "&&", "||"]))
        rnd = random.Random(draw(st.integers(0, 2**32)))
        return f" {op} ".join(rnd.choice(ATOMS) for _ in range(n))
    if kind == 6:        # alternating operators (each switch nests)
        rnd = random.Random(draw(st.integers(0, 2**32)))
        return " ".join(f"{rnd.choice(ATOMS)} {'and' if i % 2 else 'or'}"
                        for i in range(draw(st.integers(2, 30)))) + " tcp"
    if kind == 7:        # deep: around and beyond the bound
        k = draw(st.sampled_from([MAX_DEPTH // 2, MAX_DEPTH - 1, MAX_DEPTH + 1, 3 * MAX_DEPTH]))
        shape = draw(st.sampled_from(["(", "not ", "!"]))
        return shape * k + draw(expressions(0)) + (")" * k if shape == "(" else "")
    if kind == 8:        # junk spliced in
        e = draw(expressions(depth - 1, runs))
        i = draw(st.integers(0, len(e)))
        return e[:i] + " " + draw(st.sampled_from(JUNK)) + " " + e[i:]
    op = draw(st.sampled_from(["and", "or"]))
    return f"{draw(expressions(depth - 1, runs))} {op} {draw(expressions(depth - 1, runs))}"


FRAMES = [p.data for p in generated_frames()[::40]]


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), st.lists(st.binary(max_size=96), max_size=4))
def test_expressions_compile_or_raise_filter_error_and_never_raise_on_packets(expr, packets):
    try:
        f = compile_filter(expr)
    except FilterError as e:
        assert 0 <= e.column <= len(expr) + 1
        return
    for data in packets + FRAMES:
        assert f.match(data, len(data)) in (True, False)
        assert f.evaluate(data, len(data)) in (True, False, None)


# Refusals of ours that are documented choices: libpcap accepts these.
OUR_CHOICES = ("unsupported", f"nested deeper than {MAX_DEPTH} levels", "name resolution")


@pytest.fixture(scope="module")
def empty_capture(tmp_path_factory):
    tcpdump = need_tool("tcpdump")
    path = str(tmp_path_factory.mktemp("fuzz") / "empty.pcap")
    write_numbered(path, [])
    return tcpdump, path


@settings(max_examples=120, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(expressions(depth=3, runs=(2, 3, 8)))   # libpcap's optimizer takes minutes on long runs
def test_acceptance_agrees_with_tcpdump(empty_capture, expr):
    """Both compile it, or both refuse it (tcpdump -d over an Ethernet capture)."""
    tcpdump, path = empty_capture
    r = subprocess.run([tcpdump, "-d", "-r", path, "--", expr], capture_output=True, text=True, timeout=120)
    try:
        compile_filter(expr)
        ours = None
    except FilterError as e:
        ours = str(e)
    if r.returncode == 0 or "expression rejects all packets" in r.stderr:   # compiled, to "reject"
        assert ours is None or any(w in ours for w in OUR_CHOICES), (expr, ours)
    else:
        assert ours is not None, (expr, r.stderr.strip().splitlines()[-1:])
