"""Policy and hardware files: parsing, the builder, and every validation error with file and line."""

from __future__ import annotations

import importlib.util
import textwrap

import networkx as nx
import pytest

from e2actors.errors import E2Error
from e2actors.manager.hardware import Hardware
from e2actors.manager.policy import Policy, PolicyError
from e2actors.manager.sizing import check_capacity
from e2actors.nf.pipelet import Pipelet

SEED = "examples/seed/policy.yaml"
SEED_HW = "examples/seed/hardware.yaml"
HAVE_IDS = importlib.util.find_spec("e2actors.nf.builtin.ids") is not None and \
    importlib.util.find_spec("e2actors.nf.builtin.hostfilter") is not None
HAVE_COND = importlib.util.find_spec("e2actors.switch.condition") is not None
need_cond = pytest.mark.skipif(not HAVE_COND, reason="e2actors.switch.condition (domain/meta conditions) not yet merged")

FW = "e2actors.nf.builtin.firewall:Firewall"
CNT = "e2actors.nf.builtin.counter:Counter"
SHAPER = "e2actors.nf.builtin.shaper:Shaper"

GOOD = """\
name: small
nfs:
  fw:    {class: e2actors.nf.builtin.firewall:Firewall}
  count: {class: e2actors.nf.builtin.counter:Counter, min: 2, max: 4}
  shape: {class: e2actors.nf.builtin.shaper:Shaper, config: {rate: 10Mbit}}
classes:
  - {name: web, filter: "tcp port 80", load_pps: 300000}
  - {name: dns, filter: "udp port 53", load_pps: 100k, packet_bytes: 100}
edges:
  - {from: in, to: fw}
  - {from: fw, to: count, when: "tcp", fraction: 0.5}
  - {from: fw.out, to: shape}
  - {from: count, to: out}
  - {from: shape, to: out, class: web}
  - {from: shape, to: drop}
"""


def seed_policy() -> Policy:
    return Policy.load(SEED, check_classes=HAVE_IDS, check_conditions=HAVE_COND)


def load(text: str, **kw) -> Policy:
    return Policy.from_yaml(textwrap.dedent(text), file="p.yaml", **kw)


def error_of(text: str, **kw) -> PolicyError:
    with pytest.raises(PolicyError) as ei:
        load(text, **kw)
    e = ei.value
    assert isinstance(e, E2Error)
    assert e.file == "p.yaml"
    assert str(e).startswith(f"p.yaml:{e.line}")
    return e


def test_good_policy_parses_with_class_defaults():
    p = load(GOOD)
    assert list(p.nfs) == ["fw", "count", "shape"]
    fw = p.nfs["fw"]
    assert fw.cls == FW and fw.affinity == "flow" and fw.cost_pps == 400_000 and fw.ports == ("out",)
    assert p.nfs["count"].min_instances == 2 and p.nfs["count"].max_instances == 4
    assert p.nfs["shape"].config == {"rate": "10Mbit"}
    web, dns = p.classes
    assert (web.load_pps, web.load_bps) == (300_000, 300_000 * 8 * 800)
    assert (dns.load_pps, dns.load_bps) == (100_000, 100_000 * 8 * 100)
    assert [e.label for e in p.edges] == ["in->fw", "fw->count", "fw.out->shape", "count->out", "shape->out",
                                          "shape->drop"]
    assert p.edges[4].classes == ("web",)
    g = p.graph
    assert isinstance(g, nx.DiGraph)
    assert set(g) == {"in", "out", "drop", "fw", "count", "shape"}
    assert len(g.edges["shape", "out"]["edges"]) == 1
    assert g.nodes["fw"]["spec"] is fw
    assert nx.is_directed_acyclic_graph(g)


def test_builder_equals_yaml():
    b = (Policy.builder("small")
         .nf("fw", FW)
         .nf("count", "e2actors.nf.builtin.counter.Counter", min=2, max=4)
         .nf("shape", SHAPER, config={"rate": "10Mbit"})
         .traffic("web", "tcp port 80", load_pps=300000)
         .traffic("dns", "udp port 53", load_pps=100000, packet_bytes=100)
         .edge("in", "fw")
         .edge("fw", "count", "tcp", fraction=0.5)
         .edge("fw.out", "shape")
         .edge("count", "out")
         .edge("shape", "out", cls="web")
         .edge("shape", "drop"))
    built = b.build()
    assert built == load(GOOD)
    assert built.to_dict() == load(GOOD).to_dict()
    assert built.file == "<builder>"


def test_builder_takes_classes_and_reports_without_line():
    from e2actors.nf.builtin.counter import Counter

    p = Policy.builder().nf("c", Counter).traffic("all", "ip", load_pps=1000).edge("in", "c").edge("c", "out").build()
    assert p.nfs["c"].cls == CNT
    with pytest.raises(PolicyError) as ei:
        Policy.builder().nf("c", Counter).traffic("all", "ip", load_pps=1).edge("in", "x").build()
    assert ei.value.file == "<builder>" and ei.value.line == 0 and "unknown NF 'x'" in str(ei.value)


def test_seed_example_loads():
    p = seed_policy()
    assert list(p.nfs) == ["ids", "logger", "parental", "shaper"]
    assert p.nfs["ids"].ports == ("safe", "unsafe") and p.nfs["ids"].input == "bytestream"
    assert p.nfs["ids"].affinity == "flow" and p.nfs["parental"].affinity == "flow"
    assert p.classes[0].filter == "ip or ip6 or vlan"
    assert set(p.graph.successors("ids")) == {"logger", "parental", "shaper"}
    hw = Hardware.load(SEED_HW)
    assert list(hw.servers) == ["s1", "s2"] and hw.port_server("in") == "s1"


@pytest.mark.skipif(not HAVE_IDS, reason="IDS and HostFilter not yet merged")
def test_seed_example_classes_import():
    Policy.load(SEED, check_conditions=HAVE_COND)


# --- every kind of error, with its line --------------------------------------------------------------
def test_unknown_nf_in_edge():
    e = error_of("""\
        nfs:
          fw: {class: e2actors.nf.builtin.firewall:Firewall}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: fw}
          - from: fw
            to: nat
        """)
    assert e.line == 7 and "unknown NF 'nat'" in e.reason


def test_unknown_source_nf():
    e = error_of("""\
        nfs:
          fw: {class: e2actors.nf.builtin.firewall:Firewall}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: fw}
          - {from: ids.safe, to: out}
        """)
    assert e.line == 6 and "unknown NF 'ids'" in e.reason


def test_edge_from_port_the_nf_does_not_have():
    e = error_of("""\
        nfs:
          fw: {class: e2actors.nf.builtin.firewall:Firewall}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: fw}
          - {from: fw.unsafe, to: out}
        """)
    assert e.line == 6 and "has no port 'unsafe'" in e.reason and "ports: out" in e.reason


def test_unknown_port_on_target():
    e = error_of("""\
        nfs:
          fw: {class: e2actors.nf.builtin.firewall:Firewall}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: fw.in}
        """)
    assert e.line == 5 and "unknown port 'in'" in e.reason


def test_declared_ports_must_match_the_class():
    e = error_of("""\
        nfs:
          fw:
            class: e2actors.nf.builtin.firewall:Firewall
            ports: [out, rejected]
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: fw}
        """)
    assert e.line == 4 and "differ from the ports" in e.reason


def test_cycle():
    e = error_of("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
          b: {class: e2actors.nf.builtin.counter:Counter}
          c: {class: e2actors.nf.builtin.counter:Counter}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a}
          - {from: a, to: b}
          - {from: b, to: c}
          - {from: c, to: a}
          - {from: c, to: out}
        """)
    assert e.line in (8, 9, 10) and "cycle" in e.reason and "a -> b -> c -> a" in e.reason.replace("b -> c -> a -> b", "a -> b -> c -> a").replace("c -> a -> b -> c", "a -> b -> c -> a")


def test_unreachable_nf():
    e = error_of("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
          lonely: {class: e2actors.nf.builtin.counter:Counter}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a}
          - {from: a, to: out}
          - {from: lonely, to: out}
        """)
    assert e.line == 3 and "lonely is unreachable" in e.reason


def test_bad_condition_with_its_column():
    text = """\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a}
          - {from: a, to: out, when: "tcp port 80 and and udp"}
        """
    e = error_of(text)
    assert e.line == 6 and "bad condition 'tcp port 80 and and udp'" in e.reason
    assert "at column 17" in e.reason  # the second 'and' within the condition
    line = textwrap.dedent(text).splitlines()[5]
    assert line[e.column - 1:].startswith("and udp")  # the file column points at it too


def test_bad_class_filter():
    e = error_of("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
        classes:
          - name: all
            filter: "tcp prt 80"
            load_pps: 1000
        edges:
          - {from: in, to: a}
        """)
    assert e.line == 5 and "class all: bad condition" in e.reason


@need_cond
def test_domain_and_meta_conditions_with_the_condition_language():
    p = load("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a, when: 'domain youtube.com'}
          - {from: a, to: out, when: 'meta.verdict == "safe"'}
        """)
    assert p.edges[0].when == "domain youtube.com"


def test_domain_condition_can_be_left_unchecked():
    p = load("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter}
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a, when: 'domain youtube.com'}
          - {from: a, to: out}
        """, check_conditions=False)
    assert p.edges[0].when == "domain youtube.com"


def test_class_that_cannot_be_imported():
    text = """\
        nfs:
          a:
            class: e2actors.nf.builtin.nothere:Nope
        classes: [{name: all, filter: ip, load_pps: 1000}]
        edges:
          - {from: in, to: a}
        """
    e = error_of(text)
    assert e.line == 3 and "cannot import class e2actors.nf.builtin.nothere:Nope" in e.reason
    e = error_of(text.replace("nothere:Nope", "firewall:Nope"))
    assert e.line == 3 and "cannot import" in e.reason
    e = error_of(text.replace("e2actors.nf.builtin.nothere:Nope", "collections:OrderedDict"))
    assert "not a Pipelet subclass" in e.reason
    # tolerated when classes are not checked: the description gives the defaults
    p = load(text, check_classes=False)
    assert p.nfs["a"].cls == "e2actors.nf.builtin.nothere:Nope" and p.nfs["a"].ports == ("out",)


def test_load_the_hardware_cannot_carry():
    p = load("""\
        nfs:
          a: {class: e2actors.nf.builtin.counter:Counter, cost_pps: 100000}
          b: {class: e2actors.nf.builtin.counter:Counter, cost_pps: 100000, max: 2}
        classes:
          - {name: all, filter: ip, load_pps: 250000}
        edges:
          - {from: in, to: a}
          - {from: a, to: b, fraction: 0.1}
          - {from: a, to: out}
          - {from: b, to: out}
        """)
    check_capacity(p, Hardware.uniform(1, 4))  # a: 3 cores, b: 1 core at full use
    with pytest.raises(PolicyError) as ei:
        check_capacity(p, Hardware.uniform(1, 3))
    e = ei.value
    assert e.file == "p.yaml" and e.line == 5 and "needs 4 cores even at full use" in e.reason
    with pytest.raises(PolicyError) as ei:
        check_capacity(p.with_load(2_500_000), Hardware.uniform(10, 10))
    assert ei.value.line == 3 and "NF b" in ei.value.reason and "max is 2" in ei.value.reason


@pytest.mark.parametrize("text, line, words", [
    ("nfs: {}\nclasses: [{name: a, filter: ip, load_pps: 1}]\nedges: []\n", 3, "edges"),
    ("nfs:\n  a: {class: x:Y, colour: red}\nclasses: []\n", 2, "unknown key 'colour'"),
    ("nfs:\n  a: {class: x:Y, affinity: sticky}\n", 2, "affinity 'sticky'"),
    ("nfs:\n  a: {class: x:Y}\nclasses:\n  - {name: c, filter: ip}\n", 4, "needs load_pps"),
    ("nfs:\n  a: {class: x:Y}\nclasses:\n  - {name: c, filter: ip, load_pps: lots}\n", 4, "load_pps 'lots'"),
    ("nfs:\n  a: {class: x:Y}\nclasses: [{name: c, load_pps: 1}]\nedges:\n  - {from: in, to: a, fraction: 2}\n",
     5, "fraction"),
    ("nfs:\n  a: {class: x:Y}\nclasses: [{name: c, load_pps: 1}]\nedges:\n  - {from: in, to: a, class: d}\n",
     5, "unknown class 'd'"),
    ("nfs:\n  a: {class: x:Y}\nclasses: [{name: c, load_pps: 1}]\nedges:\n  - {from: out, to: a}\n", 5,
     "is an exit"),
    ("nfs:\n  a: {class: x:Y}\nclasses: [{name: c, load_pps: 1}]\nedges:\n"
     "  - {from: in, to: a, fraction: 0.7}\n  - {from: in, to: out, fraction: 0.6}\n", 6, "add up to 1.3"),
    ("nfs:\n  a: [oops\n", 3, "not valid YAML"),
])
def test_more_errors(text, line, words):
    with pytest.raises(PolicyError) as ei:
        Policy.from_yaml(text, "p.yaml", check_classes=False)
    assert ei.value.line == line, str(ei.value)
    assert words in ei.value.reason


def test_policy_file_errors_name_the_path(tmp_path):
    f = tmp_path / "pol.yaml"
    f.write_text("nfs:\n  a: {class: x:Y}\nclasses: [{name: c, load_pps: 1}]\nedges:\n  - {from: in, to: b}\n")
    with pytest.raises(PolicyError) as ei:
        Policy.load(f, check_classes=False)
    assert str(ei.value).startswith(f"{f}:5:")
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.yaml")


def test_hardware_file_and_errors():
    hw = Hardware.from_yaml(textwrap.dedent("""\
        servers:
          - {name: a, cores: 8, nic: 10Gbit, address: "10.0.0.1:7400"}
          - {name: b, cores: 4}
        ports:
          in: b
          out: {server: a, kind: afpacket, iface: veth1}
        """), "hw.yaml")
    assert hw.servers["a"].nic_bps == 10e9 and hw.servers["a"].address == "10.0.0.1:7400"
    assert hw.servers["b"].nic_bps == float("inf") and hw.total_cores == 12
    assert hw.port_server("in") == "b"
    assert hw.ports["out"].kind == "afpacket" and hw.ports["out"].params == {"iface": "veth1"}
    for text, line, words in [
        ("servers:\n  - {name: a, cores: many}\n", 2, "cores"),
        ("servers:\n  - {name: a, cores: 2}\nports:\n  in: z\n", 4, "unknown server 'z'"),
        ("servers:\n  - {name: a, cores: 2, nic: fast}\n", 2, "nic"),
        ("servers:\n  - {name: a, cores: 2}\n  - {name: a, cores: 2}\n", 3, "twice"),
        ("servers:\n  - {name: a, cores: 2, address: nowhere}\n", 2, "host:port"),
    ]:
        with pytest.raises(PolicyError) as ei:
            Hardware.from_yaml(text, "hw.yaml")
        assert ei.value.file == "hw.yaml" and ei.value.line == line and words in ei.value.reason, str(ei.value)


# --- NF configs are checked at plan time, with the line of the key at fault ----------------------
def _one_nf(cls: str, config: str) -> str:
    body = textwrap.indent(textwrap.dedent(config), "      ")
    return ("name: cfg\nnfs:\n  nf:\n"
            f"    class: {cls}\n"
            "    config:\n"
            f"{body}"
            "classes:\n  - {name: all, filter: ip, load_pps: 1000}\n"
            "edges:\n  - {from: in, to: nf}\n  - {from: nf, to: out}\n")


@pytest.mark.parametrize("cls, config, line, words", [
    (FW, "rules: ['allow tcp']\ndefault: alow\n", 7, ["config 'default'", "'allow', 'deny'", "alow"]),
    (FW, "rules: ['allow tcp dst prt 80']\n", 6, ["config 'rules'", "rule 1", "column"]),
    (FW, "rules: ['permit tcp']\n", 6, ["config 'rules'", "action must be allow or deny"]),
    (SHAPER, "rate: 10Mbit\nqueue: many\n", 7, ["config 'queue'", "an integer, not 'many'"]),
    (SHAPER, "rate: fast\n", 6, ["rate"]),
    (SHAPER, "classes: [{rate: 1Mbit}]\n", 6, ["config 'classes'", "needs a filter"]),
    ("e2actors.nf.builtin.nat:NAT", "internal: 10.0.0.0/8\n", 5, ["config 'external'", "missing"]),
    ("e2actors.nf.builtin.nat:NAT", "external: 198.18.0.1\nports: [70000, 80000]\n", 7, ["config 'ports'", "1-65535"]),
    ("e2actors.nf.builtin.logger:Logger", "snaplen: 0\n", 6, ["config 'snaplen'", "at least 1"]),
    ("e2actors.nf.builtin.legacy:Legacy", "cmd: \"cat 'unclosed\"\n", 6, ["config 'cmd'", "command line"]),
])
def test_nf_config_errors_have_the_line_of_the_key(cls, config, line, words):
    e = error_of(_one_nf(cls, config))
    assert e.line == line, str(e)
    for w in words:
        assert w in str(e), str(e)


@pytest.mark.skipif(not HAVE_IDS, reason="IDS not available")
def test_ids_inline_rules_are_checked_at_plan_time():
    e = error_of(_one_nf("e2actors.nf.builtin.ids:IDS", """\
        rules: |
          alert tcp any any -> any 80 (msg:"x"; content:"a"; sid:1;)
          alert tcp any any -> any 80 (msg:"y"; content:"|zz|"; sid:2;)
        """))
    assert e.line == 6 and "config 'rules'" in str(e), str(e)
    e = error_of(_one_nf("e2actors.nf.builtin.ids:IDS", "matcher: magic\n"))
    assert e.line == 6 and "config 'matcher'" in str(e), str(e)


@pytest.mark.skipif(not HAVE_IDS, reason="IDS not available")
def test_an_ids_rules_file_next_to_the_policy_is_checked_at_plan_time_with_the_rules_line(tmp_path):
    # The rule file is read by the planner (it sits next to the policy): its bad rule is named by
    # the rule file's own FILE:LINE, through the policy's config key.
    (tmp_path / "bad.rules").write_text('alert tcp any any -> any 80 (msg:"ok"; content:"a"; sid:1;)\n'
                                        'alert tcp any any -> any 80 (msg:"bad"; content:"|zz|"; sid:2;)\n')
    pol = tmp_path / "policy.yaml"
    pol.write_text(_one_nf("e2actors.nf.builtin.ids:IDS", "rules: bad.rules\n"))
    with pytest.raises(PolicyError) as ei:
        Policy.load(pol)
    assert ei.value.line == 6 and "config 'rules'" in str(ei.value) and "bad.rules:2" in str(ei.value), str(ei.value)


def test_a_pipelet_with_a_plain_def_process_is_refused_when_its_class_is_made():
    with pytest.raises(TypeError, match=r"Plain\.process must be 'async def process\(\.\.\.\)'"):
        class Plain(Pipelet):
            def process(self, batch):  # type: ignore[override]
                return None


def test_good_configs_and_user_classes_pass_the_plan_time_check():
    Policy.from_yaml(_one_nf(FW, "rules: ['allow tcp dst port 80', {deny: udp}]\ndefault: allow\n"))
    Policy.from_yaml(_one_nf(SHAPER, "rate: 10Mbit\nclasses: [{filter: 'udp', rate: 1Mbit}]\n"))


def test_a_subclass_that_overrides_setup_is_not_run_at_plan_time(tmp_path, monkeypatch):
    # A user's subclass of a pure built-in may open files in its setup: it must not run at plan time.
    (tmp_path / "sidefx.py").write_text(textwrap.dedent(f"""\
        from e2actors.nf.builtin.firewall import Firewall

        class Noisy(Firewall):
            async def setup(self, config):
                open({str(tmp_path / 'touched')!r}, "w").close()
                await super().setup(config)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    Policy.from_yaml(_one_nf("sidefx:Noisy", "rules: ['permit tcp']\n"))  # (setup would refuse it)
    assert not (tmp_path / "touched").exists()
    # Its inherited schema is still checked.
    e = error_of(_one_nf("sidefx:Noisy", "defualt: allow\n"))
    assert e.line == 6 and "unknown key" in str(e), str(e)


def test_a_typed_config_schema_is_checked_at_plan_time_and_given_to_the_instance(tmp_path, monkeypatch):
    (tmp_path / "typed.py").write_text(textwrap.dedent("""\
        from dataclasses import dataclass, field
        from typing import Literal
        from e2actors import Pipelet

        @dataclass
        class SamplerConfig:
            every: int
            mode: Literal["keep", "drop"] = "keep"
            hosts: list[str] = field(default_factory=list)

        class Sampler(Pipelet):
            config_schema = SamplerConfig

            async def setup(self, config):
                self.every = self.settings.every
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for config, line, words in [("every: often\n", 6, "config 'every': an integer, not 'often'"),
                                ("mode: keep\n", 5, "config 'every': missing"),
                                ("every: 2\nmode: both\n", 7, "config 'mode': one of 'keep', 'drop', not 'both'"),
                                ("every: 2\nhosts: [a, 3]\n", 7, "config 'hosts[1]': text, not 3")]:
        e = error_of(_one_nf("typed:Sampler", config))
        assert (e.line, words in str(e)) == (line, True), str(e)
    from e2actors.testing import run_pipelet
    import typed

    assert run_pipelet(typed.Sampler, [], config={"every": 3}).pipelet.every == 3
