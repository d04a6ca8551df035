"""Profiling: measure what share of the traffic takes each policy edge, on a sample capture.

The sample's packets are sorted into traffic classes by their entry filters (the first class whose
filter matches), then pushed through the policy in DAG order: each NF's real pipelet runs on
everything that reached it (in-process, under :func:`e2actors.testing.arun_pipelet`: bytestream NFs
get reassembled streams, time is packet time), and its output on each port is routed as the switch
routes it (the edges from that port in file order, the first whose condition holds). An edge's
fraction is the packets that took it over the packets that entered its source, per class.

NFs without outgoing edges (sinks such as a logger) are not run: nothing downstream depends on
them. Relative paths in an NF's config that name files in the policy's directory are taken from
there, as in a run.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

import networkx as nx

from e2actors.manager.conditions import compile_edge_condition
from e2actors.manager.policy import DROP, IN, OUT, Policy, resolve_class, resolve_config
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import read_packets

__all__ = ["aprofile", "profile"]


def profile(policy: Policy, sample: str | os.PathLike | Iterable[Packet],
            max_packets: int | None = None) -> dict[tuple[str, int], float]:
    """``(class, edge index) -> fraction`` measured on ``sample`` (a capture path or packets);
    pairs whose source saw no packet of the class are left out."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(aprofile(policy, sample, max_packets))
    raise RuntimeError("profile() called inside a running event loop: use await aprofile(...)")


async def aprofile(policy: Policy, sample: str | os.PathLike | Iterable[Packet],
                   max_packets: int | None = None) -> dict[tuple[str, int], float]:
    from e2actors.testing import arun_pipelet

    packets: Iterable[Packet] = read_packets(sample, port=IN) if isinstance(sample, (str, os.PathLike)) else sample
    class_match = [(c.name, compile_edge_condition(c.filter)) for c in policy.classes]

    def classify(pkt: Packet) -> str | None:
        for name, m in class_match:
            if m(pkt):
                return name
        return None

    cls_of: dict[int, str] = {}
    inputs: dict[str, list[Packet]] = {n: [] for n in policy.nfs}
    entered: Counter[tuple[str, str]] = Counter()
    taken: Counter[tuple[str, int]] = Counter()
    conds = {e.index: compile_edge_condition(e.when) for e in policy.edges}

    def route(node: str, port: str | None, pkts: Iterable[Packet]) -> None:
        edges = [e for e in policy.edges_from(node) if e.port is None or port is None or e.port == port]
        for pkt in pkts:
            c = cls_of.get(id(pkt))
            if c is None:
                c = classify(pkt)
                if c is None:
                    continue
                cls_of[id(pkt)] = c
            host = hosts.get(pkt.flow_key)
            for e in edges:
                if e.applies_to(c) and conds[e.index](pkt, host):
                    taken[(c, e.index)] += 1
                    if e.target not in (OUT, DROP):
                        inputs[e.target].append(pkt)
                    break

    start: list[Packet] = []
    keep: list[Packet] = []  # holds every packet so ids stay unique
    for n, pkt in enumerate(packets):
        if max_packets is not None and n >= max_packets:
            break
        if pkt.reason is not None:
            continue
        c = classify(pkt)
        if c is None:
            continue
        cls_of[id(pkt)] = c
        entered[(c, IN)] += 1
        start.append(pkt)
    keep.extend(start)
    # Offline, every flow's host (HTTP Host / TLS SNI) can be learnt before routing, so a
    # ``domain`` edge takes the whole flow, as the switch's hold makes it do live.
    from e2actors.switch.hosts import UNKNOWN, HostTracker

    tracker = HostTracker()
    hosts: dict = {}
    for pkt in start:
        h = tracker.lookup(pkt, 0.0)
        if h is not UNKNOWN and h is not None:
            hosts[pkt.flow_key] = h
    route(IN, None, start)
    for node in nx.topological_sort(policy.graph):
        if node not in policy.nfs:
            continue
        pkts = inputs[node]
        for p in pkts:
            entered[(cls_of[id(p)], node)] += 1
        if not pkts or not policy.edges_from(node):
            continue
        spec = policy.nfs[node]
        res = await arun_pipelet(resolve_class(spec.cls), pkts, config=resolve_config(dict(spec.config), policy.base_dir))
        for port, out in res.outputs.items():
            keep.extend(out)
            route(node, port, out)
    fractions: dict[tuple[str, int], float] = {}
    for e in policy.edges:
        for c in policy.classes:
            n_in = entered[(c.name, e.source)]
            if n_in and e.applies_to(c.name):
                fractions[(c.name, e.index)] = taken[(c.name, e.index)] / n_in
    return fractions


def describe(fractions: dict[tuple[str, int], float], policy: Policy) -> list[dict[str, Any]]:
    """The measured fractions as rows: class, edge label, fraction."""
    return [{"class": c, "edge": policy.edges[i].label, "fraction": round(f, 6)} for (c, i), f in fractions.items()]
