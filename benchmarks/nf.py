"""Built-in NF throughput through run_pipelet, and the IDS matcher against a naive loop.

Each NF runs over the same generated trace (``--flows`` flows of the mixed profile) through
:func:`e2actors.testing.arun_pipelet`, i.e. the same runner an NF instance uses, with batches of
32; the figure is packets in per second of wall time (best of ``--rounds``). A pass-through
pipelet over the same trace is the baseline (what the runner itself costs). The IDS matching rate
comes from ``benchmarks/nf_ids.py``: 1,000 patterns over generated stream bytes, against a plain
``bytes.find`` loop over the same patterns and bytes.

    python benchmarks/nf.py [--flows N] [--rounds R]

Last line: one JSON object with firewall_per_s, ids_per_s, nat_per_s, hostfilter_per_s,
shaper_per_s, ids_mb_per_s and ids_naive_mb_per_s. Target: ids_mb_per_s >= 20x ids_naive_mb_per_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import nf_ids  # noqa: E402

from e2actors.nf.builtin import IDS, NAT, Firewall, HostFilter, Shaper  # noqa: E402
from e2actors.nf.pipelet import Pipelet  # noqa: E402
from e2actors.packet.packet import Packet  # noqa: E402
from e2actors.packet.traffic import frames  # noqa: E402
from e2actors.runtime.node import tune_gc  # noqa: E402
from e2actors.testing import arun_pipelet  # noqa: E402

RULES = [
    'alert tcp any any -> any any (msg:"passwd"; content:"/etc/passwd"; sid:1;)',
    'alert tcp any any -> any any (msg:"root"; content:"uid=0(root)"; sid:2;)',
    'alert tcp any any -> any any (msg:"cmd"; content:"cmd.exe"; nocase; sid:3;)',
]
NFS: list[tuple[str, type[Pipelet], dict]] = [
    ("passthrough", Pipelet, {}),
    ("firewall", Firewall, {"rules": ["allow tcp dst port 80 or tcp dst port 443", "allow udp port 53",
                                      "deny tcp port 22", "allow icmp or icmp6"], "default": "deny"}),
    ("ids", IDS, {"rules": RULES}),
    ("nat", NAT, {"external": "198.19.255.1", "external6": "2001:db8:ffff::1",
                  "internal": ["198.18.0.0/16", "2001:db8::/48"]}),
    ("hostfilter", HostFilter, {"block": ["youtube.com"], "tag": {"example.com": "example"}}),
    ("shaper", Shaper, {"rate": "10Gbit", "burst": "100Mbit"}),
]


async def rate(cls: type[Pipelet], config: dict, trace: list[tuple[float, bytes]], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        pkts = [Packet(d, ts, "in") for ts, d in trace]  # fresh packets: NFs write metadata
        t0 = time.perf_counter()
        await arun_pipelet(cls, pkts, config=config)
        best = min(best, time.perf_counter() - t0)
    return len(trace) / best


def main() -> None:
    tune_gc()  # the collector settings e2actors processes run with, for ours and the baselines alike
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trace = frames(args.flows, seed=2)
    print(f"trace: {len(trace)} frames of {args.flows} flows")
    out: dict[str, float] = {}
    for name, cls, cfg in NFS:
        r = asyncio.run(rate(cls, cfg, trace, args.rounds))
        out[f"{name}_per_s"] = round(r)
        print(f"{name:12} {r:>12,.0f} packets/s")
    ids = nf_ids.measure(1000, 4.0, args.rounds)
    out.update(ids)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
