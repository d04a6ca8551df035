"""Per-flow host decisions by tshark, the switch's HostTracker, the HostFilter NF (and, for
contrast, the arrival-order buffering host learning used before), over one capture.

A flow is named by its two ends, ``frozenset({(addr, port), (addr, port)})``; every function
returns ``{flow: host or None}`` for the TCP flows that carried client payload.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from e2actors.nf.builtin.hostfilter import HostFilter
from e2actors.packet.l7 import MORE, normalize_host, peek_host
from e2actors.packet.packet import Packet, format_addr
from e2actors.switch.hosts import UNKNOWN, HostTracker
from e2actors.testing import run_pipelet

# TCP reassembly on, out-of-order segments reassembled (off by default in tshark 4.0), HTTP
# headers and TLS records across segments (on by default, stated anyway).
TSHARK_REASSEMBLY = ["-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tcp.reassemble_out_of_order:TRUE",
                     "-o", "tcp.analyze_sequence_numbers:TRUE", "-o", "http.desegment_headers:TRUE",
                     "-o", "tls.desegment_ssl_records:TRUE"]

Flow = frozenset


def flow_of(pkt: Packet) -> Flow:
    return frozenset({(format_addr(pkt.src), pkt.sport), (format_addr(pkt.dst), pkt.dport)})


def data_flows(pkts: Iterable[Packet]) -> set[Flow]:
    """TCP flows in which some packet carries payload."""
    return {flow_of(p) for p in pkts if p.proto == 6 and p.payload_len > 0 and p.reason is None}


def tshark_hosts(tshark: str, path: str, flows: set[Flow]) -> dict[Flow, str | None]:
    """The first HTTP request's Host or the ClientHello's SNI of each flow, as tshark decodes it."""
    cmd = [tshark, "-r", path, *TSHARK_REASSEMBLY, "-T", "fields", "-E", "separator=|", "-E", "occurrence=f",
           "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "ipv6.dst",
           "-e", "tcp.dstport", "-e", "http.host", "-e", "tls.handshake.extensions_server_name",
           "-Y", "http.request || tls.handshake.type == 1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got: dict[Flow, str | None] = dict.fromkeys(flows)
    seen: set[Flow] = set()
    for line in out.splitlines():
        s4, s6, sp, d4, d6, dp, host, sni = line.split("|")
        f = frozenset({(s4 or s6, int(sp)), (d4 or d6, int(dp))})
        if f in seen or f not in got:
            continue  # the first request of the connection decides
        seen.add(f)
        got[f] = normalize_host(host or sni) if (host or sni) else None
    return got


def _switch_default(name: str) -> float:
    """The switch's own default for one of its hold bounds (so that the tests decide as it does)."""
    import inspect

    from e2actors.switch.dataplane import Dataplane

    return inspect.signature(Dataplane).parameters[name].default


def tracker_hosts(pkts: list[Packet], hold_packets: int = _switch_default("hold_packets"),
                  hold_seconds: float = _switch_default("hold_seconds"),
                  tracker: HostTracker | None = None) -> tuple[dict[Flow, str | None], dict[Flow, float]]:
    """What the switch decides: every packet through ``HostTracker.lookup`` in arrival order (on
    packet time), a flow given up once it held ``hold_packets`` packets or waited ``hold_seconds``
    (the switch's hold bounds, its defaults unless given), ``expire`` after every packet (its
    housekeeping). Also returns how long each flow was held (first packet to decision)."""
    tr = tracker or HostTracker()
    first: dict[Flow, float] = {}
    count: dict[Flow, int] = {}
    waited: dict[Flow, float] = {}
    for p in pkts:
        if p.reason is not None:
            continue
        f = flow_of(p)
        h = tr.lookup(p, p.ts)
        if f in waited:
            pass
        elif h is UNKNOWN:
            first.setdefault(f, p.ts)
            count[f] = count.get(f, 0) + 1
            if count[f] >= hold_packets or p.ts - first[f] >= hold_seconds:
                tr.give_up(p, p.ts)
                waited[f] = p.ts - first[f]
        else:
            waited[f] = p.ts - first.get(f, p.ts)
        tr.expire(p.ts)
    keys = {flow_of(p): p.flow_key for p in pkts if p.reason is None}
    return {f: tr.known.get(keys[f]) for f in data_flows(pkts)}, waited


def hostfilter_hosts(path_or_pkts) -> dict[Flow, str | None]:
    """``meta["host"]`` the HostFilter NF put on each flow's packets (run on packet time)."""
    res = run_pipelet(HostFilter, path_or_pkts, config={})
    got: dict[Flow, set] = {}
    pkts = [p for lst in res.outputs.values() for p in lst]
    for p in pkts:
        got.setdefault(flow_of(p), set())
        if p.meta_if_any and "host" in p.meta_if_any:
            got[flow_of(p)].add(p.meta_if_any["host"])
    assert all(len(v) <= 1 for v in got.values()), got
    return {f: (next(iter(got[f])) if got.get(f) else None) for f in data_flows(pkts)}


def arrival_order_hosts(pkts: list[Packet], max_bytes: int = 8192) -> dict[Flow, str | None]:
    """The host learning before issue 15: every payload appended in arrival order, then peeked."""
    bufs: dict[Flow, bytes] = {}
    out: dict[Flow, str | None] = {}
    for p in pkts:
        f = flow_of(p)
        if p.proto != 6 or p.payload_len <= 0 or f in out:
            continue
        bufs[f] = bufs.get(f, b"") + p.payload
        state, host, _why = peek_host(bufs[f], max_bytes)
        if state != MORE:
            out[f] = host
    return {f: out.get(f) for f in data_flows(pkts)}
