"""Routing tables for the running example, profiling, and ``e2actors plan``."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest

import e2actors.manager.plancli  # noqa: F401  (registers ``plan`` until cli.py loads it)
from e2actors.cli import main
from e2actors.manager.hardware import Hardware
from e2actors.manager.plan import make_plan
from e2actors.manager.policy import Policy
from e2actors.manager.profile import profile
from e2actors.manager.routing import routes
from e2actors.switch.table import GroupSpec, Route, SwitchTable
from tests.nfkit import tcp_pkt, udp_pkt

SEED, SEED_HW = "examples/seed/policy.yaml", "examples/seed/hardware.yaml"
HAVE_IDS = importlib.util.find_spec("e2actors.nf.builtin.ids") is not None and \
    importlib.util.find_spec("e2actors.nf.builtin.hostfilter") is not None
HAVE_COND = importlib.util.find_spec("e2actors.switch.condition") is not None
CHECK_FLAGS = ([] if HAVE_IDS else ["--no-check-classes"]) + ([] if HAVE_COND else ["--no-check-conditions"])


def seed_plan(solver: str = "heuristic"):
    policy = Policy.load(SEED, check_classes=HAVE_IDS, check_conditions=HAVE_COND)
    return make_plan(policy, Hardware.load(SEED_HW), solver=solver)


def test_seed_sizing_and_placement():
    plan = seed_plan("milp")
    assert plan.sizing.instances == {"ids": 4, "logger": 1, "parental": 1, "shaper": 2}
    assert plan.placement.optimal is True
    assert plan.inter_server_pps == pytest.approx(500_000)
    assert plan.total_pps == pytest.approx(400_000 + 20_000 + 100_000 + 280_000 + 100_000 + 280_000)
    use = plan.server_use()
    assert use["s1"]["used"] == 4 and use["s2"]["used"] == 4
    assert seed_plan().inter_server_pps == pytest.approx(500_000)  # the heuristic finds the optimum


def test_seed_switch_tables():
    plan = seed_plan()
    tables = plan.tables(version=3)
    assert set(tables) == {"s1", "s2"}
    t1, t2 = tables["s1"], tables["s2"]
    assert isinstance(t1, SwitchTable) and t1.version == 3 and t1.server == "s1"
    assert [p.name for p in t1.ports] == ["in", "out"] and t2.ports == ()
    assert t1.port_servers == {"in": "s1", "out": "s1"} == t2.port_servers
    assert t1.routes == t2.routes and t1.groups == t2.groups
    assert list(t1.routes) == [
        Route("port:in", "ip or ip6 or vlan", "nf:ids", "in->ids"),
        Route("nf:ids.unsafe", "", "nf:logger", "ids.unsafe->logger"),
        Route("nf:ids.safe", "domain youtube.com", "nf:parental", "ids.safe->parental"),
        Route("nf:ids.safe", "", "nf:shaper", "ids.safe->shaper"),
        Route("nf:parental.out", "", "port:out", "parental->out"),
        Route("nf:parental.blocked", "", "port:out", "parental->out"),
        Route("nf:shaper.out", "", "port:out", "shaper->out"),
        Route("nf:logger.out", "", "drop", "logger.out->end"),
    ]
    groups = {g.nf: g for g in t1.groups}
    ids = groups["ids"]
    assert isinstance(ids, GroupSpec)
    assert [m.instance for m in ids.members] == ["ids#1", "ids#2", "ids#3", "ids#4"]
    assert {m.instance: m.server for m in ids.members} == {i: plan.assignment[i] for i in plan.instances_of("ids")}
    assert ids.affinity == "flow" and ids.input == "bytestream" and ids.ports == ("safe", "unsafe")
    assert ids.pipelet == "e2actors.nf.builtin.ids:IDS" and ids.config == {"rules": "rules/example.rules"}
    assert groups["parental"].affinity == "flow" and not groups["shaper"].inline
    assert all(m.state == "running" and m.ref is None for g in t1.groups for m in g.members)


def test_routes_with_classes_and_inline():
    p = (Policy.builder()
         .nf("fw", "e2actors.nf.builtin.firewall:Firewall")
         .nf("cnt", "e2actors.nf.builtin.counter:Counter", inline=True)
         .traffic("web", "tcp port 80", load_pps=1000)
         .traffic("dns", "udp port 53", load_pps=1000)
         .edge("in", "fw", "not host 10.0.0.1")
         .edge("in", "cnt", cls="dns")
         .edge("fw", "cnt", cls="web")
         .edge("fw", "drop")
         .edge("cnt", "out")
         .build())
    rs = routes(p)
    assert rs[0] == Route("port:in", "((tcp port 80) or (udp port 53)) and (not host 10.0.0.1)", "nf:fw",
                          "in->fw")
    assert rs[1] == Route("port:in", "udp port 53", "nf:cnt", "in->cnt")
    assert rs[2] == Route("nf:fw.out", "tcp port 80", "nf:cnt", "fw->cnt")
    assert rs[3] == Route("nf:fw.out", "", "drop", "fw->drop")
    plan = make_plan(p, Hardware.uniform(2, 2))
    g = {x.nf: x for x in plan.tables()["s1"].groups}
    assert g["cnt"].inline and not g["fw"].inline


def test_profile_measures_edge_shares():
    # 6 TCP packets and 2 UDP; the firewall drops UDP; from fw, port-80 traffic goes to cnt
    p = (Policy.builder()
         .nf("fw", "e2actors.nf.builtin.firewall:Firewall", config={"rules": ["allow tcp"], "default": "deny"})
         .nf("cnt", "e2actors.nf.builtin.counter:Counter")
         .traffic("all", "ip", load_pps=8000)
         .edge("in", "fw")
         .edge("fw", "cnt", "tcp port 80")
         .edge("fw", "out")
         .edge("cnt", "out")
         .build())
    pkts = [tcp_pkt("198.18.0.1", "198.19.0.1", 40000 + i, 80 if i < 4 else 443, "S", ts=1 + i / 100) for i in range(6)]
    pkts += [udp_pkt("198.18.0.1", "198.19.0.1", 5000 + i, 53, b"q", ts=2 + i) for i in range(2)]
    f = profile(p, pkts)
    assert f[("all", 0)] == 1.0
    assert f[("all", 1)] == pytest.approx(4 / 8)
    assert f[("all", 2)] == pytest.approx(2 / 8)
    assert f[("all", 3)] == 1.0
    plan = make_plan(p, fractions=f)
    assert plan.sizing.load_pps["cnt"] == pytest.approx(4000)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["plan", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_table(capsys):
    rc, out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, *CHECK_FLAGS)
    assert rc == 0, err
    assert re.search(r"ids\s+400,000\s+150,000\s+4\s+67%", out)
    assert re.search(r"s1\s+4/4\s+", out) and "[ports: in, out]" in out
    assert "traffic crossing servers: 500,000 pps of 1,180,000 pps" in out


def test_cli_json_and_all_solvers(capsys):
    rc, out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--json", "--solver", "all", "--load", "200k",
                           *CHECK_FLAGS)
    assert rc == 0, err
    d = json.loads(out)
    for key in ("sizing", "placement", "servers", "instance_edges", "inter_server_pps", "total_pps", "solvers"):
        assert key in d
    assert d["sizing"] == {"ids": 2, "logger": 1, "parental": 1, "shaper": 1}
    assert d["servers"] == {"s1": 4, "s2": 4}
    assert d["placement"]["in"] == "s1" and set(d["placement"]) >= {"ids#1", "ids#2", "shaper#1"}
    assert ["in", "ids#1", 100000.0] in d["instance_edges"]
    assert all(len(e) == 3 for e in d["instance_edges"])
    assert d["total_pps"] == pytest.approx(sum(e[2] for e in d["instance_edges"]))
    assert set(d["solvers"]) == {"heuristic", "milp", "random", "first-fit"}
    assert d["solvers"]["milp"]["optimal"] is True
    assert all({"inter_server_pps", "seconds", "optimal"} <= set(r) for r in d["solvers"].values())
    assert d["inter_server_pps"] == min(r["inter_server_pps"] for r in d["solvers"].values())


def test_cli_dot_parses(capsys, tmp_path):
    """The DOT text parses: every statement is a cluster, attribute, node or edge statement, every
    edge joins declared nodes, and each server's cluster holds exactly its instances."""
    dot = tmp_path / "plan.dot"
    rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--dot", str(dot), *CHECK_FLAGS)
    assert rc == 0, err
    plan = seed_plan()
    q = r'"(?:[^"\\]|\\.)*"'
    clusters: dict[str, set[str]] = {}
    current = None
    edges = []
    for line in dot.read_text().splitlines()[1:-1]:
        line = line.strip()
        if m := re.fullmatch(r"subgraph cluster_\d+ \{", line):
            current = set()
        elif m := re.fullmatch(rf"label=({q}); style=rounded; color=gray50;", line):
            clusters[m.group(1).strip('"').split()[0]] = current
        elif line == "}":
            current = None
        elif m := re.fullmatch(rf"({q})( \[[^\]]*\])?;", line):
            current.add(m.group(1).strip('"'))
        elif m := re.fullmatch(rf"({q}) -> ({q}) \[label={q}(, color=red, penwidth=2)?\];", line):
            edges.append((m.group(1).strip('"'), m.group(2).strip('"'), bool(m.group(3))))
        else:
            assert re.fullmatch(r"(rankdir=LR|node \[.*\]|label=" + q + ");", line), line
    assert clusters == {s: set(plan.placement.on(s)) for s in ("s1", "s2")}
    declared = set().union(*clusters.values())
    assert len(edges) == len(plan.graph.edges)
    for u, v, red in edges:
        assert u in declared and v in declared
        assert red == (plan.assignment[u] != plan.assignment[v])


def test_cli_dot_text_shape(capsys, tmp_path):
    dot = tmp_path / "plan.dot"
    rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--dot", str(dot), *CHECK_FLAGS)
    assert rc == 0, err
    text = dot.read_text()
    assert text.startswith("digraph plan {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    assert '"in" -> "ids#1"' in text and 'label="s1 (4/4 cores)"' in text
    if shutil.which("dot"):
        import subprocess

        r = subprocess.run(["dot", "-Tsvg", str(dot)], capture_output=True)
        assert r.returncode == 0 and b"<svg" in r.stdout


def test_cli_png(capsys, tmp_path, monkeypatch):
    png = tmp_path / "plan.png"
    if shutil.which("dot"):
        rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--png", str(png), *CHECK_FLAGS)
        assert rc == 0, err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--png", str(png), *CHECK_FLAGS)
    assert rc == 2 and "Graphviz" in err and "apt-get install graphviz" in err


def test_cli_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nfs:\n  a: {class: e2actors.nf.builtin.counter:Counter}\n"
                   "classes: [{name: c, filter: ip, load_pps: 1000}]\nedges:\n  - {from: in, to: b}\n")
    rc, out, err = run_cli(capsys, str(bad))
    assert rc == 2 and f"{bad}:5:" in err and "unknown NF 'b'" in err and out == ""
    rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--solver", "magic", *CHECK_FLAGS)
    assert rc == 2 and "unknown solver" in err
    rc, _out, err = run_cli(capsys, SEED, "--hardware", SEED_HW, "--load", "50M", *CHECK_FLAGS)
    assert rc == 2 and "even at full use" in err and "policy.yaml:" in err


def test_profile_learns_domains_and_config_paths_from_anywhere(tmp_path, monkeypatch):
    """Profiling the shipped traffic from another directory: the IDS finds its rules next to the
    policy, and youtube.com flows take the parental-control edge as a whole."""
    from pathlib import Path

    from e2actors.manager.policy import Policy
    from e2actors.manager.profile import profile

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    pol = Policy.load(root / "examples" / "seed" / "policy.yaml")
    fr = profile(pol, root / "examples" / "seed" / "traffic.pcap")
    share = {pol.edges[i].name or f"{pol.edges[i].source}->{pol.edges[i].target}": f for (_c, i), f in fr.items()}
    parental = [f for name, f in share.items() if "parental" in name and "out" not in name]
    assert parental and 0.05 < parental[0] < 0.6, share
