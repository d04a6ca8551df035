"""The ``e2actors`` command line.

Each subcommand lives in the module that implements it, which knows nothing of this one: it
gives ``add_arguments(parser)`` and a function ``run(args) -> exit status`` (named in
:data:`COMMANDS`). This module lists them with their help and imports a command's module only
when that command runs, so neither a command nor ``e2actors --help`` pays for the others' imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """A subcommand: the module implementing it, its one-line help, its entry point's name."""

    module: str
    help: str
    run: str = "run"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


COMMANDS: dict[str, Command] = {
    "agent": Command("e2actors.agent", "run a server's node: hosts a switch and NF instances for a manager",
                     "main"),
    "apply": Command("e2actors.manager.control",
                     "apply a new policy to a running deployment (e2actors run --control ...)", "main"),
    "filter": Command("e2actors.packet.filtercli",
                      "print the numbers of the frames matching a pcap-filter expression (or write them with -w)"),
    "gen-traffic": Command("e2actors.packet.gencli", "write a realistic, reproducible traffic trace to a pcap file"),
    "plan": Command("e2actors.manager.plancli", "dry run: size, place and route a policy on hardware; print the plan"),
    "rules": Command("e2actors.nf.rulescli", "load IDS rule files: counts of loaded and skipped rules by reason"),
    "run": Command("e2actors.manager.runcli", "deploy a policy and push traffic through it (the main job)", "main"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: fill in that subcommand's arguments alone (the others are listed)."""
    from e2actors._version import __version__

    parser = argparse.ArgumentParser(prog="e2actors", description="E2 network function virtualization on asyncio actors")
    parser.add_argument("--version", action="version", version=f"e2actors {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=cmd.help)
        if only is None or only == name:
            cmd.load().add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Pipelet modules next to the user are found as with ``python -m e2actors`` (the console
    # script does not put the current directory on the path by itself).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    first = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    cmd = COMMANDS[args.command]
    try:
        return getattr(cmd.load(), cmd.run)(args)
    except KeyboardInterrupt:
        # Ctrl-C before a command has its own handler (while it imports or starts): no traceback.
        # (``run`` handles SIGINT itself once under way: the summary so far, exit 130.)
        print(f"e2actors {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
