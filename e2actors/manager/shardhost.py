"""One switch per core on a cluster machine: an agent starts the machine's other switch processes.

A hardware file may give a server ``switches: N`` (see :mod:`e2actors.manager.hardware`): the
plan then has N servers on that machine, each with its own switch and a shard of the flows. The
manager asks the machine's agent for the other N-1 processes: it spawns a :class:`ShardHost` there
and asks it :class:`StartShards`; the host starts ``e2actors agent`` processes with the agent's own
settings (secret, allow-lists, data directory, TLS), listening next to it, and answers their
addresses. They end with the host (their standard input is its pipe). At the end of the run
:class:`MergeParts` merges the shards' parts of an output file on that machine, where they were
written (in the data directory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from e2actors.errors import E2Error
from e2actors.runtime.codec import message
from e2actors.runtime.service import ServiceActor

__all__ = ["MergeParts", "ShardHost", "StartShards", "set_agent_settings"]

#: The options of the agent this process runs (``e2actors agent`` sets them), which its extra
#: switch processes get too.
_AGENT: argparse.Namespace | None = None


def set_agent_settings(args: argparse.Namespace) -> None:
    global _AGENT
    _AGENT = args


@message(402)
@dataclass(frozen=True, slots=True)
class StartShards:
    """Start an agent process for each of ``names``, each offering ``cores`` (ask; the reply is
    their addresses, in order)."""

    names: tuple[str, ...]
    cores: int


@message(403)
@dataclass(frozen=True, slots=True)
class MergeParts:
    """Merge the parts of output file ``path`` (shards' parts: ``path.SERVER``) on this machine,
    by timestamp, into ``path`` (ask; the reply is the packets written, -1 when there were none)."""

    path: str
    servers: tuple[str, ...]


class ShardHost(ServiceActor):
    """Starts and owns the extra switch processes of this machine (see the module docstring)."""

    def on_start(self) -> None:
        self.procs: list[subprocess.Popen] = []

    async def on_stop(self) -> None:
        for p in self.procs:
            try:
                if p.stdin is not None:
                    p.stdin.close()  # (they end when their standard input closes)
            except OSError:
                pass
        for p in self.procs:
            try:
                await asyncio.get_running_loop().run_in_executor(None, p.wait, 10)
            except subprocess.TimeoutExpired:
                p.kill()

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, StartShards):
            return [await self._start(str(n), int(msg.cores)) for n in msg.names]
        if isinstance(msg, MergeParts):
            return self._merge(str(msg.path), tuple(str(s) for s in msg.servers))
        raise E2Error(f"the shard host does not handle {type(msg).__name__}")

    async def _start(self, name: str, cores: int) -> str:
        a = _AGENT
        if a is None:
            raise E2Error("this node is not an agent: it cannot start switch processes")
        listen = a.listen
        if listen.startswith("unix://"):
            base, ext = os.path.splitext(listen[len("unix://"):])
            listen = f"unix://{base}-{name}{ext or '.sock'}"
        else:
            host = listen.split("://", 1)[-1].rsplit(":", 1)[0]
            listen = f"tcp://{host}:0"
        cmd = [sys.executable, "-m", "e2actors", "agent", "--listen", listen, "--secret-file", a.secret_file,
               "--name", name, "--cores", str(cores), "--exit-with-parent",
               "--heartbeat-timeout", str(a.heartbeat_timeout), "--handshake-timeout", str(a.handshake_timeout)]
        for p in a.allow:
            cmd += ["--allow", p]
        for p in a.allow_legacy:
            cmd += ["--allow-legacy", p]
        if a.unconfined:
            cmd.append("--unconfined")
        data_dir = getattr(self.node.confine, "data_dir", None) if self.node.confine is not None else a.data_dir
        if data_dir:
            cmd += ["--data-dir", data_dir]  # (the same directory: the shards share the machine's files)
        if a.tls_cert:
            cmd += ["--tls-cert", a.tls_cert, "--tls-key", a.tls_key, "--tls-ca", a.tls_ca]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)  # type: ignore[union-attr]
        if not line.startswith("READY "):
            proc.kill()
            raise E2Error(f"switch process {name} did not start: {line.strip() or f'exit {proc.poll()}'}")
        return line.split()[1]

    def _merge(self, path: str, servers: tuple[str, ...]) -> int:
        confine = self.node.confine
        full = confine.path(path, "out-pcap") if confine is not None else os.path.abspath(path)
        # (imported here: an agent that never merges does not load the planner's modules)
        from e2actors.manager.shards import merge_captures, shard_path

        parts = [shard_path(full, s) for s in servers]
        if not any(os.path.exists(p) for p in parts):
            return -1
        return merge_captures(parts, full)
