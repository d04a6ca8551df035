"""The ``e2actors`` command line. Subcommands register themselves in :data:`COMMANDS`."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="e2actors", description="E2 network function virtualization on asyncio actors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, _run) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_)
        add_args(p)
    return parser


def _load_commands() -> None:
    # Each module registers its subcommands on import; a module that does not exist yet is skipped.
    import importlib

    for mod in ("e2actors.packet.filtercli", "e2actors.packet.gencli", "e2actors.agent",
                "e2actors.manager.plancli", "e2actors.manager.runcli", "e2actors.manager.control"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _help, _add, run = COMMANDS[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
