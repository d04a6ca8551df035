"""Cluster-wide Prometheus metrics, served by the manager's process from the stats it polls.

One scrape target gives the whole deployment: ports, drops by reason, instances, queues, flows,
instances per NF and scaling events, labelled by server, NF and instance. Names follow Prometheus
conventions: ``e2_..._total`` counters, bytes and seconds as base units.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from e2actors.manager.instances import nf_of
from e2actors.runtime.metrics import Metrics, Sample

__all__ = ["ClusterMetrics", "histograms_from_stats", "reason_label", "samples_from_stats"]

# Drop reasons whose tail names something (a host, an instance, a server, a port): the label keeps
# the kind of reason only, so label values come from a fixed vocabulary (a blocked host's name is
# never a label: every name would be a series of its own).
_NAMED_TAILS = ("blocked host ", "nf error in ", "lost with failed instance ", "lost with replaced instance ",
                "held for vanished instance ", "output of unknown instance ", "unknown instance ",
                "unknown nf ", "no port ", "no switch for server ", "bad remote target ", "bad target ",
                "no instance of ", "ingress window full ")
_NAMED_MIDDLE = re.compile(r"^(instance|link to|remote|nf) \S+ (gone|stalled|congested|unreachable|failed|removed|"
                           r"has no actor)$")
#: Distinct reason labels kept per place; more are counted under ``other``.
MAX_REASONS = 64


def reason_label(reason: str) -> str:
    """The ``reason`` label of a drop reason (see the comment above): its kind, names left out."""
    for t in _NAMED_TAILS:
        if reason.startswith(t):
            return t.strip()
    m = _NAMED_MIDDLE.match(reason)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return reason


def _drops(add: Any, labels: dict[str, str], drops: dict[str, int]) -> None:
    merged: Counter = Counter()
    for reason, n in drops.items():
        merged[reason_label(reason)] += n
    if len(merged) > MAX_REASONS:  # (a pipelet with a reason per packet: bounded all the same)
        keep = dict(merged.most_common(MAX_REASONS - 1))
        keep["other"] = sum(merged.values()) - sum(keep.values())
        merged = Counter(keep)
    for reason, n in merged.items():
        add(("e2_drops_total", "counter", "Packets dropped, by where and why", {**labels, "reason": reason}, n))


def histograms_from_stats(st: dict[str, Any]) -> list[tuple]:
    """Batch processing time histograms per NF (instances of an NF summed), as
    ``(name, help, labels, [(le, cumulative count)...], sum)``."""
    from e2actors.nf.runner import BATCH_BUCKETS

    per_nf: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for inst, i in st.get("instances", {}).items():
        if not isinstance(i, dict) or "batch_hist" not in i:
            continue
        nf = nf_of(inst)
        h = per_nf.setdefault(nf, [0] * (len(BATCH_BUCKETS) + 1))
        for k, c in enumerate(i["batch_hist"]):
            h[k] += c
        sums[nf] = sums.get(nf, 0.0) + i["busy_seconds"]
    out = []
    for nf, h in per_nf.items():
        cum, buckets = 0, []
        for le, c in zip(BATCH_BUCKETS, h):
            cum += c
            buckets.append((repr(le), float(cum)))
        buckets.append(("+Inf", float(cum + h[-1])))
        out.append(("e2_batch_seconds", "Time an NF instance spent on one batch", {"nf": nf}, buckets, sums[nf]))
    out.extend(hop_histograms(st))
    return out


def hop_histograms(st: dict[str, Any]) -> list[tuple]:
    """Batch sizes per hop of each switch (``port_in``: what a port read; ``to_instance`` /
    ``from_instance``: batches to and from local NF instances; ``stream_work``: stream chunks'
    packets per work; ``to_switch`` / ``from_switch``: between servers; ``to_port``: out of a
    port; ``inline``: into an inline NF), as ``e2_hop_batch_packets``."""
    from e2actors.switch.dataplane import HOP_BUCKETS

    out = []
    for server, s in st.get("switches", {}).items():
        if not isinstance(s, dict):
            continue
        for hop, h in (s.get("hops") or {}).items():
            cum, buckets = 0, []
            for le, c in zip(HOP_BUCKETS, h["buckets"]):
                cum += c
                buckets.append((str(le), float(cum)))
            buckets.append(("+Inf", float(cum + h["buckets"][-1])))
            out.append(("e2_hop_batch_packets", "Packets per batch at one hop of a switch",
                        {"server": server, "hop": hop}, buckets, float(h["packets"])))
    return out


def samples_from_stats(st: dict[str, Any], instances_per_nf: dict[str, int], events: list[Any],
                       assignment: dict[str, str]) -> list[Sample]:
    out: list[Sample] = []
    add = out.append
    for server, s in st.get("switches", {}).items():
        if not isinstance(s, dict) or "ports" not in s:
            continue
        for port, p in s["ports"].items():
            # Only the directions a port has (a capture replayed has no tx, an output file no rx).
            dirs = [d for d, k in (("rx", "input"), ("tx", "output")) if p.get(k, True)]
            for d in dirs:
                add(("e2_port_packets_total", "counter", "Packets through an external port",
                     {"server": server, "port": port, "direction": d}, p[f"{d}_packets"]))
                add(("e2_port_bytes_total", "counter", "Bytes through an external port",
                     {"server": server, "port": port, "direction": d}, p[f"{d}_bytes"]))
            _drops(add, {"server": server, "where": f"port {port}"}, p["drops"])
        _drops(add, {"server": server, "where": "switch"}, s["drops"])
        for edge, n in s["routes"].items():
            add(("e2_edge_packets_total", "counter", "Packets that took a policy edge",
                 {"server": server, "edge": edge}, n))
        add(("e2_remote_packets_total", "counter", "Packets sent to other servers' switches",
             {"server": server}, sum(s.get("remote_tx", {}).values())))
        add(("e2_queue_depth", "gauge", "Messages waiting in an actor's mailbox",
             {"server": server, "actor": "switch"}, s["mailbox"]["depth"]))
        add(("e2_switch_inflight_batches", "gauge", "Batches sent to local instances, not yet back",
             {"server": server}, s["inflight"]))
        add(("e2_switch_queued_packets", "gauge", "Packets waiting in the switch for local instances",
             {"server": server}, s.get("queued", 0)))
        cr = s.get("credits") or {}
        for origin, n in (cr.get("in_flight") or {}).items():
            add(("e2_ingress_credits_in_use", "gauge", "Packets an input port admitted that are still in the "
                 "deployment (its credit window in use)", {"server": server, "origin": str(origin)}, max(0, n)))
        for nf, g in s.get("groups", {}).items():
            sst = g.get("stream") if isinstance(g, dict) else None
            if sst:  # a bytestream NF whose flows this switch reassembles
                lab = {"server": server, "nf": nf}
                add(("e2_stream_waiting_packets", "gauge",
                     "Packets in the switch waiting for their stream bytes or an instance's verdict",
                     lab, sst["pending"]))
                add(("e2_stream_chunks_total", "counter", "Reassembled stream chunks shipped to instances",
                     lab, sst["chunks"]))
                add(("e2_stream_gaps_total", "counter", "Stream holes given up on (timeout or buffer bound)",
                     lab, sst["gaps"]))
    for inst, i in st.get("instances", {}).items():
        if not isinstance(i, dict) or "packets_in" not in i:
            continue
        lab = {"nf": nf_of(inst), "instance": inst, "server": assignment.get(inst, "?")}
        add(("e2_instance_packets_total", "counter", "Packets into and out of an NF instance",
             {**lab, "direction": "in"}, i["packets_in"]))
        add(("e2_instance_packets_total", "counter", "Packets into and out of an NF instance",
             {**lab, "direction": "out"}, i["packets_out"]))
        add(("e2_instance_bytes_total", "counter", "Bytes into and out of an NF instance",
             {**lab, "direction": "in"}, i["bytes_in"]))
        add(("e2_instance_bytes_total", "counter", "Bytes into and out of an NF instance",
             {**lab, "direction": "out"}, i.get("bytes_out", 0)))
        add(("e2_instance_busy_seconds_total", "counter", "Time an instance spent processing", lab,
             i["busy_seconds"]))
        _drops(add, {"server": lab["server"], "where": inst}, i.get("drops", {}))
        add(("e2_instance_refused_batches_total", "counter", "Batches a full instance queue refused "
             "(their packets are counted by the sending switch as queue full drops)", lab, i.get("mailbox_dropped", 0)))
        if i.get("lost"):
            add(("e2_drops_total", "counter", "Packets dropped, by where and why",
                 {"server": lab["server"], "where": inst, "reason": "nf error"}, i["lost"]))
        add(("e2_active_flows", "gauge", "Flows in an instance's flow table", lab, i["flows"]))
        add(("e2_instance_restarts_total", "counter", "Times the supervisor restarted an instance", lab,
             i.get("restarts", 0)))
        add(("e2_queue_depth", "gauge", "Messages waiting in an actor's mailbox",
             {"server": lab["server"], "actor": inst}, i.get("queue", 0)))
    for nf, n in instances_per_nf.items():
        add(("e2_nf_instances", "gauge", "Running (not draining) instances of an NF", {"nf": nf}, n))
    kinds: Counter = Counter((e.nf, e.kind) for e in events)
    for (nf, kind), n in kinds.items():
        add(("e2_scaling_events_total", "counter", "Deployment changes: scale-out, scale-in, retire, ...",
             {"nf": nf, "kind": kind}, n))
    return out


class ClusterMetrics:
    """Serves :func:`samples_from_stats` of the manager's latest poll."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.metrics = Metrics(interval=0.25)
        self._samples: list[Sample] = []
        self.metrics.add_source(lambda: self._samples)

    def update(self, st: dict[str, Any]) -> None:
        m = self.manager
        self._samples = samples_from_stats(st, m.instance_counts(), m.events, dict(m.plan_.assignment))
        self.metrics.extra_histograms = histograms_from_stats(st)
        self.metrics.snapshot()

    async def start(self, port: int, addr: str = "127.0.0.1") -> int:
        return await self.metrics.start(port, addr)

    async def stop(self) -> None:
        await self.metrics.stop()
