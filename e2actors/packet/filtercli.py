"""``e2actors filter EXPR IN.pcap [-w OUT.pcap]``: apply a pcap-filter expression to a capture.

Without ``-w`` it prints the 1-based numbers of the matching frames, one per line; with ``-w`` it
writes the matching frames to OUT.pcap instead. Exit status 0 on success, 2 on a bad expression
or an unreadable file (the message goes to stderr).
"""

from __future__ import annotations

import argparse
import sys

from e2actors.errors import FilterError, PcapError
from e2actors.packet.filter import compile_filter
from e2actors.packet.pcap import PcapWriter, open_capture

__all__ = ["run", "add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``e2actors filter``."""
    p.add_argument("expression", help="pcap-filter expression, as tcpdump takes it")
    p.add_argument("input", help="input capture (pcap or pcapng, Ethernet)")
    p.add_argument("-w", "--write", metavar="OUT.pcap",
                   help="write the matching frames here instead of printing their numbers")


def run(args: argparse.Namespace) -> int:
    """Run ``e2actors filter``; return the exit status."""
    try:
        f = compile_filter(args.expression)
    except FilterError as e:
        print(f"e2actors filter: {e}", file=sys.stderr)
        if e.column:
            # at most 80 characters either side of the column (expressions may be long)
            lo = max(0, e.column - 1 - 80)
            print(f"  {e.expression[lo:e.column + 80]}\n  {' ' * (e.column - 1 - lo)}^", file=sys.stderr)
        return 2
    try:
        with open_capture(args.input) as reader:
            if reader.linktype != 1:
                print(f"e2actors filter: {args.input}: link type {reader.linktype} is not supported "
                      "(only Ethernet)", file=sys.stderr)
                return 2
            match = f.match
            if args.write:
                with PcapWriter(args.write, linktype=reader.linktype) as w:
                    for ts, data, wirelen, _lt, _if in reader:
                        if match(data, wirelen):
                            w.write(data, ts, wirelen)
            else:
                out = sys.stdout
                for n, (_ts, data, wirelen, _lt, _if) in enumerate(reader, 1):
                    if match(data, wirelen):
                        out.write(f"{n}\n")
    except BrokenPipeError:  # e.g. piped into ``head``
        sys.stdout = None  # type: ignore[assignment]
        return 0
    except (PcapError, OSError) as e:
        print(f"e2actors filter: {args.input}: {e}", file=sys.stderr)
        return 2
    return 0
