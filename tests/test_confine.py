"""NF configs are code: what an agent lets them touch.

Pure (no event loop): :class:`Confinement` resolves paths inside the data directory and refuses
``..``, absolute paths and symbolic links that leave it; programs run only under allowed prefixes
(after ``PATH`` lookup and symlinks); each built-in that touches files checks its config keys.

With real agent processes: an agent without ``--allow-legacy`` refuses a policy with Legacy (the
run fails naming the NF, the key and the reason; the agent counts and logs it); one with it runs
the program under its prefix (packets go through it) and refuses one outside; a Logger path
outside the data directory (absolute, ``..``, a symlink out) is refused at deploy time, while a
relative one is written inside it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from clusterkit import Agent, metric, run_cli
from conftest import SECRET
from e2actors import ActorRef, Node, Spawn, SpawnRefused
from e2actors.nf.builtin import IDS, Legacy, Logger
from e2actors.nf.pipelet import Pipelet
from e2actors.runtime.confine import Confinement, ConfinementError, default_data_dir
from nfkit import chain_policy

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# --- pure --------------------------------------------------------------------------------------------
def test_paths_stay_inside_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    c = Confinement(str(data))
    assert c.path("out/unsafe.pcap") == str(data / "out" / "unsafe.pcap")
    assert c.path(str(data / "sub" / "x")) == str(data / "sub" / "x")
    assert c.path("sub/../y") == str(data / "y")
    for bad in ("../outside/x", str(outside / "x"), "/etc/passwd", "sub/../../outside", "/"):
        with pytest.raises(ConfinementError, match="outside the data directory"):
            c.path(bad, "pcap")
    (data / "link").symlink_to(outside)
    with pytest.raises(ConfinementError, match="symbolic link") as e:
        c.path("link/x.pcap", "pcap")
    assert e.value.key == "pcap" and "config 'pcap'" in str(e.value)
    (data / "inner").symlink_to(data / "sub")
    assert c.path("inner/z") == str(data / "sub" / "z")
    with pytest.raises(ConfinementError, match="NUL"):
        c.path("a\x00b")
    # The data directory itself behind a symlink is fine.
    alias = tmp_path / "alias"
    alias.symlink_to(data)
    assert Confinement(str(alias)).path("q") == str(data / "q")
    # Unconfined (a local run): relative to its directory, anything allowed.
    u = Confinement.unconfined(str(data))
    assert u.path("/etc/passwd") == "/etc/passwd" and u.path("x") == str(data / "x")


def test_programs_only_under_allowed_prefixes(tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    for d in (allowed, other):
        p = d / "prog"
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    (allowed / "not-exec").write_text("x")
    (allowed / "escape").symlink_to(other / "prog")     # inside the prefix, resolves outside
    (other / "to-allowed").symlink_to(allowed / "prog")  # outside, resolves inside
    c = Confinement(str(tmp_path / "data"), legacy=(str(allowed),))
    assert c.program(str(allowed / "prog")) == str(allowed / "prog")
    assert c.program(str(other / "to-allowed")) == str(allowed / "prog")
    with pytest.raises(ConfinementError, match="not under an allowed Legacy prefix"):
        c.program(str(other / "prog"))
    with pytest.raises(ConfinementError, match="not under an allowed Legacy prefix"):
        c.program(str(allowed / "escape"))
    with pytest.raises(ConfinementError, match="not found or not executable"):
        c.program(str(allowed / "not-exec"))
    with pytest.raises(ConfinementError, match="not found"):
        c.program("no-such-program-e2actors")
    with pytest.raises(ConfinementError, match="--allow-legacy"):
        Confinement(str(tmp_path)).program("sh")
    # A bare name is looked up in PATH, then its real path is checked.
    sh = os.path.realpath(__import__("shutil").which("sh"))
    assert Confinement(str(tmp_path), legacy=(os.path.dirname(sh),)).program("sh") == sh


def test_builtins_check_the_config_keys_that_name_files(tmp_path: Path) -> None:
    c = Confinement(str(tmp_path), legacy=None)
    Logger.check_config({"pcap": "out/{instance}.pcap"}, c)
    with pytest.raises(ConfinementError) as e:
        Logger.check_config({"pcap": "out/x.pcap", "jsonl": "/tmp/elsewhere.jsonl"}, c)
    assert e.value.key == "jsonl"
    with pytest.raises(ConfinementError, match="outside"):
        Logger.check_config({"pcap": "{instance}/../../x.pcap"}, c)
    # IDS: inline rules are not paths; path items are checked.
    IDS.check_config({"rules": ['alert tcp any any -> any any (msg:"x"; content:"y"; sid:1;)', "rules/a.rules"]}, c)
    with pytest.raises(ConfinementError) as e:
        IDS.check_config({"rules": ["/etc/shadow"]}, c)
    assert e.value.key == "rules"
    with pytest.raises(ConfinementError, match="--allow-legacy") as e:
        Legacy.check_config({"cmd": "touch /tmp/x"}, c)
    assert e.value.key == "cmd"
    with pytest.raises(ConfinementError, match="program to run"):
        Legacy.check_config({}, Confinement(str(tmp_path), legacy=("/",)))

    class Reader(Pipelet):
        config_paths = {"db": "read"}

    Reader.check_config({"db": ["a.db", "b/c.db"]}, c)
    with pytest.raises(ConfinementError):
        Reader.check_config({"db": ["a.db", "../b.db"]}, c)
    p = Reader()
    assert p.data_path("x/y") == "x/y"  # nothing confined: as it is
    p.confinement = c
    assert p.data_path("x/y") == str(tmp_path / "x" / "y")


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/e2actors")
    assert default_data_dir("s1") == "/var/lib/e2actors"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_data_dir("s1") == str(tmp_path / "e2actors" / "agent-s1")
    assert default_data_dir("../x") == str(tmp_path / "e2actors" / "agent-.._x")


# --- with agents -------------------------------------------------------------------------------------
def metrics_when(agent: Agent, pred, timeout: float = 10.0) -> str:
    """The agent's metrics text once ``pred(text)`` holds (its snapshot is refreshed twice a second)."""
    deadline = time.monotonic() + timeout
    while True:
        text = agent.metrics()
        if pred(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def one_server(path: Path, agent: Agent) -> Path:
    path.write_text(f"servers:\n  - {{name: {agent.name}, cores: 2, address: \"{agent.address}\"}}\n"
                    f"ports: {{in: {agent.name}, out: {agent.name}}}\n")
    return path


def legacy_program(d: Path) -> Path:
    """An executable that runs tests/legacy_ttl.py (frames back unchanged)."""
    d.mkdir(parents=True, exist_ok=True)
    p = d / "passthrough.sh"
    p.write_text(f"#!/bin/sh\nexec {sys.executable} {TESTS / 'legacy_ttl.py'} --passthrough\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def test_legacy_runs_only_on_an_agent_that_allows_its_program(tmp_path: Path, agents, secret_file: Path) -> None:
    prog = legacy_program(tmp_path / "legacy-bin")
    policy = tmp_path / "legacy.yaml"
    policy.write_text(chain_policy("old", f'class: "e2actors.nf.builtin.legacy:Legacy", config: {{cmd: ["{prog}"]}}'))
    traffic = str(ROOT / "examples" / "seed" / "traffic.pcap")
    # Without --allow-legacy: the deployment is refused, saying which NF, which key and why.
    plain = agents("s1")
    r = run_cli(["run", str(policy), "--hardware", str(one_server(tmp_path / "hw1.yaml", plain)),
                 "--secret-file", str(secret_file), "--traffic", traffic, "--no-autoscale", "--json"], tmp_path)
    assert r.returncode != 0
    assert "NF old" in r.stderr and "'cmd'" in r.stderr and "--allow-legacy" in r.stderr, r.stderr
    text = metrics_when(plain, lambda t: metric(t, "e2_node_events_total", event="nf_config_refused") >= 1)
    assert metric(text, "e2_node_events_total", event="spawn_refused") >= 1
    assert "refused to spawn" in plain.log_text()
    # With the program's directory allowed: it runs, and every packet goes through it.
    allowing = agents("s2", extra=["--allow-legacy", str(tmp_path / "legacy-bin")])
    r = run_cli(["run", str(policy), "--hardware", str(one_server(tmp_path / "hw2.yaml", allowing)),
                 "--secret-file", str(secret_file), "--traffic", traffic, "--no-autoscale", "--json"], tmp_path,
                timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["packets_in"] > 0 and s["packets_out"] == s["packets_in"] - s["drops"].get("switch: malformed", 0), \
        s["drops"]
    assert s["instances"] and all(0 < i["in"] == i["out"] for i in s["instances"].values())


async def test_deploy_time_refusals_name_the_nf_the_key_and_the_reason(tmp_path: Path, agents) -> None:
    allowed = legacy_program(tmp_path / "legacy-bin")
    elsewhere = legacy_program(tmp_path / "elsewhere")
    agent = agents("s1", extra=["--allow-legacy", str(allowed.parent)])
    data = tmp_path / "data-s1"
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "escape").symlink_to(outside)

    async def spawn(name: str, pipelet: str, config: dict) -> object:
        return await node.ask(ActorRef(agent.address, "$system"), Spawn(
            "e2actors.nf.instance:NFInstance", name, {"pipelet": pipelet, "config": config, "nf": name}), timeout=10)

    logger = "e2actors.nf.builtin.logger:Logger"
    legacy = "e2actors.nf.builtin.legacy:Legacy"
    async with Node("mgr", secret=SECRET) as node:
        refused = {
            "abs": (logger, {"pcap": str(outside / "x.pcap")}, "outside the data directory"),
            "dotdot": (logger, {"pcap": "../outside/x.pcap"}, "outside the data directory"),
            "symlink": (logger, {"pcap": "escape/x.pcap"}, "symbolic link"),
            "jsonl": (logger, {"pcap": "ok.pcap", "jsonl": "/tmp/x.jsonl"}, "'jsonl'"),
            "rules": ("e2actors.nf.builtin.ids:IDS", {"rules": "/etc/passwd"}, "'rules'"),
            "prog": (legacy, {"cmd": [str(elsewhere)]}, "not under an allowed Legacy prefix"),
        }
        for name, (cls, config, why) in refused.items():
            with pytest.raises(SpawnRefused) as e:
                await spawn(name, cls, config)
            assert f"NF {name}" in str(e.value) and why in str(e.value), str(e.value)
        # Inside the data directory: deployed, and the file is written there.
        await spawn("good", logger, {"pcap": "logs/{instance}.pcap"})
        await spawn("prog-ok", legacy, {"cmd": [str(allowed)]})
    assert not list(outside.iterdir())
    assert (data / "logs" / "good.pcap").exists()
    text = metrics_when(agent, lambda t: metric(t, "e2_node_events_total", event="nf_config_refused") >= len(refused))
    assert metric(text, "e2_node_events_total", event="nf_config_refused") == len(refused)


async def test_a_switch_writes_its_output_pcap_only_inside_the_data_directory(tmp_path) -> None:
    """A table's pcap-out port on a confined node (an agent): relative paths from the data
    directory, anything outside refused with the reason (the table is not installed)."""
    from e2actors import Node
    from e2actors.errors import RemoteError
    from e2actors.runtime.confine import Confinement, ConfinementError
    from e2actors.switch.messages import SetTable
    from e2actors.switch.switch import Switch
    from e2actors.switch.table import PortSpec, Route, SwitchTable

    data = tmp_path / "data"
    data.mkdir()
    async with Node("agent", confine=Confinement(str(data))) as node:
        sw = node.spawn(Switch, "switch", server="s1")
        ok = SwitchTable(1, "s1", (PortSpec("in", "memory"), PortSpec("out", "pcap-out", {"path": "o.pcap"})), (),
                         (Route("port:in", "", "port:out", "in->out"),))
        assert await node.ask(sw, SetTable(ok)) == 1
        assert (data / "o.pcap").exists()
        bad = SwitchTable(2, "s1", (PortSpec("in", "memory"), PortSpec("out", "pcap-out", {"path": str(tmp_path / "x.pcap")})),
                          (), (Route("port:in", "", "port:out", "in->out"),))
        try:
            await node.ask(sw, SetTable(bad))
        except (ConfinementError, RemoteError) as exc:
            assert "outside the data directory" in str(exc)
        else:
            raise AssertionError("a path outside the data directory was accepted")
        assert not (tmp_path / "x.pcap").exists()


async def test_a_managers_node_takes_no_spawns_from_other_nodes() -> None:
    """Anyone holding the secret may link to the manager's node; its ``$system`` still spawns
    nothing a peer asks for (the manager starts its own actors), while the manager itself can."""
    from conftest import SECRET
    from e2actors import Node
    from e2actors.errors import RemoteError, SpawnRefused
    from e2actors.runtime.messages import Spawn
    from e2actors.runtime.node import SYSTEM, SystemActor
    from e2actors.runtime.ref import ActorRef

    async with Node("mgr", listen="mem://mgr-node", secret=SECRET, remote_spawns=False) as mgr, \
            Node("peer", secret=SECRET) as peer:
        sysref = ActorRef(mgr.address, SYSTEM)
        try:
            await peer.ask(sysref, Spawn("e2actors.runtime.node:SystemActor", "evil"), timeout=5)
        except (SpawnRefused, RemoteError) as exc:
            assert "takes no spawns from other nodes" in str(exc)
        else:
            raise AssertionError("a peer spawned an actor on the manager's node")
        assert mgr.counters["spawn_refused"] == 1 and "evil" not in [r.name for r in mgr.actors()]
        local = await mgr.ask(sysref, Spawn("e2actors.runtime.node:SystemActor", "mine"), timeout=5)
        assert local.name == "mine" and SystemActor
