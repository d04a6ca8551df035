"""The ``e2actors`` command line. Subcommands register themselves in :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

# name -> (help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(
    name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
) -> Callable:
    """Register a subcommand: decorate ``run(args) -> int``; ``add_arguments`` fills its parser."""

    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, add_arguments, fn)
        return fn

    return deco


# Subcommand -> the module that registers it (imported only when that command runs, so a
# command does not pay for the others' imports; ``--help`` loads them all).
COMMAND_MODULES = {
    "filter": "e2actors.packet.filtercli",
    "gen-traffic": "e2actors.packet.gencli",
    "agent": "e2actors.agent",
    "plan": "e2actors.manager.plancli",
    "run": "e2actors.manager.runcli",
    "apply": "e2actors.manager.control",
    "rules": "e2actors.nf.rulescli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    _load_commands(only)
    from e2actors._version import __version__

    parser = argparse.ArgumentParser(prog="e2actors", description="E2 network function virtualization on asyncio actors")
    parser.add_argument("--version", action="version", version=f"e2actors {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, _run) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_)
        add_args(p)
    return parser


def _load_commands(only: str | None = None) -> None:
    import importlib

    mods = [COMMAND_MODULES[only]] if only in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for mod in mods:
        importlib.import_module(mod)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Pipelet modules next to the user are found as with ``python -m e2actors`` (the console
    # script does not put the current directory on the path by itself).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    _help, _add, run = COMMANDS[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
