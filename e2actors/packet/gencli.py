"""``e2actors gen-traffic OUT.pcap [--flows N] [--seed S] [--profile NAME]``: write a generated trace."""

from __future__ import annotations

import argparse
import sys

from e2actors.packet.traffic import PROFILES, write_pcap


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT.pcap", help="pcap file to write")
    p.add_argument("--flows", type=int, default=200, help="number of flows (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same bytes (default 0)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mixed", help="traffic mix (default mixed)")


def run(args: argparse.Namespace) -> int:
    """Write the trace and print a one-line summary; exit code 2 on bad arguments or I/O errors."""
    if args.flows < 0:
        print("e2actors gen-traffic: --flows must be >= 0", file=sys.stderr)
        return 2
    try:
        n = write_pcap(args.out, flows=args.flows, seed=args.seed, profile=args.profile)
    except OSError as e:
        print(f"e2actors gen-traffic: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {n} frames of {args.flows} flows (profile {args.profile}, seed {args.seed}) to {args.out}")
    return 0
