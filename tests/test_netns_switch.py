"""End to end in network namespaces: a real client fetches from a real server through the switch.

Topology (every name carries a per-run prefix; everything is deleted afterwards, also on failure)::

    [cli] 198.18.1.1/24 c0 ==veth== sa [sw] sb ==veth== s0 198.18.1.2/24 [srv]
                                        |
                   switch_node.py: Switch(port a = sa, port b = sb, AF_PACKET) + Firewall

The switch runs as a separate OS process inside ``sw`` (see tests/switch_node.py for its table:
both ports into one firewall group, the firewall's output back out by source MAC). The firewall
allows ARP and TCP to port 8080 (connection tracking passes the replies), denies TCP port 9090
and everything else. ``srv`` runs ``python3 -m http.server`` on 8080 (serving a 1 MB random file)
and on 9090; ``curl`` in ``cli`` fetches the file through the switch and the checksums must
match; a curl to 9090 must fail. The test then asks the switch process, over the actor transport
(a unix socket: network namespaces do not share a loopback), for its counters, prints them, and
checks the firewall's denials were counted. Run once with the firewall inline in the switch and
once as an NFInstance actor.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SECRET, TESTS, need_root, need_tool
from e2actors import Node
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import GetSwitchStats
from netns import Lab, sh, wait_port

pytestmark = pytest.mark.netns

CLI_IP, SRV_IP = "198.18.1.1", "198.18.1.2"


def mac_of(ns: str, dev: str) -> str:
    out = sh(f"ip -n {ns} -j link show dev {dev}").stdout
    return json.loads(out)[0]["address"]


class Topology:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.cli, self.sw, self.srv = lab.ns("cli"), lab.ns("sw"), lab.ns("srv")
        self.c0, self.sa = lab.veth("c0", "sa", self.cli, self.sw)
        self.sb, self.s0 = lab.veth("sb", "s0", self.sw, self.srv)
        lab.addr(self.cli, self.c0, f"{CLI_IP}/24")
        lab.addr(self.srv, self.s0, f"{SRV_IP}/24")
        self.cli_mac, self.srv_mac = mac_of(self.cli, self.c0), mac_of(self.srv, self.s0)


@pytest.fixture
def topo() -> Iterator[Topology]:
    need_root()
    for tool in ("ip", "ethtool", "curl"):
        need_tool(tool)
    lab = Lab("e2n")
    try:
        yield Topology(lab)
    finally:
        lab.close()


def start_switch(t: Topology, tmp: Path, mode: str) -> tuple[subprocess.Popen, str]:
    secret = tmp / "secret"
    secret.write_bytes(SECRET)
    sock = tmp / "sw.sock"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = t.lab.run(t.sw, [sys.executable, str(TESTS / "switch_node.py"), "--listen", f"unix://{sock}",
                            "--secret-file", str(secret), "--a", t.sa, "--b", t.sb, "--cli-mac", t.cli_mac,
                            "--srv-mac", t.srv_mac, "--mode", mode],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
    if not line.startswith("READY "):
        raise RuntimeError(f"switch node did not start (exit {proc.poll()}): {line!r}")
    return proc, line.split()[1]


def curl(t: Topology, url: str, out: Path | None, max_time: float) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", t.cli, "curl", "-sS", "--fail", "--max-time", str(max_time),
           "-o", str(out) if out else "/dev/null", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 10)


@pytest.mark.parametrize("mode", ["inline", "actor"])
async def test_curl_through_switch_and_firewall(topo: Topology, tmp_path: Path, mode: str) -> None:
    t = topo
    t0 = time.monotonic()
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(1 << 20)
    (www / "blob.bin").write_bytes(blob)
    for port in (8080, 9090):
        t.lab.run(t.srv, [sys.executable, "-m", "http.server", str(port), "--bind", SRV_IP, "--directory", str(www)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _proc, address = start_switch(t, tmp_path, mode)
    for port in (8080, 9090):
        wait_port(t.srv, SRV_IP, port)

    got = tmp_path / "got.bin"
    r = curl(t, f"http://{SRV_IP}:8080/blob.bin", got, 15)
    assert r.returncode == 0, f"curl through the switch failed: {r.stderr}"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(blob).hexdigest()

    t1 = time.monotonic()
    r = curl(t, f"http://{SRV_IP}:9090/blob.bin", None, 2)
    assert r.returncode != 0, "port 9090 must be blocked by the firewall"
    assert time.monotonic() - t1 < 8

    async with Node("probe", secret=SECRET) as node:
        st = await node.ask(ActorRef(address, "switch"), GetSwitchStats(), timeout=5)
        fw = await node.ask(ActorRef(address, "probe"), "fw", timeout=5)
    print(f"\n[{mode}] switch ports: " + json.dumps(st["ports"]))
    print(f"[{mode}] switch drops: {st['drops']} routes: {st['routes']} counters: {st['counters']}")
    print(f"[{mode}] firewall drops by reason: {fw['drops']} counters: {fw['counters']}")
    print(f"[{mode}] took {time.monotonic() - t0:.1f}s")

    denied = fw["drops"].get("deny rule 3", 0)
    assert denied >= 1  # the SYN (and its retransmissions) to 9090
    if mode == "inline":
        assert st["groups"]["fw"]["inline"] and st["groups"]["fw"]["runner"]["dropped"] >= denied
    else:
        assert st["counters"].get("dropped by fw", 0) >= denied
    # The whole file went through both AF_PACKET ports.
    assert st["ports"]["a"]["tx_bytes"] > len(blob) and st["ports"]["b"]["rx_bytes"] > len(blob)
    assert st["routes"]["fw->a"] > 0 and st["routes"]["fw->b"] > 0
