"""A node in its own OS process, for the multi-process tests and the ping-pong demo.

Run as ``python -c 'import peer_node; peer_node.main()' --listen ADDR --secret-file F`` with
``tests/`` on PYTHONPATH. Prints ``READY <address>`` once it listens, then serves until killed
or until its stdin closes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from e2actors import Actor, ActorRef, Node, TLSConfig, message, run
from e2actors.agent import stop_when_stdin_closes


@message(1001)
@dataclass(frozen=True, slots=True)
class Forward:
    """Ask the forwarder to send ``payload`` to ``to`` (a ref that travelled inside a message)."""

    to: ActorRef
    payload: Any


@message(1002)
@dataclass(frozen=True, slots=True)
class Ping:
    n: int
    reply_to: ActorRef | None = None


@message(1003)
@dataclass(frozen=True, slots=True)
class Pong:
    n: int
    by: str


class Echo(Actor):
    async def on_message(self, msg: Any) -> Any:
        return msg


class Forwarder(Actor):
    async def on_message(self, msg: Any) -> Any:
        if isinstance(msg, Forward):
            self.send(msg.to, msg.payload)
            return True
        return None


class Ponger(Actor):
    """Answers Ping with Pong, to the ref in the message (tell) or as the ask's reply."""

    async def on_message(self, msg: Any) -> Any:
        if isinstance(msg, Ping):
            pong = Pong(msg.n, self.node.name)
            if msg.reply_to is not None:
                self.send(msg.reply_to, pong)
                return None
            return pong
        return None


class Raiser(Actor):
    """Raises what it is asked to: ``("value", text)`` a ValueError, ``("config", nf, key, reason)``
    a ConfigError, ``("policy", file, line, reason)`` a PolicyError (errors crossing nodes)."""

    async def on_message(self, msg: Any) -> Any:
        from e2actors.errors import ConfigError, PolicyError

        kind, *args = msg
        if kind == "value":
            raise ValueError(*args)
        if kind == "config":
            raise ConfigError(*args)
        if kind == "policy":
            raise PolicyError(*args)
        return None


class Counter(Actor):
    """Counts what it receives; ``"count"`` asks for the count."""

    mailbox_size = 100_000

    def on_start(self) -> None:
        self.n = 0

    async def on_message(self, msg: Any) -> Any:
        if msg == "count":
            return self.n
        self.n += 1
        return None


async def _serve(args: argparse.Namespace) -> None:
    secret = open(args.secret_file, "rb").read().strip()
    tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    node = Node(args.name, listen=args.listen, secret=secret, tls=tls, heartbeat_interval=0.2,
                heartbeat_timeout=1.5, allow_spawn=("peer_node", "e2actors."))
    await node.start()
    node.spawn(Echo, "echo")
    node.spawn(Forwarder, "fwd")
    node.spawn(Ponger, "pong")
    node.spawn(Counter, "counter")
    print("READY", node.address, flush=True)
    await stop_when_stdin_closes()  # the test closes our stdin (or dies): we stop
    await node.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--name", default="peer")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    run(_serve(p.parse_args(argv if argv is not None else sys.argv[1:])))
