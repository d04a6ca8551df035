"""NF instances as actors: batches in, outputs to the switch's ref, reports, state, crashes, remote."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import SECRET
from e2actors import Actor, ActorRef, Node, RestartPolicy, Spawn
from e2actors.nf.instance import NFInstance
from e2actors.nf.messages import ExportState, GetStats, ImportState, LoadReport, NFBatch, NFOutput
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from nfkit import C, S, connection, udp_pkt


class Inbox(Actor):
    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue

    async def on_message(self, msg: Any) -> Any:
        self.queue.put_nowait(msg)


class Crashy(Pipelet):
    async def process(self, batch: Batch) -> None:
        for p in batch:
            if p.dport == 666:
                raise RuntimeError("bad packet")
            self.emit(p)


async def _next(q: asyncio.Queue, kind: type) -> Any:
    while True:
        m = await asyncio.wait_for(q.get(), 5)
        if isinstance(m, kind):
            return m


async def test_instance_processes_reports_and_moves_state() -> None:
    async with Node("t") as node:
        q: asyncio.Queue = asyncio.Queue()
        sw = node.spawn(Inbox, "switch", queue=q)
        inst = node.spawn(NFInstance, "counter#0", pipelet="e2actors.nf.builtin.counter:Counter", nf="counter",
                          output=sw, monitor=sw, report_interval=0.05)
        pkts = connection()
        node.send(inst, NFBatch(Batch(pkts), 1))
        out = await _next(q, NFOutput)
        assert out.instance == "counter#0" and out.seq == 1
        assert [p.data for p in out.outputs[0][1]] == [p.data for p in pkts]
        rep = await _next(q, LoadReport)
        assert rep.nf == "counter" and rep.packets == 8 and rep.flows == 1 and 0 <= rep.busy <= 1
        stats = await node.ask(inst, GetStats())
        assert stats["packets_in"] == 8 and stats["counters"]["packets"] == 8
        state = await node.ask(inst, ExportState())
        other = node.spawn(NFInstance, "counter#1", pipelet="e2actors.nf.builtin.counter:Counter", nf="counter")
        assert await node.ask(other, ImportState(state)) is True
        assert (await node.ask(other, GetStats()))["flows"] == 1


async def test_crash_reports_the_lost_batch_and_restarts() -> None:
    async with Node("t", allow_spawn=("e2actors.", "test_nf_instance")) as node:
        q: asyncio.Queue = asyncio.Queue()
        sw = node.spawn(Inbox, "switch", queue=q)
        inst = node.spawn(NFInstance, "crashy#0", pipelet=Crashy, nf="crashy", output=sw,
                          restart=RestartPolicy(backoff=0))
        node.send(inst, NFBatch(Batch([udp_pkt(C, S, 1, 2), udp_pkt(C, S, 1, 666)]), 1))
        out = await _next(q, NFOutput)
        assert out.lost == 2 and "RuntimeError: bad packet" in out.error and out.outputs == ()
        node.send(inst, NFBatch(Batch([udp_pkt(C, S, 1, 2)]), 2))
        out = await _next(q, NFOutput)
        assert out.seq == 2 and len(out.outputs[0][1]) == 1
        assert node.cell(inst).restarts == 1


async def test_mailbox_full_drops_batches_and_counts() -> None:
    class Slow(Pipelet):
        async def process(self, batch: Batch) -> None:
            await asyncio.sleep(0.05)

    async with Node("t") as node:
        inst = node.spawn(NFInstance, "slow#0", pipelet=Slow, mailbox_size=4)
        await node.ask(inst, GetStats())  # (its setup ran: it takes batches now)
        sent = [node.send(inst, NFBatch(Batch([udp_pkt(C, S, 1, 2)]), i)) for i in range(10)]
        assert sent.count(False) >= 5
        assert node.cell(inst).mailbox.stats().dropped == sent.count(False)


async def test_remote_instance_spawned_by_path_over_tcp(peer_process) -> None:
    peer = peer_process("tcp://127.0.0.1:0")
    async with Node("local", secret=SECRET) as node:
        q: asyncio.Queue = asyncio.Queue()
        sw = node.spawn(Inbox, "switch", queue=q)
        inst = await node.ask(node.system_ref(peer.address),
                              Spawn("e2actors.nf.instance:NFInstance", "fw#0",
                                    {"pipelet": "e2actors.nf.builtin.firewall:Firewall", "nf": "fw", "output": sw,
                                     "config": {"rules": ["allow tcp dst port 80"], "default": "deny"}}))
        assert inst == ActorRef(peer.address, "fw#0")
        pkts = connection() + [udp_pkt(C, S, 1, 53)]
        pkts[0].meta["tag"] = "kept across nodes"
        node.send(inst, NFBatch(Batch(pkts), 7))
        out = await _next(q, NFOutput)
        got = out.outputs[0][1].packets
        assert [p.data for p in got] == [p.data for p in pkts[:-1]]
        assert got[0].meta == {"tag": "kept across nodes"} and out.dropped == 1
        with pytest.raises(Exception, match="SpawnRefused|allow"):
            await node.ask(node.system_ref(peer.address),
                           Spawn("e2actors.nf.instance:NFInstance", "evil#0", {"pipelet": "os:system"}))
