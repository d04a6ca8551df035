"""Shards: one switch per core. The ingress is split by flow over the switches of several servers
(worker processes of one machine), each running the whole policy for its own flows.

With ``e2actors run --workers N`` the deployment has N servers ``w1..wN``, one OS process each,
and no switch in the manager's process: each worker's switch reads the input itself — a capture
(every worker reads the file and keeps the flows of its shard, by the symmetric flow hash of
:func:`e2actors.switch.balancer.shard_of`) or a live interface (the workers join one
``PACKET_FANOUT`` group in hash mode, so the kernel hands each its flows) — and writes its own
part of the output (``--out-pcap F`` is written as ``F.w1``, ``F.w2``, ... and merged into ``F``
by timestamp at the end; each flow's packets keep their order). The per-packet path never leaves
a worker: every NF has an instance in each shard, and each switch balances new flows over its
own server's instances (:attr:`~e2actors.switch.table.GroupSpec.local`); only groups with host
affinity balance over all instances (a host's flows arrive at every shard), and a group with
fewer instances than shards (``max:`` below the shard count) is reached across shards.

Pure planning code; the manager and the routing use it.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Mapping

from e2actors.manager.hardware import Hardware, PortPlace, Server
from e2actors.manager.instances import InstanceGraph, nf_of
from e2actors.manager.placement import Placement
from e2actors.manager.policy import IN, OUT, Policy
from e2actors.packet.pcap import PcapWriter, open_capture

__all__ = ["merge_captures", "place_shards", "shard_hardware", "shard_path", "shard_port_params",
           "shard_targets"]


def shard_hardware(workers: int, cores: int) -> Hardware:
    """``workers`` servers ``w1..wN`` with ``cores`` each; the external ports on every one of them."""
    servers = [Server(f"w{i}", cores) for i in range(1, workers + 1)]
    hw = Hardware(servers, {IN: PortPlace(IN, "w1"), OUT: PortPlace(OUT, "w1")})
    hw.shards = tuple(s.name for s in servers)
    return hw


def shard_targets(policy: Policy, counts: Mapping[str, int], shards: tuple[str, ...]) -> dict[str, int]:
    """Instances per NF in a sharded deployment: at least one per shard (inline NFs run in every
    switch anyway), within the NF's ``max``."""
    out = {}
    for nf, n in counts.items():
        spec = policy.nfs[nf]
        want = n if spec.inline else max(n, len(shards))
        if spec.max_instances is not None:
            want = min(want, spec.max_instances)
        out[nf] = want
    return out


def place_shards(graph: InstanceGraph, hardware: Hardware, placed: Mapping[str, str] | None = None) -> Placement:
    """Each NF's instances spread over the shards, the ones already placed kept: a new instance
    goes to the shard with the fewest instances of its NF (ties: the earlier shard)."""
    shards = hardware.shards
    where: dict[str, str] = {IN: shards[0], OUT: shards[0]}
    # (a lost shard keeps its name with no cores: new instances go to the others)
    live = tuple(s for s in shards if hardware.servers[s].cores > 0) or shards
    for nf in dict.fromkeys(graph.nf[i] for i in graph.instances):
        if nf in (IN, OUT):
            continue
        insts = graph.of(nf)
        count = {s: 0 for s in live}
        for i in insts:
            s = (placed or {}).get(i)
            if s in count:
                where[i] = s
                count[s] += 1
        heap = [(c, k, s) for k, (s, c) in enumerate(count.items())]
        heapq.heapify(heap)
        for i in insts:
            if i in where:
                continue
            c, k, s = heapq.heappop(heap)
            where[i] = s
            heapq.heappush(heap, (c + 1, k, s))
    return Placement(where, shard_cost(graph, where), "shards", 0.0, None, _feasible(graph, hardware, where))


def shard_cost(graph: InstanceGraph, where: Mapping[str, str]) -> float:
    """Packets/s between shards: switches keep a flow in its shard wherever the target NF has an
    instance there (host-affinity groups aside, whose traffic is spread over all instances)."""
    local_nfs = {graph.nf[i] for i in graph.instances}
    by_nf: dict[str, set[str]] = {}
    for i, s in where.items():
        by_nf.setdefault(nf_of(i), set()).add(s)
    shards = {s for s in where.values()}
    cost = 0.0
    for (u, v), w in graph.edges.items():
        nv = graph.nf[v]
        if nv in (IN, OUT) or nv not in local_nfs:
            continue
        if by_nf.get(nv, set()) != shards:  # some shards lack an instance: part of it crosses
            cost += w * (1 - len(by_nf.get(nv, ())) / max(len(shards), 1))
    return cost


def _feasible(graph: InstanceGraph, hardware: Hardware, where: Mapping[str, str]) -> bool:
    used: dict[str, int] = {}
    for i, s in where.items():
        used[s] = used.get(s, 0) + graph.cores.get(i, 0)
    return all(used.get(n, 0) <= s.cores for n, s in hardware.servers.items())


def shard_path(path: str, server: str) -> str:
    """Where shard ``server`` writes its part of output ``path``."""
    return f"{path}.{server}"


def shard_port_params(kind: str, params: Mapping[str, object], server: str, shards: tuple[str, ...],
                      group: int) -> dict[str, object]:
    """A port's parameters on one shard: the capture's flows of this shard, this shard's part of
    an output file, the kernel's fanout group of a live interface."""
    out = dict(params)
    k = shards.index(server)
    if kind == "pcap-in":
        out["shard"] = [k, len(shards)]
    elif kind == "pcap-out" and out.get("path"):
        out["path"] = shard_path(str(out["path"]), server)
    elif kind == "afpacket" and len(shards) > 1:
        out["fanout"] = group  # (one group per interface: the caller gives each port its own)
    return out


def merge_captures(parts: Iterable[str], out: str) -> int:
    """Merge pcap files by timestamp into ``out`` (stable: equal times keep the parts' order, and
    each part's own order is kept), then delete the parts. Returns the packets written."""
    parts = [p for p in parts if os.path.exists(p)]
    readers = [open_capture(p) for p in parts]
    n = 0
    try:
        its = [iter(r) for r in readers]

        def keyed(k: int, it: Iterable) -> Iterable:
            for j, rec in enumerate(it):
                yield (rec[0], k, j, rec)

        w = PcapWriter(out)
        try:
            for _ts, _k, _j, (ts, data, wirelen, _lt, _if) in heapq.merge(*(keyed(k, it) for k, it in enumerate(its))):
                w.write(data, ts, wirelen)
                n += 1
        finally:
            w.close()
    finally:
        for r in readers:
            r.close()
    for p in parts:
        os.unlink(p)
    return n
