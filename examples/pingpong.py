"""Ping-pong across two OS processes: the actor runtime's demo.

The parent process starts a node, launches a second process with its own node, and the two
exchange messages over an authenticated TCP link: tells carrying refs, asks with replies, a
remote spawn, and a death watch that fires when the child process is killed.

    python examples/pingpong.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
import logging
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from e2actors import (  # noqa: E402
    Actor,
    ActorRef,
    GetNodeInfo,
    Node,
    message,
    run,
)


@message(1200)
@dataclass(frozen=True, slots=True)
class Ping:
    n: int
    reply_to: ActorRef


@message(1201)
@dataclass(frozen=True, slots=True)
class Pong:
    n: int
    pid: int


class Ponger(Actor):
    """Answers each Ping with a Pong, told to the ref that came inside the Ping."""

    async def on_message(self, msg: Any) -> Any:
        if isinstance(msg, Ping):
            self.send(msg.reply_to, Pong(msg.n, os.getpid()))
        elif msg == "pid":
            return os.getpid()
        return None


class Pinger(Actor):
    """Sends ``rounds`` pings, one after each pong, then resolves ``done``."""

    def __init__(self, target: ActorRef, rounds: int, done: asyncio.Future) -> None:
        self.target, self.rounds, self.done = target, rounds, done

    def on_start(self) -> None:
        self.t0 = time.perf_counter()
        self.send(self.target, Ping(1, self.ref))

    async def on_message(self, msg: Any) -> Any:
        if isinstance(msg, Pong):
            if msg.n < self.rounds:
                self.send(self.target, Ping(msg.n + 1, self.ref))
            else:
                self.done.set_result((msg.n, time.perf_counter() - self.t0, msg.pid))
        return None


class Watcher(Actor):
    def __init__(self, seen: asyncio.Queue) -> None:
        self.seen = seen

    async def on_message(self, msg: Any) -> Any:
        self.seen.put_nowait(msg)


async def child(address_file: str, secret: bytes) -> None:
    node = Node("pong-node", listen="tcp://127.0.0.1:0", secret=secret, allow_spawn=("examples.", "__main__", "pingpong"))
    await node.start()
    node.spawn(Ponger, "ponger")
    with open(address_file + ".tmp", "w") as f:
        f.write(node.address)
    os.replace(address_file + ".tmp", address_file)
    await asyncio.Event().wait()  # serve until killed


async def parent(rounds: int) -> None:
    secret = secrets.token_bytes(32)
    addr_file = f"/tmp/e2-pingpong-{os.getpid()}.addr"
    env = dict(os.environ, E2_PINGPONG_SECRET=secret.hex())
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", addr_file], env=env)
    try:
        for _ in range(200):
            if os.path.exists(addr_file):
                break
            await asyncio.sleep(0.05)
        address = open(addr_file).read()
        print(f"parent pid {os.getpid()} started child pid {proc.pid}, its node listens on {address}")
        async with Node("ping-node", secret=secret, heartbeat_interval=0.2, heartbeat_timeout=1.0) as node:
            ponger = ActorRef(address, "ponger")
            info = await node.ask(node.system_ref(address), GetNodeInfo())
            print(f"asked the child's $system: {info.name} v{info.version}, pid {info.pid}, actors {list(info.actors)}")
            done = asyncio.get_running_loop().create_future()
            node.spawn(Pinger, "pinger", target=ponger, rounds=rounds, done=done)
            n, secs, pid = await done
            print(f"{n} ping/pong round trips with pid {pid} in {secs * 1000:.1f} ms "
                  f"({secs / n * 1e6:.0f} us each; each Ping carried the pinger's ref)")
            seen: asyncio.Queue = asyncio.Queue()
            w = node.spawn(Watcher, "watcher", seen=seen)
            node.subscribe(w)
            node.watch(ponger, w)
            t0 = time.perf_counter()
            os.kill(proc.pid, signal.SIGKILL)
            print(f"killed the child with SIGKILL; waiting for the heartbeat timeout ({node.heartbeat_timeout}s)")
            got = []
            while len(got) < 2:
                got.append(await asyncio.wait_for(seen.get(), 10))
            for m in got:
                print(f"  after {time.perf_counter() - t0:.2f}s: {m}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if os.path.exists(addr_file):
            os.unlink(addr_file)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description="ping-pong across two processes")
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--child", metavar="ADDRESS_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run(child(args.child, bytes.fromhex(os.environ["E2_PINGPONG_SECRET"])))
    else:
        run(parent(args.rounds))


if __name__ == "__main__":
    main()
