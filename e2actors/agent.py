"""``e2actors agent``: a server's node. It hosts the switch and the NF instances the manager asks
for (through its ``$system`` actor), and loads only pipelet classes on its allow-list.

    e2actors agent --listen tcp://127.0.0.1:7400 --secret-file /etc/e2actors/secret \\
                   [--tls-cert C --tls-key K --tls-ca CA] [--cores N] [--name NAME] [--allow PREFIX ...]
                   [--data-dir DIR] [--allow-legacy PREFIX ...]

NF configs are code from the manager's machine, so the agent confines them
(:mod:`e2actors.runtime.confine`): NFs read and write files only inside ``--data-dir`` (default:
systemd's ``$STATE_DIRECTORY``, else ``~/.local/state/e2actors/agent-NAME``), and ``Legacy`` runs
programs only under an ``--allow-legacy`` prefix (none by default).

An agent fences itself: the actors a manager started here are stopped as soon as that manager is
lost (its heartbeats stopped), or as soon as this process finds it was itself paused (SIGSTOP, a
frozen VM) for longer than ``--heartbeat-timeout`` — by then the manager has declared this server
lost and re-placed its instances elsewhere, so nothing may run twice. Give agents a heartbeat
timeout no longer than the manager's. (Each node states its timeout in its HELLO and its peers
send heartbeats often enough for it, so an idle agent is never lost for sending too rarely.)

It prints ``READY <address>`` when it listens. ``--exit-with-parent`` ends it when its standard
input closes (how ``e2actors run --workers N`` keeps its worker processes from outliving it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from e2actors.errors import E2Error
from e2actors.manager.shardhost import set_agent_settings
from e2actors.runtime.confine import Confinement, default_data_dir, set_process_confinement
from e2actors.runtime.node import Node, TLSConfig, run

__all__ = ["add_arguments", "serve"]

log = logging.getLogger("e2actors.agent")

DEFAULT_ALLOW = ("e2actors.",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="tcp://127.0.0.1:7400", help="tcp://HOST:PORT or unix:///PATH")
    p.add_argument("--secret-file", required=True, help="file holding the cluster's shared secret")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores this server offers for NFs")
    p.add_argument("--name", default=None, help="server name (default: host name)")
    p.add_argument("--allow", action="append", default=[],
                   help="module prefix of pipelet classes this agent may load (repeatable; e2actors. always)")
    p.add_argument("--data-dir", default=None,
                   help="the only directory NFs may read and write (relative config paths are taken from it; "
                        "default: $STATE_DIRECTORY, else ~/.local/state/e2actors/agent-NAME)")
    p.add_argument("--allow-legacy", action="append", default=[], metavar="PREFIX",
                   help="let Legacy NFs run programs whose resolved path is under PREFIX (repeatable; default: none)")
    p.add_argument("--unconfined", action="store_true",
                   help="NF configs may name any file (relative to --data-dir, default the cwd) and any Legacy "
                        "program: what `e2actors run --workers` gives its own worker processes")
    p.add_argument("--handshake-timeout", type=float, default=5.0,
                   help="seconds a peer has, from accept, to complete its handshake (TLS included), and a "
                        "metrics client to send its request (default 5)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="accepted connections at most (default 512)")
    p.add_argument("--max-connections-per-host", type=int, default=32,
                   help="accepted connections from one peer address at most (default 32)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (0: any free port; default: none)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address for the metrics (default: loopback)")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0)
    p.add_argument("-v", "--verbose", action="store_true")


def read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise SystemExit(f"e2actors agent: cannot read the secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < 16:
        raise SystemExit(f"e2actors agent: the secret in {path} is too short (16 bytes at least)")
    return secret


async def serve(args: argparse.Namespace) -> None:
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise SystemExit("e2actors agent: --tls-cert, --tls-key and --tls-ca go together")
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca)
    name = args.name or os.uname().nodename
    confine = confinement(args, name)
    set_process_confinement(confine)
    set_agent_settings(args)  # (a hardware file's ``switches: N`` has this agent start more switches)
    node = Node(name, listen=args.listen, secret=read_secret(args.secret_file), tls=tls, cores=args.cores,
                allow_spawn=tuple(DEFAULT_ALLOW) + tuple(args.allow),
                heartbeat_timeout=args.heartbeat_timeout, heartbeat_interval=args.heartbeat_timeout / 6,
                max_connections=args.max_connections, max_connections_per_host=args.max_connections_per_host,
                handshake_timeout=args.handshake_timeout, confine=confine, fence_lost_spawners=True)
    try:
        await node.start()
    except (E2Error, OSError) as exc:  # a bad or busy --listen address: one line, not a traceback
        raise SystemExit(f"e2actors agent: cannot listen on {args.listen}: {exc}") from None
    metrics = None
    if args.metrics_port is not None:
        from e2actors.runtime.metrics import Metrics

        metrics = Metrics(interval=0.5)
        metrics.head_timeout = args.handshake_timeout
        metrics.add_source(lambda: node_samples(node))
        try:
            port = await metrics.start(args.metrics_port, args.metrics_addr)
        except OSError as exc:
            await node.stop()
            raise SystemExit(f"e2actors agent: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: "
                             f"{exc.strerror or exc}") from None
        print(f"METRICS http://{args.metrics_addr}:{port}/metrics", flush=True)
    print("READY", node.address, flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    if args.exit_with_parent:
        stop_when_stdin_closes(stop)
    await stop
    if metrics is not None:
        await metrics.stop()
    await node.stop()


def confinement(args: argparse.Namespace, name: str) -> Confinement:
    """What this agent's NFs may touch, from its options; creates the data directory (mode 0700)."""
    if args.unconfined:
        return Confinement.unconfined(args.data_dir)
    data_dir = os.path.abspath(args.data_dir or default_data_dir(name))
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"e2actors agent: cannot create the data directory {data_dir}: {exc}") from None
    prefixes = []
    for p in args.allow_legacy:
        if not os.path.isabs(p):
            raise SystemExit(f"e2actors agent: --allow-legacy takes an absolute directory, not {p!r}")
        prefixes.append(os.path.normpath(p))
    log.info("data directory %s; Legacy programs: %s", data_dir, ", ".join(prefixes) or "none")
    return Confinement(data_dir, files=True, legacy=tuple(prefixes) if prefixes else None)


def stop_when_stdin_closes(stop: asyncio.Future | None = None) -> asyncio.Future:
    """Resolve ``stop`` (a new future when None; returned) once standard input reaches its end:
    the parent closed the pipe, or died (a process started by another one goes away with it)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data and not stop.done():
            loop.remove_reader(sys.stdin.fileno())
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    return stop


def node_samples(node: Node) -> list:
    """Metrics of what this agent hosts: its switch(es) and NF instances (the same names and labels
    as the manager's cluster metrics, see :mod:`e2actors.manager.observe`), plus the node's own
    counters (authentication failures, refused spawns, lost peers, ...) and its actors."""
    from e2actors.manager.observe import samples_from_stats
    from e2actors.nf.instance import NFInstance
    from e2actors.switch.switch import Switch

    switches: dict[str, dict] = {}
    instances: dict[str, dict] = {}
    for ref in node.actors():
        cell = node.cell(ref)
        actor = getattr(cell, "actor", None) if cell is not None else None
        try:
            if isinstance(actor, Switch):
                switches[actor.server] = actor.stats()
            elif isinstance(actor, NFInstance) and getattr(actor, "runner", None) is not None:
                instances[ref.name] = actor.stats()
        except Exception as exc:  # an actor between start and ready: skip it this round
            log.debug("metrics: %s: %r", ref, exc)
    server = node.name
    out = samples_from_stats({"switches": switches, "instances": instances}, {}, [],
                             {i: server for i in instances})
    for k, v in sorted(node.counters.items()):
        out.append(("e2_node_events_total", "counter", "Node events: auth failures, refused spawns, "
                    "lost peers, dead letters, ...", {"server": server, "event": k}, v))
    out.append(("e2_node_actors", "gauge", "Actors running on this node", {"server": server}, len(node.actors())))
    out.append(("e2_node_cores", "gauge", "Cores this node offers for NF instances", {"server": server}, node.cores))
    return out


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"%(asctime)s agent {args.name or ''} %(name)s: %(message)s")
    run(serve(args))
    return 0
