"""A cluster of real processes: ``e2actors agent`` per server, ``e2actors run --hardware`` naming
them by address. The manager checks each agent (auth, version, cores) before deploying; traffic
between servers goes switch to switch over the actor transport; the agents serve metrics.

Security, each tried with real processes:
* without the right secret nothing connects (the run fails saying so; the agent counts it);
* nothing travels in clear, with or without TLS: a run sends a marker string in packet payloads
  between agents on the loopback, tcpdump captures that traffic, and the marker is absent (every
  frame travels in an AES-GCM record; TLS adds its own layer);
* an agent refuses to load a pipelet class outside its allow-list (the run fails naming the class;
  the agent logs and counts the refusal).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clusterkit import Agent, make_certs, metric, run_cli, start_agent
from conftest import SECRET, eventually_blocking, need_root, need_tool
from e2actors.errors import E2Error
from e2actors.manager.manager import check_agent
from e2actors.packet import build
from e2actors.packet.pcap import write_pcap
from e2actors.runtime.node import Node
from nfkit import chain_policy

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed"
MARKER = b"E2-MARKER-7f3a9c-SECRET-PAYLOAD"


@pytest.fixture
def agents(tmp_path: Path):
    """Factory for agents on the loopback; all of them are stopped afterwards."""
    started: list[Agent] = []

    def start(name: str, *, secret: bytes = SECRET, cores: int = 2, extra: list[str] | None = None) -> Agent:
        sf = tmp_path / f"secret-{name}"
        sf.write_bytes(secret)
        a = start_agent(tmp_path, name, "tcp://127.0.0.1:0", sf, cores=cores, extra=extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill()


def hardware(path: Path, agents: list[Agent], cores: int = 2, in_on: int = 0, out_on: int = 1) -> Path:
    lines = ["servers:"]
    for a in agents:
        lines.append(f"  - {{name: {a.name}, cores: {cores}, address: \"{a.address}\"}}")
    lines += ["ports:", f"  in: {agents[in_on].name}", f"  out: {agents[out_on].name}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def secret_file(tmp: Path, secret: bytes = SECRET, name: str = "secret") -> Path:
    p = tmp / name
    p.write_bytes(secret)
    return p


def test_run_deploys_the_running_example_across_agents(tmp_path: Path, agents) -> None:
    a1, a2 = agents("s1"), agents("s2")
    hw = hardware(tmp_path / "hw.yaml", [a1, a2])
    t0 = time.monotonic()
    r = run_cli(["run", str(SEED / "policy.yaml"), "--hardware", str(hw), "--secret-file", str(secret_file(tmp_path)),
                 "--traffic", str(SEED / "traffic.pcap"), "--load", "2000", "--no-autoscale", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    print(f"\nrun across 2 agents: {s['packets_in']} in, {s['packets_out']} out, "
          f"{s['inter_server_packets']} packets between servers, {time.monotonic() - t0:.1f}s")
    assert s["completed"] and s["servers"] == ["s1", "s2"]
    assert s["packets_in"] > 0 and s["packets_out"] > 0
    # in is on s1 and out on s2: every packet that left crossed between the switches.
    assert s["inter_server_packets"] >= s["packets_out"]
    assert s["verdicts"].get("unsafe", 0) > 0 and s["verdicts"].get("safe", 0) > 0
    assert {i["server"] for i in s["instances"].values()} <= {"s1", "s2"}
    # Metadata travelled with the packets across servers: the logger (wherever it ran) wrote the
    # IDS verdict of every packet it logged, in its agent's data directory.
    logs = list(tmp_path.glob("data-s*/out/unsafe*.jsonl"))
    assert logs, list(tmp_path.rglob("*"))
    first = json.loads(logs[0].read_text().splitlines()[0])
    assert first["meta"].get("verdict") == "unsafe"
    # The agents serve metrics of what they host.
    text = a1.metrics() + a2.metrics()
    assert metric(text, "e2_node_cores", server="s1") == 2
    assert metric(text, "e2_node_actors") >= 2


def test_manager_checks_agents_cores_and_refuses_a_wrong_secret(tmp_path: Path, agents) -> None:
    a1 = agents("s1", cores=1)
    hw = hardware(tmp_path / "hw.yaml", [a1], cores=4, out_on=0)
    r = run_cli(["run", str(SEED / "policy.yaml"), "--hardware", str(hw), "--secret-file", str(secret_file(tmp_path)),
                 "--traffic", str(SEED / "traffic.pcap"), "--load", "1000", "--json"], tmp_path)
    assert r.returncode == 2
    assert "offers 1 cores, the hardware file gives it 4" in r.stderr, r.stderr

    # Wrong secret: the manager is refused, and the agent counts the failure.
    a1 = agents("s1b", cores=4)
    hw = hardware(tmp_path / "hw1.yaml", [a1], cores=4, out_on=0)
    wrong = secret_file(tmp_path, b"this-is-not-the-cluster-secret", "wrong")
    r = run_cli(["run", str(SEED / "policy.yaml"), "--hardware", str(hw), "--secret-file", str(wrong),
                 "--traffic", str(SEED / "traffic.pcap"), "--load", "1000", "--json"], tmp_path)
    assert r.returncode == 2
    assert "refused us: authentication failed" in r.stderr, r.stderr
    # (the agent's metrics snapshot refreshes twice a second)
    eventually_blocking(lambda: metric(a1.metrics(), "e2_node_events_total", event="auth_failures") >= 1,
                        what="the agent to count the failed authentication")
    assert "handshake" in a1.log_text() or "auth" in a1.log_text().lower()
    # Without --secret-file a hardware file with addresses is refused up front.
    r = run_cli(["run", str(SEED / "policy.yaml"), "--hardware", str(hw), "--traffic", str(SEED / "traffic.pcap")],
                tmp_path)
    assert r.returncode == 2 and "--secret-file" in r.stderr


async def test_manager_refuses_an_agent_of_another_version(tmp_path: Path) -> None:
    async with Node("agent", listen="tcp://127.0.0.1:0", secret=SECRET, cores=8) as agent:
        agent.version = "0.0.1-other"
        async with Node("manager", secret=SECRET) as mgr:
            with pytest.raises(E2Error, match="runs e2actors 0.0.1-other"):
                await check_agent(mgr, "s1", agent.address, 2)
        agent.version = mgr.version
        async with Node("manager2", secret=SECRET) as mgr2:
            info = await check_agent(mgr2, "s1", agent.address, 8)
            assert info.cores == 8


def test_agent_refuses_a_pipelet_outside_its_allow_list(tmp_path: Path, agents) -> None:
    a1 = agents("s1")
    policy = tmp_path / "policy.yaml"
    policy.write_text(chain_policy("burn", 'class: "scaling_nfs:Burner", cost_pps: 100000', filter="ip"))
    hw = hardware(tmp_path / "hw.yaml", [a1], out_on=0)
    r = run_cli(["run", str(policy), "--hardware", str(hw), "--secret-file", str(secret_file(tmp_path)),
                 "--traffic", str(SEED / "traffic.pcap"), "--json"], tmp_path)
    assert r.returncode == 2
    assert "refused to load scaling_nfs:Burner" in r.stderr and "allow-list" in r.stderr, r.stderr
    eventually_blocking(lambda: metric(a1.metrics(), "e2_node_events_total", event="spawn_refused") >= 1,
                        what="the agent to count the refused spawn")
    assert "scaling_nfs:Burner" in a1.log_text()
    # The same agent, allowed that module, runs it.
    a2 = agents("s2", extra=["--allow", "scaling_nfs"])
    hw = hardware(tmp_path / "hw2.yaml", [a2], out_on=0)
    r = run_cli(["run", str(policy), "--hardware", str(hw), "--secret-file", str(secret_file(tmp_path)),
                 "--traffic", str(SEED / "traffic.pcap"), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr


def _marker_pcap(path: Path, n: int = 200) -> Path:
    frames = []
    for i in range(n):
        payload = MARKER + f" #{i:05d} ".encode() + b"x" * 200
        ip = build.ip("198.18.0.1", "198.18.0.2", 17, build.udp("198.18.0.1", "198.18.0.2", 40000 + i % 50, 9, payload))
        frames.append((1.0 + i * 0.001, build.ether(ip)))
    write_pcap(path, frames)
    return path


def _capture(tmp: Path, name: str, ports: list[int]) -> tuple[subprocess.Popen, Path]:
    out = tmp / f"{name}.pcap"
    filt = " or ".join(f"tcp port {p}" for p in ports)
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-s", "0", "-B", "16384", "-w", str(out), filt],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # tcpdump says "listening on lo" once it captures
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if "listening on" in line or not line:
            break
    return proc, out


@pytest.mark.parametrize("tls", [False, True], ids=["records", "tls"])
def test_nothing_travels_in_clear(tmp_path: Path, agents, tls: bool) -> None:
    need_root()
    need_tool("tcpdump")
    need_tool("openssl")
    extra: list[str] = []
    if tls:
        cert, key, ca = make_certs(tmp_path / "pki")
        extra = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]
    a1, a2 = agents("s1", extra=extra), agents("s2", extra=extra)
    policy = tmp_path / "policy.yaml"
    policy.write_text(chain_policy("count", 'class: "e2actors.nf.builtin.counter:Counter", cost_pps: 100000',
                                   filter="ip"))
    hw = hardware(tmp_path / "hw.yaml", [a1, a2], cores=1)  # in on s1, out on s2: packets cross
    ports = [int(a.address.rsplit(":", 1)[1]) for a in (a1, a2)]
    cap, cap_file = _capture(tmp_path, "lo", ports)
    try:
        r = run_cli(["run", str(policy), "--hardware", str(hw), "--secret-file", str(secret_file(tmp_path)),
                     "--traffic", str(_marker_pcap(tmp_path / "marker.pcap")), "--no-autoscale", "--json", *extra],
                    tmp_path)
        if r.returncode == 0:  # tcpdump -U writes each packet as it reads it: the file grows to it
            eventually_blocking(lambda: cap_file.stat().st_size > 200 * 200, 10, what="the capture written")
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["packets_out"] == 200 and s["inter_server_packets"] >= 200
    captured = cap_file.read_bytes()
    assert MARKER in _marker_pcap(tmp_path / "check.pcap").read_bytes()
    print(f"\n[{'tls' if tls else 'records'}] captured {len(captured)} bytes of agent traffic on lo; "
          f"marker found {captured.count(MARKER)} times")
    assert len(captured) > 200 * 200  # the packets did travel between the processes
    assert MARKER not in captured
