"""One switch per core on live interfaces, and overload on a live port, in network namespaces.

Topology (names carry a per-run prefix; everything is removed afterwards, also on failure)::

    [cli] 198.18.6.1/24 c0 ==veth== sa [sw] sb ==veth== s0 198.18.6.2/24 [srv]
                                         |      http.server :8080, iperf3 -s :5201
        e2actors run POLICY --in sa --out sb --both-ways [--workers 2] --duration ...

Fanout: ``--workers 2`` starts two worker processes, each with its own switch, both reading
``sa`` and ``sb`` through one ``PACKET_FANOUT`` group per interface (hash mode): the kernel hands
each switch its flows, both directions of a connection to the same one. curl fetches a 1 MB file
intact and iperf3 runs four TCP streams through the two switches; both switches carried traffic,
and every TCP flow was seen both ways by one instance (``tests/fanout_nfs.py: Directions``).

Overload: one switch and an NF that spends 400 us per packet; iperf3 floods UDP at 40 Mbit/s
(about 3,400 packets/s against the NF's 2,500). The switch stops reading when the port's credit
window is full, so the excess is dropped by the kernel at the port's ring (counted as the port's
``ring full`` drops), never inside the chain after work was spent; the switch process's memory
stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, need_root, need_tool
from netns import Lab, wait_port

pytestmark = pytest.mark.netns

ROOT = TESTS.parent
CLI_IP, SRV_IP = "198.18.6.1", "198.18.6.2"

POLICY = """
name: {name}
nfs:
  nf:
    class: "fanout_nfs:{cls}"
    affinity: flow
    cost_pps: 500000
    config: {config}
classes:
  - {{name: ip, filter: "ip", load_pps: 10000}}
  - {{name: l2, filter: "arp", load_pps: 10}}
edges:
  - {{from: in, to: out, class: l2}}
  - {{from: in, to: nf, class: ip}}
  - {{from: nf, to: out}}
"""


class Topo:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.cli, self.sw, self.srv = lab.ns("cli"), lab.ns("sw"), lab.ns("srv")
        self.c0, self.sa = lab.veth("c0", "sa", self.cli, self.sw)
        self.sb, self.s0 = lab.veth("sb", "s0", self.sw, self.srv)
        lab.addr(self.cli, self.c0, f"{CLI_IP}/24")
        lab.addr(self.srv, self.s0, f"{SRV_IP}/24")

    def run_policy(self, policy: str, *args: str) -> subprocess.Popen:
        pol = self.tmp / "policy.yaml"
        pol.write_text(policy)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
        return self.lab.run(self.sw, [sys.executable, "-m", "e2actors", "run", str(pol), "--in", self.sa,
                                      "--out", self.sb, "--both-ways", "--json", "--no-autoscale", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=self.tmp)

    def curl(self, url: str, out: Path | None, max_time: float) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.cli, "curl", "-sS", "--fail", "--max-time", str(max_time),
                               "-o", str(out) if out else "/dev/null", url], capture_output=True, text=True,
                              timeout=max_time + 10)

    def wait_through(self, url: str, timeout: float = 30) -> None:
        """Wait until the deployment forwards (a request gets through)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.curl(url, None, 2).returncode == 0:
                return
        raise AssertionError("nothing gets through the switch")


def finish(proc: subprocess.Popen) -> dict:
    """End the run (SIGTERM: the summary so far) and return its JSON summary."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topo]:
    need_root()
    for tool in ("ip", "ethtool", "curl", "iperf3"):
        need_tool(tool)
    lab = Lab("e2f")
    try:
        yield Topo(lab, tmp_path)
    finally:
        lab.close()


def test_two_switch_processes_share_live_interfaces_by_flow(topo: Topo, tmp_path: Path) -> None:
    t = topo
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(1 << 20)
    (www / "blob.bin").write_bytes(blob)
    t.lab.run(t.srv, [sys.executable, "-m", "http.server", "8080", "--bind", SRV_IP, "--directory", str(www)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.lab.run(t.srv, ["iperf3", "-s", "-B", SRV_IP, "-p", "5201"], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    wait_port(t.srv, SRV_IP, 8080)
    run = t.run_policy(POLICY.format(name="fanout", cls="Directions", config="{}"), "--workers", "2",
                       "--duration", "120")
    t.wait_through(f"http://{SRV_IP}:8080/")
    got = tmp_path / "got.bin"
    for _ in range(4):  # several connections: the flow hash spreads them over the two switches
        r = t.curl(f"http://{SRV_IP}:8080/blob.bin", got, 20)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(blob).digest()
    ip = subprocess.run(["ip", "netns", "exec", t.cli, "iperf3", "-c", SRV_IP, "-p", "5201", "-P", "4", "-t", "2",
                         "--json"], capture_output=True, text=True, timeout=60)
    assert ip.returncode == 0, ip.stdout[-2000:] + ip.stderr
    res = json.loads(ip.stdout)
    assert res["end"]["sum_received"]["bytes"] > 0
    s = finish(run)
    print("\n" + json.dumps({k: s[k] for k in ("packets_in", "packets_out", "drops", "servers", "lost")}))
    assert s["servers"] == ["w1", "w2"]
    per_server: dict[str, int] = {}
    flows = both = 0
    for i in s["instances"].values():
        per_server[i["server"]] = per_server.get(i["server"], 0) + i["in"]
        flows += i["counters"].get("flows", 0)
        both += i["counters"].get("both ways", 0)
    print(f"packets per switch process: {per_server}; TCP flows {flows}, seen both ways {both}")
    assert all(per_server.get(w, 0) > 0 for w in ("w1", "w2")), per_server
    # Each connection's two directions reached one switch and one instance.
    assert flows >= 10 and both == flows
    assert s["inter_server_packets"] == 0
    assert not {k for k in s["drops"] if not k.startswith("switch: malformed")}, s["drops"]
    # Stopped by a signal: the inputs closed and what was inside left before the account.
    assert s["lost"] == 0


def test_overload_on_a_live_port_drops_at_the_ring_only(topo: Topo, tmp_path: Path) -> None:
    t = topo
    t.lab.run(t.srv, ["iperf3", "-s", "-B", SRV_IP, "-p", "5201"], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    wait_port(t.srv, SRV_IP, 5201)
    run = t.run_policy(POLICY.format(name="overload", cls="Slow", config="{cost_us: 400}"), "--duration", "120")
    # (ARP first, at a pace the NF takes: the flood needs the server's address resolved)
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "netns", "exec", t.cli, "ping", "-c", "1", "-W", "1", SRV_IP],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "nothing gets through the switch"
    flood = subprocess.run(["ip", "netns", "exec", t.cli, "iperf3", "-c", SRV_IP, "-p", "5201", "-u", "-b", "40M",
                            "-l", "1400", "-t", "4", "--json"], capture_output=True, text=True, timeout=60)
    assert flood.returncode == 0, flood.stdout[-2000:]
    rss = _rss_kib(run.pid)
    s = finish(run)
    sent = json.loads(flood.stdout)["end"]["sum"]["packets"]
    ring = sum(n for k, n in s["drops"].items() if k.startswith("port in:"))
    print(f"\nUDP packets sent {sent}, into the chain {s['instances']['nf#1']['in']}, dropped at the ring {ring}, "
          f"drops {s['drops']}, switch process RSS {rss} KiB")
    assert ring > 0, s["drops"]  # the NF could not keep up: the excess was dropped at the ingress
    inside = {k for k in s["drops"] if not k.startswith("port ")} - {"switch: malformed"}
    assert not inside, f"drops in the middle of the chain: {s['drops']}"
    assert s["congestion_drops"] == 0 and s["lost"] == 0
    assert rss < 400 * 1024, f"the switch process grew to {rss} KiB"


def _rss_kib(pid: int) -> int:
    """Resident memory of a process tree (the manager with its switch and instance), KiB."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(x) for x in out]
    except OSError:
        pass
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
