"""Bytestream delivery while instances move: no work after the state export, moves complete,\nand an old server does not end the flows of an instance that moved away."""
from __future__ import annotations

import asyncio

from conftest import eventually
from e2actors import Node
from e2actors.nf.instance import NFInstance
from e2actors.nf.messages import ExportState
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import GetSwitchStats, SetTable
from e2actors.switch.switch import Switch
from e2actors.switch.table import Member
from test_switch_stream import ALLOW, Snoop, conversation, one_instance, settle, table


async def test_no_stream_work_reaches_a_moving_instance_after_its_state_was_exported() -> None:
    """While a member is ``moving`` the switch holds its packets so that the exported state is
    complete. Stream work (here: bytes released by a gap timeout) must not reach the old actor
    after ExportState, or the replacement never learns of those bytes."""
    async with Node("t", allow_spawn=ALLOW) as node:
        sw, old, _ = await one_instance(node)
        pkts = conversation(46000, b"GET /x HTTP/1.1\r\nX: EVIL\r\n", b"", seg=6)
        node.cell(sw).actor.ports["in"].inject(pkts[:4] + pkts[5:9])  # pkts[4] lost: a hole
        await eventually(lambda: held(node, sw, 3))
        # prepare phase of a move: the member turns moving, its state is exported
        await node.ask(sw, SetTable(table(2, (Member("snoop#0", "s1", old, state="moving"),))))
        await node.ask(old, ExportState())
        told = len(node.cell(old).actor.runner.pipelet.chunks)
        await eventually(lambda: gaps(node, sw) >= 1, timeout=10)  # the gap timed out in the switch
        await node.ask(sw, GetSwitchStats())  # (a turn of the switch after it)
        after = len(node.cell(old).actor.runner.pipelet.chunks)
        assert after == told, f"old actor was told {after - told} chunk(s) after its state was exported"


async def _hang(msg):
    return None


def held(node, sw, n: int) -> bool:
    """The switch holds ``n`` packets of the flow (the data segments after its hole)."""
    return node.cell(sw).actor.groups["snoop"].stream.stats()["held"] == n


def gaps(node, sw) -> int:
    """Gaps the switch's reassembly has given up waiting on."""
    return node.cell(sw).actor.groups["snoop"].stream.driver.reassembler.stats["gaps"]


async def test_a_move_completes_and_the_switch_goes_idle() -> None:
    """Move protocol: moving -> export -> switch over (new actor, same member name, running) ->
    stop the old actor. Nothing is sent to the old actor after the export, so nothing waits for it."""
    async with Node("t", allow_spawn=ALLOW) as node:
        sw, old, new = await one_instance(node, replacement=True)
        pkts = conversation(46001, b"GET /x HTTP/1.1\r\nX: EVIL\r\n", b"", seg=6)
        sent = pkts[:4] + pkts[5:9]
        node.cell(sw).actor.ports["in"].inject(sent)  # pkts[4] lost: a hole
        await eventually(lambda: held(node, sw, 3))
        await node.ask(sw, SetTable(table(2, (Member("snoop#0", "s1", old, state="moving"),))))
        await node.ask(old, ExportState())
        node.cell(old).actor.on_message = _hang  # the work after the export is still queued ...
        await eventually(lambda: gaps(node, sw) >= 1, timeout=10)  # ... when the gap times out
        await node.ask(sw, SetTable(table(3, (Member("snoop#0", "s1", new),))))
        await node.stop_actor(old)
        await settle(node, sw, timeout=5)


async def test_an_old_server_does_not_end_a_flow_that_lives_on_at_the_moved_instance() -> None:
    """snoop#0 moves from s1 to s2; the flow's later packets are reassembled on s2. s1 still
    tracks the flow, idles it out and sends END to snoop#0, which ends the live flow's state."""
    import dataclasses
    async with Node("t", allow_spawn=ALLOW) as node:
        r1, r2 = ActorRef(node.address, "switch-s1"), ActorRef(node.address, "switch-s2")
        old = node.spawn(NFInstance, "snoop#0", pipelet=Snoop, nf="snoop", output=r1)
        new = node.spawn(NFInstance, "snoop#0~2", pipelet=Snoop, nf="snoop", instance="snoop#0", output=r2)
        sw1 = node.spawn(Switch, "switch-s1", server="s1")
        sw2 = node.spawn(Switch, "switch-s2", server="s2")
        sws = {"s1": r1, "s2": r2}

        def t(v, server, m):
            return dataclasses.replace(table(v, (m,)), server=server, switches=sws)

        await node.ask(sw1, SetTable(t(1, "s1", Member("snoop#0", "s1", old))))
        await node.ask(sw2, SetTable(t(1, "s2", Member("snoop#0", "s1", old))))
        node.cell(sw1).actor.groups["snoop"].stream.driver.reassembler.idle_timeout = 0.6
        pkts = conversation(46002, b"0123456789" * 20, b"", seg=10)
        data = pkts[3:23]
        node.cell(sw1).actor.ports["in"].inject(pkts[:4])
        await eventually(lambda: node.cell(sw1).actor.groups["snoop"].stream.driver.tracks(pkts[0].flow_key))
        for sw, server in ((sw1, "s1"), (sw2, "s2")):
            await node.ask(sw, SetTable(t(2, server, Member("snoop#0", "s2", new))))
        flow = pkts[0].flow_key
        for p in data[1:12]:  # the connection goes on, now through s2
            node.cell(sw1).actor.ports["in"].inject([p])
            # (not a wait for something: the connection's pace. Spread over 1.65 s, it outlives
            # s1's idle timeout of 0.6 s, which must not end it at the instance.)
            await asyncio.sleep(0.15)
        ended = node.cell(new).actor.runner.pipelet.ended
        np = node.cell(new).actor.runner.pipelet
        s2 = node.cell(sw2).actor.groups["snoop"].stream.driver
        assert len(np.chunks) >= 10 and s2.reassembler.tracks(flow)  # live at s2, judged by snoop#0~2
        assert flow not in ended, "the live flow was ended at the instance"


async def test_work_a_replaced_actor_never_answered_is_given_up_and_counted() -> None:
    """An actor that took stream work and never answered it (hung), then was replaced and stopped:
    the switch gives that work up (its packets dropped, counted) instead of waiting forever."""
    async with Node("t", allow_spawn=ALLOW) as node:
        sw, old, new = await one_instance(node, replacement=True)
        node.cell(old).actor.on_message = _hang  # takes the work, never answers
        pkts = conversation(46003, b"GET /never/answered HTTP/1.1\r\n", b"", seg=8)
        node.cell(sw).actor.ports["in"].inject(pkts)

        async def taken() -> bool:
            return (await node.ask(sw, GetSwitchStats()))["inflight"] >= 1

        await eventually(taken)
        await node.ask(sw, SetTable(table(2, (Member("snoop#0", "s1", old, state="moving"),))))
        await node.ask(sw, SetTable(table(3, (Member("snoop#0", "s1", new),))))
        await node.stop_actor(old)
        st = await settle(node, sw, timeout=5)
        lost = st["drops"].get("lost with replaced instance snoop#0", 0)
        out = node.cell(sw).actor.ports["out"].received
        assert lost > 0 and lost + len(out) == len(pkts) and st["inflight"] == 0
