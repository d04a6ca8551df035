"""Host learning on real traffic with loss: the switch's HostTracker and the HostFilter NF decide
every flow's host as tshark (reassembly on) does.

Topology (names carry a per-run prefix; all deleted afterwards, also on failure)::

    [cli] 198.18.16.1 ==veth== [rtr] ==veth== 198.18.17.2 [srv: nginx on 80 and 443 (TLS)]
                                  FORWARD drops      INPUT drops, tcpdump on its veth

Every link has a 400-byte MTU, so requests and ClientHellos span several segments. The router
drops every 4th client data segment (before the capture point: the capture sees later segments
first and the retransmission after them), the server every 5th of those it receives (after the
capture point: the capture sees the segment twice). Clients: curl over HTTP and HTTPS (each with
its own host name, a long path putting the Host header in a later segment), ``openssl s_client``
with and without SNI, and an HTTP/1.0 request without Host.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import need_root, need_tool
from hostkit import arrival_order_hosts, flow_of, hostfilter_hosts, tracker_hosts, tshark_hosts

from e2actors.packet.packet import Packet
from e2actors.packet.pcap import read_packets
from netns import Lab, sh, wait_port

pytestmark = pytest.mark.netns

CLI, RTR_C, RTR_S, SRV = "198.18.16.1", "198.18.16.254", "198.18.17.254", "198.18.17.2"
MTU = 400

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen {srv}:80;
        listen {srv}:443 ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_root()
    lab = Lab("h15")
    try:
        yield lab
    finally:
        lab.close()


def first_segment_stats(pkts: list[Packet]) -> collections.Counter:
    """Per TCP connection, how its first client data segment reached the capture: ``late`` (after
    a later segment) and/or ``twice`` (retransmitted)."""
    by_flow: dict = collections.defaultdict(list)
    client: dict = {}
    for p in pkts:
        if p.proto != 6:
            continue
        f = flow_of(p)
        if p.tcp_flags & 0x12 == 0x02:
            client[f] = p.direction
        if p.payload_len and client.get(f) == p.direction:
            by_flow[f].append(p.tcp_seq)
    c: collections.Counter = collections.Counter()
    for seqs in by_flow.values():
        low = min(seqs)
        c["late"] += seqs[0] != low
        c["twice"] += seqs.count(low) > 1
    return c


def test_hosts_agree_with_tshark_under_loss(lab: Lab, tmp_path) -> None:
    tshark, tcpdump, nginx = need_tool("tshark"), need_tool("tcpdump"), need_tool("nginx")
    curl, openssl = need_tool("curl"), need_tool("openssl")
    need_tool("iptables")
    cli, rtr, srv = lab.ns("cli"), lab.ns("rtr"), lab.ns("srv")
    c0, r0 = lab.veth("hc0", "hr0", cli, rtr)
    r1, s0 = lab.veth("hr1", "hs0", rtr, srv)
    for ns, dev in ((cli, c0), (rtr, r0), (rtr, r1), (srv, s0)):
        sh(f"ip -n {ns} link set dev {dev} mtu {MTU}")
    lab.addr(cli, c0, f"{CLI}/24")
    lab.addr(rtr, r0, f"{RTR_C}/24")
    lab.addr(rtr, r1, f"{RTR_S}/24")
    lab.addr(srv, s0, f"{SRV}/24")
    sh(f"ip -n {cli} route add default via {RTR_C}")
    sh(f"ip -n {srv} route add default via {RTR_S}")
    sh(f"ip netns exec {rtr} sysctl -qw net.ipv4.ip_forward=1")
    data = "-p tcp -d " + SRV + " -m length --length 120:65535 -m statistic --mode nth"
    sh(f"ip netns exec {rtr} iptables -A FORWARD {data} --every 4 --packet 0 -j DROP")
    sh(f"ip netns exec {srv} iptables -A INPUT {data} --every 5 --packet 2 -j DROP")

    d = tmp_path
    sh(f"{openssl} req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
       f"-subj /CN=test.example -keyout {d}/key.pem -out {d}/cert.pem")
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, srv=SRV))
    lab.run(srv, [nginx, "-c", str(d / "nginx.conf"), "-p", str(d)], stderr=subprocess.DEVNULL)
    wait_port(srv, SRV, 80)
    wait_port(srv, SRV, 443)
    path = str(d / "hosts.pcap")
    cap = lab.run(srv, [tcpdump, "-i", s0, "-U", "-n", "-w", path, "tcp"], stderr=subprocess.PIPE, text=True)
    assert "listening on" in cap.stderr.readline()  # type: ignore[union-attr]

    long_path = "/" + "p" * 500
    clients = []
    for i in range(5):
        clients.append([curl, "-s", "-o", "/dev/null", "--max-time", "20", "--resolve", f"h{i}.example:80:{SRV}",
                        f"http://h{i}.example{long_path}?i={i}"])
        clients.append([curl, "-sk", "-o", "/dev/null", "--max-time", "20", "--resolve",
                        f"t{i}.example:443:{SRV}", f"https://t{i}.example{long_path}"])
    for i in range(3):
        clients.append([openssl, "s_client", "-connect", f"{SRV}:443", "-servername", f"S{i}.Example"])
    clients.append([openssl, "s_client", "-connect", f"{SRV}:443", "-noservername"])
    clients.append([curl, "-s", "-0", "-o", "/dev/null", "--max-time", "20", "-H", "Host:", f"http://{SRV}/nohost"])
    for cmd in clients:
        r = subprocess.run(["ip", "netns", "exec", cli, *cmd], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
        assert r.returncode == 0, (cmd, r.stderr[-500:])
    r = lab.exec(cli, f"{curl} -s --max-time 20 http://{SRV}/END-MARKER")
    assert r.returncode == 0
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if any(b"END-MARKER" in p.payload for p in read_packets(path)):
                break
        except Exception:  # noqa: BLE001 - a record being written
            pass
        time.sleep(0.05)
    os.kill(cap.pid, signal.SIGINT)
    cap.wait(10)

    pkts = [p for p in read_packets(path) if b"END-MARKER" not in p.payload]
    marker = {flow_of(p) for p in read_packets(path) if b"END-MARKER" in p.payload}
    pkts = [p for p in pkts if flow_of(p) not in marker]
    stats = first_segment_stats(pkts)
    print(f"first client segments: {dict(stats)}")
    assert stats["late"] >= 1 and stats["twice"] >= 1, stats  # the loss did what it is meant to

    ref = tshark_hosts(tshark, path, {flow_of(p) for p in pkts if p.payload_len})
    assert len(ref) == len(clients)
    assert sorted(h for h in ref.values() if h) == sorted(
        [f"h{i}.example" for i in range(5)] + [f"t{i}.example" for i in range(5)] + [f"s{i}.example" for i in range(3)])
    tracked, waited = tracker_hosts(pkts)
    print(f"held until decided: max {max(waited.values()):.3f} s")
    assert tracked == ref
    filtered = hostfilter_hosts(pkts)
    assert filtered == ref
    before = arrival_order_hosts(pkts)
    print(f"arrival-order learning (before issue 15) wrong on {sum(before[f] != ref[f] for f in ref)} "
          f"of {len(ref)} flows")
