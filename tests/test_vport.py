"""Virtual-port NFs, the pure parts (no root, no event loop): the config, matching frames that come
back to the packets that went in, the EVE log reader, and the policy's ``kind: vport``.

The end-to-end tests with real programs in network namespaces are in tests/test_vport_netns.py.
"""

from __future__ import annotations

import collections
import os
import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.manager.policy import Policy, PolicyError
from e2actors.nf.vport import VPORT_CLASS, VPort, VPortConfig, VPortConfigError
from e2actors.nf.vport.config import expand
from e2actors.nf.vport.eve import EveTail, count_event
from e2actors.nf.vport.inflight import InFlight, frame_key
from e2actors.packet.build import ether, ipv4, tcp, udp
from e2actors.packet.packet import Packet

IPS = {"command": "suricata -c {dir}/suricata.yaml --af-packet -l {dir}",
       "interfaces": {"in0": {"side": "client", "port": "safe"}, "out0": {"side": "server", "port": "safe"}},
       "unreturned": "unsafe", "ready": {"log": "Engine started", "timeout": 60}, "eve": "eve.json"}


# --- the config -------------------------------------------------------------------------------------
def test_config_of_an_inline_ips() -> None:
    vc = VPortConfig.parse(IPS)
    assert vc.ports == ("safe", "unsafe")
    assert vc.command == ("suricata", "-c", "{dir}/suricata.yaml", "--af-packet", "-l", "{dir}")
    assert vc.writer("client").name == "in0" and vc.writer("server").name == "out0"
    assert vc.ready[0].kind == "log" and vc.ready_timeout == 60
    assert vc.programs() == [("suricata", "command")]
    assert vc.program_name == "suricata"
    assert VPort.ports_for(IPS) == ("safe", "unsafe")


def test_interface_lists_and_defaults() -> None:
    one = VPortConfig.parse({"command": "zeek -i eth0", "interfaces": ["eth0"]})
    assert [(i.name, i.side, i.port) for i in one.interfaces] == [("eth0", "both", "out")]
    assert one.writer("client") is one.writer("server")
    two = VPortConfig.parse({"setup": ["ip link add br0 type bridge"], "interfaces": ["in0", "out0"]})
    assert [(i.name, i.side) for i in two.interfaces] == [("in0", "client"), ("out0", "server")]
    assert two.command is None and two.ports == ("out",) and two.program_name == "ip"
    tap = VPortConfig.parse({"command": ["zeek", "-i", "eth0"], "interfaces": {"eth0": {"port": None}},
                             "unreturned": "consume"})
    assert tap.ports == ("out",) and tap.interfaces[0].port is None
    proxy = VPortConfig.parse({"command": "nginx", "interfaces": {
        "c": {"side": "client", "meta": {"reverse": "in"}}, "s": {"side": "server"}}})
    assert dict(proxy.interfaces[0].meta) == {"reverse": "in"}


@pytest.mark.parametrize("config, key, words", [
    ({"command": "x"}, "interfaces", "needed"),
    ({"interfaces": ["a", "b"]}, "command", "needs a command"),
    ({"command": "x", "interfaces": {"a": {"side": "client"}, "b": {"side": "client"}}}, "interfaces",
     "exactly one interface must take client-side"),
    ({"command": "x", "interfaces": {"a": {"side": "client"}}}, "interfaces", "server-side"),
    ({"command": "x", "interfaces": {"a": {"side": "left"}}}, "interfaces", "side 'left'"),
    ({"command": "x", "interfaces": {"averyveryverylongname": {}}}, "interfaces", "not an interface name"),
    ({"command": "x", "interfaces": {"lo": {}}}, "interfaces", "not an interface name"),
    ({"command": "x", "interfaces": {"a": {"colour": 1}}}, "interfaces", "unknown option 'colour'"),
    ({"command": "x", "interfaces": {"a": {"port": "a.b"}}}, "interfaces", "port name"),
    ({"command": "x", "interfaces": ["a"], "speed": 3}, "speed", "unknown key"),
    ({"command": "x", "interfaces": ["a"], "ready": {"log": "("}}, "ready", "bad regular expression"),
    ({"command": "x", "interfaces": ["a"], "ready": {"ping": 1}}, "ready", "unknown check 'ping'"),
    ({"command": "x", "interfaces": ["a"], "ready": {"file": "p", "timeout": -1}}, "ready", "positive"),
    ({"command": "x", "interfaces": ["a"], "mtu": 20}, "mtu", "68 to 65535"),
    ({"command": "x", "interfaces": ["a"], "window": 0}, "window", "positive integer"),
    ({"command": "'unclosed", "interfaces": ["a"]}, "command", "cannot split"),
    ({"command": "x", "interfaces": ["a"], "setup": "ip link"}, "setup", "a list of commands"),
    ({"command": "x", "interfaces": ["a"], "files": ["d1/f", "d2/f"]}, "files", "same name"),
    ({"command": "x", "interfaces": ["a"], "health": {"interval": 1}}, "health", "command"),
    ({"command": "x", "interfaces": ["a"], "return_timeout": "soon"}, "return_timeout", "positive number"),
])
def test_config_errors_name_the_key(config, key, words) -> None:
    with pytest.raises(VPortConfigError) as ei:
        VPortConfig.parse(config)
    assert ei.value.key == key
    assert words in ei.value.reason


def test_expand_replaces_only_the_known_tokens() -> None:
    text = "pid {dir}/nginx.pid; events { worker_connections 64; } # {ns} {instance} {other}"
    out = expand(text, {"dir": "/d", "ns": "e2v-1-ab", "instance": "fw#1"})
    assert out == "pid /d/nginx.pid; events { worker_connections 64; } # e2v-1-ab fw#1 {other}"


# --- frames coming back -------------------------------------------------------------------------------
def frame(i: int, payload: bytes = b"x") -> bytes:
    return ether(ipv4("198.18.0.1", "198.19.0.1", 17, udp("198.18.0.1", "198.19.0.1", 1000 + i, 53, payload)))


def test_inflight_matches_the_oldest_copy_and_expires_the_rest() -> None:
    f = InFlight()
    a, b, c = Packet(frame(1), 0, "in"), Packet(frame(1), 0, "in"), Packet(frame(2), 0, "in")
    f.add(a, 1.0)
    f.add(b, 2.0)
    f.add(c, 3.0)
    assert f.held == 3
    assert f.match(frame(1)) is a  # same bytes twice in flight: oldest first
    assert f.match(frame(9)) is None  # a frame the program made
    assert f.expire(2.5) == [b]  # a was matched already: skipped; b timed out
    assert f.expire(2.5) == [] and f.held == 1
    assert f.match(frame(2)) is c
    assert f.held == 0 and f.take_all() == []


def test_inflight_ignores_the_outer_tpid() -> None:
    # Suricata puts the outer tag Linux took out back as 802.1Q: still the same packet.
    qinq = ether(ipv4("198.18.0.1", "198.19.0.1", 6, tcp("198.18.0.1", "198.19.0.1", 1, 80)), vlans=(100, 20),
                 outer_tpid=0x88A8)
    dot1q = qinq[:12] + b"\x81\x00" + qinq[14:]
    assert frame_key(qinq) == frame_key(dot1q) == dot1q
    f = InFlight()
    p = Packet(qinq, 0, "in")
    f.add(p, 0.0)
    assert f.match(dot1q) is p and p.data == qinq  # leaves with its own bytes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("amx"), st.integers(0, 5)), max_size=60))
def test_inflight_accounts_for_every_packet_once(ops) -> None:
    f = InFlight()
    t = 0.0
    added: list[Packet] = []
    out: list[Packet] = []
    for op, k in ops:
        t += 1.0
        if op == "a":
            p = Packet(frame(k), t, "in")
            added.append(p)
            f.add(p, t)
        elif op == "m":
            p = f.match(frame(k))
            if p is not None:
                assert p.data == frame(k)
                out.append(p)
        else:
            out += f.expire(t - 2.5)
        assert f.held == len(added) - len(out)
    out += f.take_all()
    assert sorted(map(id, out)) == sorted(map(id, added))  # each one exactly once


# --- the EVE log --------------------------------------------------------------------------------------
def alert(sid: int, action: str = "blocked") -> dict:
    return {"event_type": "alert", "src_ip": "198.18.0.1", "src_port": 4000, "dest_ip": "198.19.0.1",
            "dest_port": 80, "proto": "TCP", "alert": {"signature_id": sid, "action": action}}


def test_eve_tail_reads_what_was_appended(tmp_path) -> None:
    path = tmp_path / "eve.json"
    tail = EveTail(str(path))
    assert tail.read() == []  # no file yet
    line1 = json.dumps(alert(1000001))
    path.write_text(line1 + "\n" + json.dumps(alert(1000002))[:20])  # the second line half written
    assert [e["alert"]["signature_id"] for e in tail.read()] == [1000001]
    with open(path, "a") as f:
        f.write(json.dumps(alert(1000002))[20:] + "\nnot json\n" + json.dumps({"event_type": "drop"}) + "\n")
    evs = tail.read()
    assert [e["event_type"] for e in evs] == ["alert", "drop"] and tail.bad_lines == 1
    path.write_text(json.dumps(alert(7)) + "\n")  # a new program: a new, shorter file
    assert [e["alert"]["signature_id"] for e in tail.read()] == [7]


def test_alerts_become_counters() -> None:
    c: collections.Counter = collections.Counter()
    assert count_event(alert(1000001), c) == ("198.18.0.1", 4000, "198.19.0.1", 80, "TCP", 1000001, "blocked")
    count_event(alert(1000001, "allowed"), c)
    assert count_event({"event_type": "drop"}, c) is None
    assert count_event({"event_type": "alert", "alert": "?"}, c) is None
    assert c == {"alerts": 2, "alert:1000001": 2, "alerts_blocked": 1, "eve_drops": 1}


# --- the policy ---------------------------------------------------------------------------------------
POLICY = """\
name: legacy
nfs:
  ids:
    kind: vport
    command: suricata -c {dir}/suricata.yaml --af-packet -l {dir} -k none
    files: [suricata.yaml]
    interfaces:
      in0: {side: client, port: safe}
      out0: {side: server, port: safe}
    unreturned: unsafe
    ready: {log: "Engine started"}
    affinity: flow
    cost_pps: 20000
    max: 4
  log: {class: e2actors.nf.builtin.counter:Counter}
classes:
  - {name: all, filter: "ip", load_pps: 1000}
edges:
  - {from: in, to: ids}
  - {from: ids.unsafe, to: log}
  - {from: ids.safe, to: out}
  - {from: log, to: out}
"""


def test_kind_vport_stands_for_the_vport_class() -> None:
    p = Policy.from_yaml(POLICY, "legacy.yaml")
    spec = p.nfs["ids"]
    assert spec.cls == VPORT_CLASS
    assert spec.ports == ("safe", "unsafe")
    assert spec.affinity == "flow" and spec.cost_pps == 20000 and spec.max_instances == 4
    assert spec.config["command"].startswith("suricata") and spec.config["unreturned"] == "unsafe"
    assert spec.config["interfaces"]["in0"] == {"side": "client", "port": "safe"}
    assert "affinity" not in spec.config and "kind" not in spec.config


def test_the_class_form_takes_its_ports_from_the_config() -> None:
    text = textwrap.dedent("""\
        nfs:
          br: {class: "e2actors.nf.vport:VPort", config: {setup: ["ip link add br0 type bridge"],
               interfaces: {in0: {side: client, port: a}, out0: {side: server, port: b}}}}
        classes: [{name: all, filter: "", load_pps: 10}]
        edges: [{from: in, to: br}, {from: br.a, to: out}, {from: br.b, to: out}]
        """)
    assert Policy.from_yaml(text).nfs["br"].ports == ("a", "b")


@pytest.mark.parametrize("change, line, words", [
    (("side: client, port: safe}", "side: left, port: safe}"), 8, "side 'left'"),
    (("    kind: vport\n", "    kind: docker\n"), 4, "unknown kind 'docker'"),
    (("    kind: vport\n", "    kind: vport\n    class: x:Y\n"), 5, "takes no 'class'"),
    (("    kind: vport\n", "    kind: vport\n    inline: true\n"), 5, "takes no 'inline'"),
    (("    unreturned: unsafe\n", "    unreturned: unsafe\n    colour: red\n"), 11, "unknown key 'colour'"),
    (("    ready: {log: \"Engine started\"}\n", "    ready: {log: \"(\"}\n"), 11, "bad regular expression"),
    (("  - {from: ids.unsafe, to: log}", "  - {from: ids.alerts, to: log}"), 20, "alerts"),
])
def test_kind_vport_errors_have_file_and_line(change, line, words) -> None:
    with pytest.raises(PolicyError) as ei:
        Policy.from_yaml(POLICY.replace(*change), "legacy.yaml")
    assert (ei.value.file, ei.value.line) == ("legacy.yaml", line), str(ei.value)
    assert words in ei.value.reason


def test_the_shipped_example_policy_parses() -> None:
    p = Policy.load("examples/legacy/policy.yaml")
    assert p.nfs["fw"].cls == p.nfs["ids"].cls == VPORT_CLASS
    assert p.nfs["ids"].ports == ("safe", "unsafe")
    assert p.nfs["fw"].ports == ("out",)


# --- on a node that confines NF configs ------------------------------------------------------------------
def test_a_confining_node_checks_the_programs_and_files(tmp_path) -> None:
    import shutil

    from e2actors.runtime.confine import Confinement, ConfinementError

    sh = shutil.which("sh")
    assert sh is not None
    config = {"command": "sh -c 'exec sleep 60'", "setup": ["sh -c true"], "interfaces": ["in0", "out0"],
              "files": ["rules/drop.rules"], "data_dir": "vport"}
    data = tmp_path / "data"
    (data / "rules").mkdir(parents=True)
    with pytest.raises(ConfinementError, match="--allow-legacy"):
        VPort.check_config(config, Confinement(str(data)))  # programs: none allowed
    allowed = Confinement(str(data), legacy=(os.path.dirname(os.path.realpath(sh)),))
    VPort.check_config(config, allowed)
    with pytest.raises(ConfinementError, match="outside the data directory"):
        VPort.check_config({**config, "files": ["/etc/passwd"]}, allowed)
    with pytest.raises(ConfinementError, match="outside the data directory"):
        VPort.check_config({**config, "data_dir": "../elsewhere"}, allowed)
    with pytest.raises(ConfinementError, match="not under an allowed"):
        VPort.check_config({**config, "command": "python3 -V"},
                           Confinement(str(data), legacy=(str(tmp_path / "bin"),)))
