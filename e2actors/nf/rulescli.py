"""``e2actors rules FILE...``: load IDS rule files and say what loaded and what was skipped, and why."""

from __future__ import annotations

import argparse
import json
import logging

from e2actors.errors import RuleError
from e2actors.nf.rules import RuleSet, load_rules


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="rules files (Snort/Suricata syntax)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed rule (exit 2)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--list-skipped", action="store_true", help="print each skipped rule's FILE:LINE and reasons")


def run(args: argparse.Namespace) -> int:
    logging.getLogger("e2actors.nf.rules").setLevel(logging.ERROR)  # the summary says it all
    total = RuleSet()
    per_file = {}
    for f in args.files:
        try:
            rs = load_rules(f, strict=args.strict)
        except RuleError as e:
            print(f"error: {e}")
            return 2
        per_file[f] = rs
        total.extend(rs)
    if args.json:
        print(json.dumps({"files": {f: {"loaded": len(rs.rules), "skipped": len(rs.skipped), "disabled": rs.disabled,
                                        "reasons": rs.skip_reasons()} for f, rs in per_file.items()},
                          "loaded": len(total.rules), "skipped": len(total.skipped), "disabled": total.disabled,
                          "reasons": total.skip_reasons()}))
        return 0
    for f, rs in per_file.items():
        print(f"{f}: {rs.summary()}")
    if len(per_file) > 1:
        print(f"total: {total.summary()}")
    reasons = total.skip_reasons()
    if reasons:
        print("skipped by reason (a rule may have several):")
        for k, v in reasons.items():
            print(f"  {v:6d}  {k}")
    if args.list_skipped:
        for s in total.skipped:
            print(f"{s.source}: sid {s.sid}: {', '.join(s.reasons)}")
    return 0
