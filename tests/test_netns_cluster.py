"""The running example on a cluster of agents in network namespaces, checked with real programs.

Topology (names carry a per-run prefix; namespaces, links and processes are removed afterwards,
also when the test fails)::

    [cli] 198.18.5.1 c0 ==veth== ci [s1] wo ==veth== w0 198.18.5.2, .3 [web]
                                    |                     http.server :8080, split_server :8081,
              s1: agent, the switch with the ports        iperf3 -s :5201
              in  = AF_PACKET on ci (the client side)
              out = AF_PACKET on wo (the server side), reverse_of: in
    [s2] agent (4 cores)    [s3] agent (4 cores)          the NF instances run here
    manager: ``e2actors run POLICY --hardware HW --secret-file F --duration ...`` in the root
    namespace; control links are unix sockets in the test's temporary directory (network
    namespaces share the file system; each has its own loopback, so TCP on 127.0.0.1 would not
    cross them). s1 offers 0 cores: every packet goes s1 -> s2/s3 -> s1 over the actor transport.

The deployment is a bump in the wire between client and web server at L2. The test policy is the
running example (IDS -> logger for unsafe; youtube.com -> parental control; safe -> shaper -> out)
plus what a bump in the wire needs:

* ARP must pass or nothing can talk: a class ``l2`` (``arp``) with an edge ``in -> out``; the IP
  classes keep the example's edges (``class: all``);
* both directions: the hardware file's ``out`` port says ``reverse_of: in``, so what the web server
  sends enters the same DAG (the IDS sees both directions of a flow, as reassembly and the download
  signature need) and leaves through ``in``; ARP replies take the ``l2`` edge back the same way.

Checks: curl fetches a 1 MB file intact (sha256); ``Host: www.youtube.com`` is blocked by the parental
control while other hosts pass; a download whose body carries ``uid=0(root)`` split across two TCP
segments is flagged unsafe and the logger's pcap (read by tcpdump) holds it; iperf3 through the
shaper (20 Mbit/s) measures within 10% of that rate; killing the agent with the most instances
mid-transfer: the manager re-places them (issue 8's node-loss recovery), new connections work again,
and the time to recover is printed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterkit import Agent, env_with_tests, metric, start_agent
from conftest import SECRET, TESTS, eventually_blocking, need_root, need_tool
from netns import Lab, sh, wait_port

pytestmark = pytest.mark.netns

ROOT = TESTS.parent
CLI_IP, WEB_IP, WEB_IP2 = "198.18.5.1", "198.18.5.2", "198.18.5.3"
RATE_MBIT = 20
SIGNATURE = ("uid=0(", "root) gid=0(root) groups=0(root)\n")

POLICY = """
# The running example (examples/seed/policy.yaml) as a bump in the wire (see the test's docstring).
name: seed-bump-in-the-wire
nfs:
  ids:
    class: e2actors.nf.builtin.ids:IDS
    ports: [safe, unsafe]
    input: bytestream
    affinity: flow
    cost_pps: 150000
    config: {{rules: {rules}}}
  logger:
    class: e2actors.nf.builtin.logger:Logger
    cost_pps: 200000
    config: {{pcap: {pcap}}}
  parental:
    class: e2actors.nf.builtin.hostfilter:HostFilter
    affinity: flow
    cost_pps: 300000
    config: {{block: [youtube.com]}}
  shaper:
    class: e2actors.nf.builtin.shaper:Shaper
    cost_pps: 300000
    config: {{rate: {rate}Mbit, burst: 200kbit, queue: 400}}
classes:
  - {{name: all, filter: "ip or ip6 or vlan", load_pps: 3000}}
  - {{name: l2, filter: "arp", load_pps: 10}}
edges:
  - {{from: in, to: out, class: l2}}
  - {{from: in, to: ids, class: all}}
  - {{from: ids.unsafe, to: logger}}
  - {{from: ids.safe, to: parental, when: "domain youtube.com"}}
  - {{from: ids.safe, to: shaper}}
  - {{from: parental, to: out}}
  - {{from: shaper, to: out}}
"""


class Cluster:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.cli, self.web = lab.ns("cli"), lab.ns("web")
        self.s = {n: lab.ns(n) for n in ("s1", "s2", "s3")}
        self.c0, self.ci = lab.veth("c0", "ci", self.cli, self.s["s1"])
        self.wo, self.w0 = lab.veth("wo", "w0", self.s["s1"], self.web)
        lab.addr(self.cli, self.c0, f"{CLI_IP}/24")
        lab.addr(self.web, self.w0, f"{WEB_IP}/24")
        lab.addr(self.web, self.w0, f"{WEB_IP2}/24")
        self.agents: dict[str, Agent] = {}
        self.manager: subprocess.Popen | None = None

    def curl(self, url: str, out: Path | None = None, max_time: float = 10, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.cli, "curl", "-sS", "--fail", "--max-time", str(max_time),
               "-o", str(out) if out else "/dev/null", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    need_root()
    for tool in ("ip", "ethtool", "curl", "iperf3", "tcpdump"):
        need_tool(tool)
    lab = Lab("e2c")
    try:
        yield Cluster(lab, tmp_path)
    finally:
        c_manager = [p for p in lab.procs if p.poll() is None]
        for p in c_manager:  # a graceful end first (agents and the manager close their links)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        lab.close()
        leftover = sh("ip netns list", check=False).stdout
        assert lab.prefix not in leftover


def instances_on(a: Agent) -> int:
    """NF instances an agent hosts, from its metrics (one e2_active_flows sample each)."""
    return sum(1 for line in a.metrics().splitlines() if line.startswith("e2_active_flows{"))


def test_running_example_across_agents_in_namespaces(cluster: Cluster) -> None:
    c, tmp = cluster, cluster.tmp
    t_start = time.monotonic()
    secret = tmp / "secret"
    secret.write_bytes(SECRET)
    for name, cores in (("s1", 1), ("s2", 4), ("s3", 4)):
        c.agents[name] = start_agent(tmp, name, f"unix://{tmp}/{name}.sock", secret, cores=cores,
                                     netns=c.s[name], procs=c.lab.procs)
    # Paths as an agent sees them: inside its data directory (tmp/data-NAME, which holds a copy of
    # the seed rules); the logger writes there.
    (tmp / "policy.yaml").write_text(POLICY.format(rules="rules/example.rules", pcap="unsafe.pcap", rate=RATE_MBIT))
    (tmp / "hw.yaml").write_text(f"""
servers:
  - {{name: s1, cores: 0, address: "{c.agents['s1'].address}"}}
  - {{name: s2, cores: 4, address: "{c.agents['s2'].address}"}}
  - {{name: s3, cores: 4, address: "{c.agents['s3'].address}"}}
ports:
  in: {{server: s1, kind: afpacket, iface: {c.ci}}}
  out: {{server: s1, kind: afpacket, iface: {c.wo}, reverse_of: in}}
""")
    # The web server side: files, the split-signature server, iperf3.
    www = tmp / "www"
    www.mkdir()
    blob = os.urandom(1 << 20)
    (www / "blob.bin").write_bytes(blob)
    (www / "hello.txt").write_text("hello\n")
    c.lab.run(c.web, [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", str(www)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c.lab.run(c.web, [sys.executable, str(TESTS / "split_server.py"), WEB_IP2, "8081", *SIGNATURE],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c.lab.run(c.web, ["iperf3", "-s", "-B", WEB_IP, "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager_out = open(tmp / "manager.json", "w")
    manager_err = open(tmp / "manager.log", "w")
    c.manager = c.lab.run(None, [sys.executable, "-m", "e2actors", "run", str(tmp / "policy.yaml"),
                                 "--hardware", str(tmp / "hw.yaml"), "--secret-file", str(secret),
                                 "--duration", "120", "--no-autoscale", "--json", "-v"],
                          stdout=manager_out, stderr=manager_err, env=env_with_tests(), cwd=str(tmp))
    for port, ip in ((8080, WEB_IP), (8081, WEB_IP2), (5201, WEB_IP)):
        wait_port(c.web, ip, port)
    # Deployed when s1's switch has its ports.
    deadline = time.monotonic() + 20
    while 'port="in"' not in c.agents["s1"].metrics():
        assert c.manager.poll() is None, (tmp / "manager.log").read_text()
        assert time.monotonic() < deadline, "the manager did not deploy in 20 s"
        time.sleep(0.2)
    t_deployed = time.monotonic()
    eventually_blocking(lambda: sum(instances_on(a) for a in c.agents.values()) > 0,
                        what="the instances in the agents' metrics")
    print(f"\ndeployed in {t_deployed - t_start:.1f}s; instances per agent: "
          + ", ".join(f"{n}: {instances_on(a)}" for n, a in c.agents.items()))

    # 1. A file fetched intact (ARP and both directions through the cluster).
    got = tmp / "got.bin"
    r = c.curl(f"http://{WEB_IP}:8080/blob.bin", got, 20)
    assert r.returncode == 0, f"curl through the cluster failed: {r.stderr}\n{(tmp / 'manager.log').read_text()}"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(blob).hexdigest()
    print(f"1 MB fetched intact in {time.monotonic() - t_deployed:.1f}s")

    # 2. Parental control: Host www.youtube.com is blocked, another host passes.
    r = c.curl(f"http://{WEB_IP}:8080/hello.txt", None, 3, ("-H", "Host: www.youtube.com"))
    assert r.returncode != 0, "a request for www.youtube.com must be blocked:\n" + "\n".join(
        line for a in c.agents.values() for line in a.metrics().splitlines()
        if line.startswith(("e2_edge", "e2_drops", "e2_instance_packets")))
    r = c.curl(f"http://{WEB_IP}:8080/hello.txt", None, 5, ("-H", "Host: www.example.org"))
    assert r.returncode == 0, r.stderr

    # 3. The IDS signature split across two TCP segments: flagged unsafe, logged to the pcap.
    c.curl(f"http://{WEB_IP2}:8081/id", None, 3)  # the flow is cut once unsafe: curl's result does not matter
    # (the logger flushes its files once a second; during the run, a logger group's pcap is in part
    # files, one per instance: PATH.part-INSTANCE-PID)
    pcaps = eventually_blocking(
        lambda: sorted(p for p in tmp.glob("data-s*/unsafe.pcap*")
                       if (p.name == "unsafe.pcap" or ".part-" in p.name) and p.stat().st_size > 24),
        what="the logger's pcap with the flagged flow")
    logged = pcaps[0]
    td = subprocess.run(["tcpdump", "-r", str(logged), "-n", "-A"], capture_output=True, text=True, timeout=20)
    assert td.returncode == 0, td.stderr
    # The segment that completed the signature (its first half went out before anything matched)
    # and what follows on that flow are unsafe: logged, not delivered.
    assert f"{WEB_IP2}.8081 > {CLI_IP}" in td.stdout and SIGNATURE[1].strip() in td.stdout, td.stdout[-2000:]
    print(f"IDS: {td.stdout.count(WEB_IP2 + '.8081')} packets of the flagged flow in the logger's pcap")

    # 4. iperf3 through the shaper: UDP offered above the rate, so the shaper sets the pace (what
    # TCP gets is lower by its header and ACK overhead, which the shaper counts as it should: it
    # shapes wire bits). The receiver's rate counts UDP payload (1400 of every 1442 wire bytes).
    r = subprocess.run(["ip", "netns", "exec", c.cli, "iperf3", "-c", WEB_IP, "-p", "5201", "-u",
                        "-b", f"{int(RATE_MBIT * 1.25)}M", "-l", "1400", "-t", "5", "-O", "1", "-J"],
                       capture_output=True, text=True, timeout=40)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    res = json.loads(r.stdout)["end"]
    got = res.get("sum_received") or res["sum"]
    bps = got["bits_per_second"]
    if "sum_received" not in res:
        bps *= 1 - got.get("lost_percent", 0) / 100
    print(f"iperf3 (UDP, offered {RATE_MBIT * 1.25:g} Mbit/s) through the shaper: {bps / 1e6:.2f} Mbit/s received, "
          f"configured {RATE_MBIT} Mbit/s ({bps / (RATE_MBIT * 1e6) * 100:.1f}%)")
    assert abs(bps - RATE_MBIT * 1e6) <= 0.1 * RATE_MBIT * 1e6

    # 5. Kill the agent holding the most instances, mid-transfer.
    victim = max(("s2", "s3"), key=lambda n: instances_on(c.agents[n]))
    def rx_in() -> float:
        return metric(c.agents["s1"].metrics(), "e2_port_packets_total", port="in", direction="rx")

    before = rx_in()
    bg = c.lab.run(c.cli, ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "--limit-rate", "200k",
                           f"http://{WEB_IP}:8080/blob.bin"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Mid-transfer: the download's packets are flowing through the deployment.
    eventually_blocking(lambda: rx_in() >= before + 50, 10, what="the download under way")
    t_kill = time.monotonic()
    c.agents[victim].kill()
    recovered = None
    while time.monotonic() - t_kill < 20:
        r = c.curl(f"http://{WEB_IP}:8080/hello.txt", None, 2, ("-H", "Host: www.example.org"))
        if r.returncode == 0:
            recovered = time.monotonic() - t_kill
            break
        time.sleep(0.2)
    bg.kill()
    # The manager's summary (SIGTERM ends the run early, with its summary).
    c.manager.send_signal(signal.SIGTERM)
    try:
        c.manager.wait(15)
    except subprocess.TimeoutExpired:
        c.manager.kill()
    manager_out.close()
    manager_err.close()
    summary = {}
    try:
        summary = json.loads((tmp / "manager.json").read_text() or "{}")
    except json.JSONDecodeError:
        pass
    events = [f"{e['kind']}: {e['detail']}" for e in summary.get("scaling_events", [])]
    print(f"killed {victim} ({'recovered in %.2fs' % recovered if recovered is not None else 'not recovered in 20 s'}); "
          f"manager events: {events}")
    print(f"whole test: {time.monotonic() - t_start:.1f}s")
    if recovered is None:
        if importlib.util.find_spec("e2actors.manager.recovery") is None:
            pytest.xfail("node-loss recovery (issue 8, e2actors/manager/recovery.py) is not there yet: "
                         "the manager does not re-place a lost agent's instances")
        pytest.fail(f"new connections did not work within 20 s of killing {victim}")
