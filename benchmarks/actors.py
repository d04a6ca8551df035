"""Actor runtime benchmark: local tell, remote tell between two processes, ask round trips,
against a bare asyncio.Queue and Pykka (thread-based actors), all measured in this run.

Last line: one JSON object. Targets: local tell >= 5x Pykka tell and >= 0.5x the bare queue;
remote tell >= 200,000 small messages/s; local ask p50 >= 10x lower than Pykka's ask p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from e2actors import Actor, ActorRef, MailboxFull, Node, message, run  # noqa: E402
from e2actors.runtime.node import tune_gc  # noqa: E402

SECRET = b"bench-secret"
N_LOCAL = 300_000
N_REMOTE = 400_000
N_ASK = 20_000


@message(1100)
@dataclass(frozen=True, slots=True)
class Msg:
    n: int


class Sink(Actor):
    mailbox_size = 4096

    def on_start(self) -> None:
        self.count = 0
        self.target = -1
        self.done: asyncio.Future | None = None

    async def on_message(self, msg: Any) -> Any:
        if type(msg) is Msg:
            self.count += 1
            if self.count == self.target and self.done is not None:
                self.done.set_result(None)
            return None
        if msg == "count":
            return self.count
        if isinstance(msg, tuple) and msg[0] == "expect":
            self.target = msg[1]
            self.count = 0
            return None
        return msg  # echo for asks


# Every contender sends the same pre-built messages, so the figures compare messaging, not the
# cost of building dataclasses; each uses its fastest correct pattern for a bounded queue
# (put without waiting while there is room, wait only when full).
MSGS = [Msg(i) for i in range(max(N_LOCAL, N_REMOTE))]


async def bench_queue(n: int) -> float:
    q: asyncio.Queue = asyncio.Queue(4096)
    done = asyncio.get_running_loop().create_future()

    async def consumer() -> None:
        count = 0
        get = q.get
        while count < n:
            msg = await get()
            if type(msg) is Msg:  # the same work as Sink.on_message
                count += 1
        done.set_result(None)

    c = asyncio.ensure_future(consumer())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    put_nowait = q.put_nowait
    for m in MSGS[:n]:
        try:
            put_nowait(m)
        except asyncio.QueueFull:
            await q.put(m)
    await done
    await c
    return n / (time.perf_counter() - t0)


async def bench_local_tell(node: Node, n: int) -> float:
    ref = node.spawn(Sink, "local-sink")
    cell = node.cell(ref)
    await node.ask(ref, ("expect", n))
    cell.actor.done = asyncio.get_running_loop().create_future()
    t0 = time.perf_counter()
    send, tell = node.send, node.tell
    for m in MSGS[:n]:
        try:
            send(ref, m)
        except MailboxFull:
            await tell(ref, m)
    await cell.actor.done
    return n / (time.perf_counter() - t0)


async def bench_ask(node: Node, ref: ActorRef, n: int) -> tuple[float, float]:
    lat = []
    ask = node.ask
    for i in range(n):
        t0 = time.perf_counter_ns()
        await ask(ref, i)
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000


async def bench_remote(node: Node, address: str, n: int) -> tuple[float, float, float]:
    sink = ActorRef(address, "sink")
    await node.ask(sink, ("expect", n))
    t0 = time.perf_counter()
    tell = node.tell
    for m in MSGS[:n]:
        await tell(sink, m)
    # The count arrives after every tell, on the same ordered link.
    while await node.ask(sink, "count", timeout=60) < n:
        await asyncio.sleep(0.001)
    rate = n / (time.perf_counter() - t0)
    p50, p99 = await bench_ask(node, sink, N_ASK // 4)
    return rate, p50, p99


def bench_pykka(n: int) -> tuple[float, float, float]:
    import pykka

    class PSink(pykka.ThreadingActor):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def on_receive(self, msg: Any) -> Any:
            if msg == "count":
                return self.count
            if type(msg) is Msg:
                self.count += 1
                return None
            return msg

    ref = PSink.start()
    try:
        t0 = time.perf_counter()
        for m in MSGS[:n]:
            ref.tell(m)
        assert ref.ask("count") == n
        tell_rate = n / (time.perf_counter() - t0)
        lat = []
        for i in range(N_ASK // 4):
            t = time.perf_counter_ns()
            ref.ask(i)
            lat.append(time.perf_counter_ns() - t)
        lat.sort()
        return tell_rate, lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000
    finally:
        ref.stop()


async def serve(listen: str) -> None:
    node = Node("bench-peer", listen=listen, secret=SECRET)
    await node.start()
    node.spawn(Sink, "sink")
    print("READY", node.address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await node.stop()


async def main_async(transport_kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["queue_per_s"] = await bench_queue(N_LOCAL)
    async with Node("bench", secret=SECRET) as node:
        out["local_tell_per_s"] = await bench_local_tell(node, N_LOCAL)
        echo = node.spawn(Sink, "echo")
        out["ask_p50_us"], out["ask_p99_us"] = await bench_ask(node, echo, N_ASK)
        listen = "tcp://127.0.0.1:0" if transport_kind == "tcp" else f"unix:///tmp/e2-bench-{os.getpid()}.sock"
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", listen],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            address = line.split()[1]
            await node.connect(address)
            r, p50, p99 = await bench_remote(node, address, N_REMOTE)
            out["remote_tell_per_s"], out["remote_ask_p50_us"], out["remote_ask_p99_us"] = r, p50, p99
        finally:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)
    return out


def main() -> None:
    tune_gc()  # the collector settings e2actors processes run with, for ours and the baselines alike
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", metavar="ADDR", help=argparse.SUPPRESS)
    ap.add_argument("--transport", choices=["tcp", "unix"], default="tcp")
    args = ap.parse_args()
    if args.serve:
        run(serve(args.serve))
        return
    out = run(main_async(args.transport))
    pt, pp50, pp99 = bench_pykka(N_LOCAL // 3)
    out["pykka_tell_per_s"], out["pykka_ask_p50_us"], out["pykka_ask_p99_us"] = pt, pp50, pp99
    out["local_vs_pykka_tell"] = out["local_tell_per_s"] / pt
    out["local_vs_queue"] = out["local_tell_per_s"] / out["queue_per_s"]
    out["pykka_vs_local_ask_p50"] = pp50 / out["ask_p50_us"]
    print(f"bare asyncio.Queue      {out['queue_per_s']:>12,.0f} msgs/s")
    print(f"local tell              {out['local_tell_per_s']:>12,.0f} msgs/s  "
          f"({out['local_vs_queue']:.2f}x queue, {out['local_vs_pykka_tell']:.1f}x pykka; targets 0.5x, 5x)")
    print(f"pykka tell              {pt:>12,.0f} msgs/s")
    print(f"remote tell ({args.transport})      {out['remote_tell_per_s']:>12,.0f} msgs/s  (target 200,000)")
    print(f"local ask   p50/p99     {out['ask_p50_us']:>8.1f} / {out['ask_p99_us']:.1f} us  "
          f"(pykka {pp50:.1f} / {pp99:.1f} us: {out['pykka_vs_local_ask_p50']:.1f}x; target 10x)")
    print(f"remote ask  p50/p99     {out['remote_ask_p50_us']:>8.1f} / {out['remote_ask_p99_us']:.1f} us")
    print(json.dumps({k: round(v, 2) for k, v in out.items()}))


if __name__ == "__main__":
    main()
