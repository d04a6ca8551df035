"""Per-packet rate of the NF group load balancer (``Balancer.pick``) over a generated trace.

For each affinity (none, flow, host), with 4 members: ``pick(pkt, ts)`` (the balancer computes
the packet's flow key) and ``pick(pkt, ts, key)`` (the switch already has the key from its flow
cache, the way the switch calls it). Each round runs a fresh balancer over the whole trace (so
every flow starts, lives and ends as in the trace); the best round counts. Also: the cost of a
table update (a scale-out 4 -> 5 with the flow table full) and of ``Packet.flow_key`` alone.

    python benchmarks/balancer.py [--flows N] [--rounds R]

Last line: one JSON object with ``pick_flow_per_s`` (affinity flow, key given),
``pick_flow_key_per_s`` (affinity flow, key computed), likewise for none and host,
``flow_key_per_s`` and ``update_ms``.
"""

from __future__ import annotations

import argparse
import json
import time

from e2actors.packet.traffic import generate
from e2actors.switch.balancer import Balancer
from e2actors.switch.table import Member

MEMBERS = [Member(f"nf-{i}", "s1") for i in range(4)]


def run(trace, keys, affinity: str, with_key: bool) -> float:
    bal = Balancer(MEMBERS, affinity)
    pick = bal.pick
    t = time.perf_counter()
    if with_key:
        for p, k in zip(trace, keys):
            pick(p, p.ts, k)
    else:
        for p in trace:
            pick(p, p.ts)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    trace = generate(a.flows, seed=1)
    keys = [p.flow_key for p in trace]
    n = len(trace)
    configs = (
        ("pick_none_per_s", "none", True),
        ("pick_flow_per_s", "flow", True),
        ("pick_host_per_s", "host", True),
        ("pick_none_key_per_s", "none", False),
        ("pick_flow_key_per_s", "flow", False),
        ("pick_host_key_per_s", "host", False),
    )
    best_t = dict.fromkeys((c[0] for c in configs), float("inf"))
    for _ in range(a.rounds):  # interleaved, so a busy moment of the machine hits all alike
        for name, aff, wk in configs:
            best_t[name] = min(best_t[name], run(trace, keys, aff, wk))
    res = {name: n / t for name, t in best_t.items()}
    best = float("inf")
    for _ in range(a.rounds):
        t = time.perf_counter()
        for p in trace:
            p.flow_key
        best = min(best, time.perf_counter() - t)
    res["flow_key_per_s"] = n / best
    # a scale-out with the table full of live flows
    bal = Balancer(MEMBERS, "flow", flow_timeout=1e9)
    for p, k in zip(trace, keys):
        bal.pick(p, p.ts, k)
    live = len(bal)
    t = time.perf_counter()
    moved = bal.update([*MEMBERS, Member("nf-4", "s1")], trace[-1].ts)
    update_ms = (time.perf_counter() - t) * 1000
    print(f"trace: {n} packets, {a.flows} generated flows; 4 members, 4096 buckets")
    for k, v in res.items():
        print(f"{k:22} {v:>12,.0f} packets/s ({1e9 / v:,.0f} ns/packet)")
    print(f"update 4 -> 5 members with {live} live flows: {update_ms:.1f} ms ({moved})")
    print(json.dumps({**{k: round(v) for k, v in res.items()}, "update_ms": round(update_ms, 1)}))


if __name__ == "__main__":
    main()
