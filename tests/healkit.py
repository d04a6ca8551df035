"""Helpers for the tests of moves, updates and failures (a manager with workers, memory ports)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from e2actors.manager.manager import Manager, Traffic
from e2actors.manager.policy import Policy
from e2actors.packet.build import ether, ipv4, udp
from e2actors.packet.packet import Packet
from nfkit import chain_policy

EXT = "198.19.0.1"
SERVER = "203.0.113.9"


#: Two flow-affine NFs that keep per-flow state (a firewall, parental control): the chain the
#: tests and benchmarks of a lost shard replay, its worker killed or paused mid-replay.
SHARD_CHAIN = """name: shardheal
nfs:
  fw: {class: e2actors.nf.builtin.firewall:Firewall, affinity: flow,
       config: {default: allow, rules: [{deny: "udp port 53"}]}}
  parental: {class: e2actors.nf.builtin.hostfilter:HostFilter, affinity: flow, config: {block: [youtube.com]}}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: fw}
  - {from: fw, to: parental}
  - {from: parental, to: out}
"""


def nat_policy(name: str) -> str:
    """A policy of one NAT between ``in`` and ``out`` (source NAT to EXT for 10.0.0.0/8)."""
    return chain_policy("nat", f"class: e2actors.nf.builtin.NAT, affinity: flow, "
                               f"config: {{external: {EXT}, internal: [10.0.0.0/8]}}", name=name)


def out_frame(k: int, seq: int = 0) -> bytes:
    """Connection ``k``'s outbound UDP datagram: 10.0.x.y:(1024+k) -> SERVER:53."""
    src = f"10.0.{k // 250}.{k % 250 + 1}"
    return ether(ipv4(src, SERVER, 17, udp(src, SERVER, 1024 + k % 60000, 53, payload=b"q%06d" % seq)))


def reply_frame(ext_port: int, seq: int = 0) -> bytes:
    """A reply from SERVER to the NAT's external address and port."""
    return ether(ipv4(SERVER, EXT, 17, udp(SERVER, EXT, 53, ext_port, payload=b"r%06d" % seq)))


def pkts(frames: list[bytes]) -> list[Packet]:
    now = time.time()
    return [Packet(d, now, "in") for d in frames]


async def deploy(tmp_path: Path, policy_text: str, **kw) -> tuple[Manager, object, object]:
    pol = tmp_path / "policy.yaml"
    pol.write_text(policy_text)
    kw.setdefault("workers", 2)
    kw.setdefault("worker_cores", 2)
    kw.setdefault("autoscale", False)
    kw.setdefault("shards", False)  # the ports in this process, the instances on the workers
    mgr = Manager(**kw)
    plan = mgr.plan(Policy.load(pol))
    await mgr.deploy(plan, Traffic())
    sw = mgr.node.cell(mgr.servers["main"].switch).actor  # type: ignore[union-attr]
    return mgr, sw.ports["in"], sw.ports["out"]


async def feed(port, frames: list[bytes], rate: float, chunk: int = 16) -> int:
    """Inject ``frames`` at about ``rate`` packets/s; returns how many."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(frames), chunk):
        port.inject(pkts(frames[i:i + chunk]))
        await asyncio.sleep(max(0.0, (i + chunk) / rate - (loop.time() - t0)))
    return len(frames)


def account(s: dict) -> tuple[int, int, int]:
    """(packets in, packets out, counted drops) of a summary."""
    return s["packets_in"], s["packets_out"], sum(s["drops"].values())
