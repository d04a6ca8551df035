"""Actors in one node: tell, ask, replies, timers, children, supervision, death watch, mailboxes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import eventually
from e2actors import (
    Actor,
    ActorRef,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    Node,
    RestartPolicy,
    Terminated,
    Tick,
)


class Recorder(Actor):
    """Keeps what it receives; ``"get"`` asks for the list."""

    def on_start(self) -> None:
        self.seen: list[Any] = []

    async def on_message(self, msg: Any) -> Any:
        if msg == "get":
            return list(self.seen)
        self.seen.append(msg)
        return None


async def test_tell_keeps_order_and_ask_replies() -> None:
    async with Node("t") as node:
        r = node.spawn(Recorder, "rec")
        for i in range(100):
            node.send(r, i)
        assert await node.ask(r, "get") == list(range(100))


async def test_reply_explicit_and_deferred() -> None:
    class Replier(Actor):
        async def on_message(self, msg: Any) -> Any:
            if msg == "explicit":
                self.reply("r1")
                return "ignored"
            if msg == "defer":
                handle = self.defer_reply()
                asyncio.get_running_loop().call_later(0.01, handle.send, "later")
                return None
            if msg == "none":
                return None
            raise ValueError("bad request")

    async with Node("t") as node:
        r = node.spawn(Replier)
        assert await node.ask(r, "explicit") == "r1"
        assert await node.ask(r, "defer") == "later"
        assert await node.ask(r, "none") is None
        with pytest.raises(ValueError, match="bad request"):
            await node.ask(r, "boom")


async def test_ask_timeout_and_unknown_actor() -> None:
    class Silent(Actor):
        async def on_message(self, msg: Any) -> Any:
            self.defer_reply()  # never answered

    async with Node("t") as node:
        r = node.spawn(Silent)
        with pytest.raises(AskTimeout):
            await node.ask(r, "x", timeout=0.05)
        with pytest.raises(ActorStopped):
            await node.ask(ActorRef(node.address, "nobody"), "x")
        assert node.send(ActorRef(node.address, "nobody"), "x") is False
        assert node.counters["dead_letters"] == 1


async def test_actor_to_actor_ask_and_refs_in_messages() -> None:
    class Asker(Actor):
        async def on_message(self, msg: Any) -> Any:
            target, payload = msg
            return await self.ask(target, payload)

    class Doubler(Actor):
        async def on_message(self, msg: Any) -> Any:
            return msg * 2

    async with Node("t") as node:
        a = node.spawn(Asker)
        d = node.spawn(Doubler)
        assert await node.ask(a, (d, 21)) == 42


async def test_timers_periodic_and_one_shot() -> None:
    class Ticker(Actor):
        def on_start(self) -> None:
            self.ticks = 0
            self.every(0.01, name="beat")
            self.after(0.03, "once")
            self.got_once = False

        async def on_message(self, msg: Any) -> Any:
            if isinstance(msg, Tick) and msg.name == "beat":
                self.ticks += 1
            elif msg == "once":
                self.got_once = True
            elif msg == "get":
                return self.ticks, self.got_once

    async with Node("t") as node:
        r = node.spawn(Ticker)

        async def ticked_and_once() -> bool:
            ticks, once = await node.ask(r, "get")
            return ticks >= 5 and once

        await eventually(ticked_and_once, timeout=10)  # (how many ticks fit in a while is the machine's)


async def test_stop_fails_queued_asks_and_counts_dead_letters() -> None:
    class Slow(Actor):
        async def on_message(self, msg: Any) -> Any:
            await asyncio.sleep(0.05)
            self.stop()
            return "first"

    async with Node("t") as node:
        r = node.spawn(Slow)
        f1 = asyncio.ensure_future(node.ask(r, 1))
        f2 = asyncio.ensure_future(node.ask(r, 2))
        await asyncio.sleep(0)
        node.send(r, "tell")
        assert await f1 == "first"
        with pytest.raises(ActorStopped):
            await f2
        await eventually(lambda: not node.is_alive(r))
        assert node.counters["dead_letters"] == 1


class Crashy(Actor):
    starts = 0

    def on_start(self) -> None:
        type(self).starts += 1
        self.count = 0

    async def on_message(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash requested")
        if msg == "get":
            return self.count
        self.count += 1
        return None


async def test_supervision_restarts_child_with_fresh_state_and_keeps_mailbox() -> None:
    class Parent(Actor):
        async def on_message(self, msg: Any) -> Any:
            if msg == "spawn":
                return self.spawn(Crashy, "child", restart=RestartPolicy(max_restarts=3, within=10, backoff=0))
            return None

    Crashy.starts = 0
    async with Node("t") as node:
        p = node.spawn(Parent, "parent")
        child = await node.ask(p, "spawn")
        node.send(child, "x")
        node.send(child, "x")
        node.send(child, "crash")
        node.send(child, "y")  # queued behind the crash: kept across the restart
        await eventually(lambda: Crashy.starts == 2)
        assert await node.ask(child, "get") == 1
        assert node.cell(child).restarts == 1
        assert node.is_alive(p)


async def test_supervision_escalates_after_too_many_restarts() -> None:
    class Parent(Actor):
        def on_start(self) -> None:
            self.child = self.spawn(Crashy, "child2",
                                    restart=RestartPolicy(max_restarts=2, within=10, backoff=0))

        async def on_message(self, msg: Any) -> Any:
            return self.child

    class Watcher(Recorder):
        pass

    Crashy.starts = 0
    async with Node("t") as node:
        # The parent itself is stopped on failure (no restart) so escalation ends it.
        p = node.spawn(Parent, "parent2", restart=RestartPolicy(strategy="stop"))
        w = node.spawn(Watcher, "w")
        node.watch(p, w)
        child = await node.ask(p, "child")
        for _ in range(3):
            node.send(child, "crash")
        await eventually(lambda: not node.is_alive(p))
        assert not node.is_alive(child)
        await eventually(lambda: node.is_alive(w))
        seen = await node.ask(w, "get")
        assert len(seen) == 1 and isinstance(seen[0], Terminated) and seen[0].ref == p
        assert seen[0].reason.startswith("failed: RuntimeError")


async def test_escalation_restarts_grandparent_chain() -> None:
    class Mid(Actor):
        def on_start(self) -> None:
            self.spawn(Crashy, "leaf", restart=RestartPolicy(max_restarts=0, backoff=0))

        async def on_message(self, msg: Any) -> Any:
            return None

    Crashy.starts = 0
    async with Node("t") as node:
        node.spawn(Mid, "mid", restart=RestartPolicy(max_restarts=5, backoff=0))
        await eventually(lambda: Crashy.starts == 1)
        node.send(ActorRef(node.address, "leaf"), "crash")
        # The leaf may not restart: it escalates; mid restarts and builds a new leaf.
        await eventually(lambda: Crashy.starts == 2)
        assert node.cell(ActorRef(node.address, "mid")).restarts == 1
        assert node.is_alive(ActorRef(node.address, "leaf"))


async def test_death_watch_local() -> None:
    async with Node("t") as node:
        w = node.spawn(Recorder, "watcher")
        target = node.spawn(Recorder, "target")
        node.watch(target, w)
        node.watch(ActorRef(node.address, "ghost"), w)
        await node.stop_actor(target)
        await eventually(lambda: len(node.cell(w).actor.seen) == 2)
        seen = await node.ask(w, "get")
        assert Terminated(ActorRef(node.address, "ghost"), "not found") in seen
        assert Terminated(target, "stopped") in seen


async def test_block_mailbox_backpressure() -> None:
    gate = asyncio.Event()

    class Gated(Actor):
        mailbox_size = 4

        def on_start(self) -> None:
            self.n = 0

        async def on_message(self, msg: Any) -> Any:
            await gate.wait()
            if msg == "get":
                return self.n
            self.n += 1
            return None

    async with Node("t") as node:
        r = node.spawn(Gated)
        await asyncio.sleep(0)
        node.send(r, 0)  # taken by the actor, which waits on the gate
        mb = node.cell(r).mailbox
        await eventually(lambda: len(mb) == 0)
        for i in range(4):
            node.send(r, i)
        with pytest.raises(MailboxFull):
            node.send(r, "over")
        waiter = asyncio.ensure_future(node.tell(r, "waits"))
        for _ in range(5):  # (loop turns, not time: nothing but the gate can let it in)
            await asyncio.sleep(0)
        assert not waiter.done()  # the sender is held back, nothing dropped
        gate.set()
        assert await waiter is True
        assert await node.ask(r, "get") == 6
        assert node.cell(r).mailbox.stats().dropped == 0


async def test_drop_mailbox_counts() -> None:
    gate = asyncio.Event()

    class Ring(Actor):
        mailbox_size = 8
        overflow = "drop"

        async def on_message(self, msg: Any) -> Any:
            await gate.wait()

    async with Node("t") as node:
        r = node.spawn(Ring)
        await asyncio.sleep(0)
        results = [node.send(r, i) for i in range(20)]
        assert results.count(False) == 12  # 8 fit; the actor has not run yet
        assert node.cell(r).mailbox.stats().dropped == results.count(False)
        assert await node.tell(r, "also dropped") is False
        gate.set()


async def test_spawn_checks() -> None:
    async with Node("t") as node:
        node.spawn(Recorder, "dup")
        with pytest.raises(Exception, match="already runs"):
            node.spawn(Recorder, "dup")
        with pytest.raises(TypeError):
            node.spawn(int, "x")  # type: ignore[arg-type]


class SlowState(Actor):
    """Its "slow" handler suspends midway; "get" reports the log of what ran, in order."""

    def on_start(self) -> None:
        self.log: list[str] = []

    async def on_message(self, msg: Any) -> Any:
        if msg == "slow":
            self.log.append("slow-start")
            await asyncio.sleep(0.05)
            self.log.append("slow-end")
            return "slow-done"
        if msg == "slow-crash":
            await asyncio.sleep(0.01)
            raise RuntimeError("late crash")
        if msg == "get":
            return list(self.log)
        self.log.append(str(msg))
        return None


async def test_ask_fast_path_keeps_one_message_at_a_time_and_order() -> None:
    async with Node("t") as node:
        r = node.spawn(SlowState)
        assert await node.ask(r, "get") == []  # idle: the next ask runs in this task
        actor = node.cell(r).actor
        slow = asyncio.ensure_future(node.ask(r, "slow"))
        await eventually(lambda: actor.log == ["slow-start"])  # the slow handler is suspended now
        node.send(r, "t1")
        node.send(r, "t2")
        assert await slow == "slow-done"
        assert await node.ask(r, "get") == ["slow-start", "slow-end", "t1", "t2"]


async def test_cancelling_the_asker_does_not_cancel_the_handler() -> None:
    async with Node("t") as node:
        r = node.spawn(SlowState)
        assert await node.ask(r, "get") == []
        actor = node.cell(r).actor
        slow = asyncio.ensure_future(node.ask(r, "slow"))
        await eventually(lambda: actor.log == ["slow-start"])
        slow.cancel()
        await eventually(lambda: actor.log == ["slow-start", "slow-end"])  # it ran to its end
        assert await node.ask(r, "get") == ["slow-start", "slow-end"]


async def test_suspended_ask_that_raises_fails_the_asker_and_restarts_the_actor() -> None:
    async with Node("t") as node:
        r = node.spawn(SlowState, restart=RestartPolicy(backoff=0))
        node.send(r, "before")
        assert await node.ask(r, "get") == ["before"]
        with pytest.raises(RuntimeError, match="late crash"):
            await node.ask(r, "slow-crash")
        await eventually(lambda: node.cell(r).restarts == 1)
        assert await node.ask(r, "get") == []  # fresh state after the restart


async def test_ask_timeout_while_handler_suspended() -> None:
    async with Node("t") as node:
        r = node.spawn(SlowState)
        assert await node.ask(r, "get") == []
        with pytest.raises(AskTimeout):
            await node.ask(r, "slow", timeout=0.01)
        actor = node.cell(r).actor
        await eventually(lambda: actor.log == ["slow-start", "slow-end"])  # the handler carried on
        assert await node.ask(r, "get") == ["slow-start", "slow-end"]


async def test_handler_that_tells_itself_during_an_ask() -> None:
    class SelfTeller(Actor):
        def on_start(self) -> None:
            self.seen: list[Any] = []

        async def on_message(self, msg: Any) -> Any:
            if msg == "go":
                self.send(self.ref, "note")
                self.reply("went")
                return None
            if msg == "get":
                return self.seen
            self.seen.append(msg)

    async with Node("t") as node:
        r = node.spawn(SelfTeller)
        assert await node.ask(r, "get") == []
        assert await node.ask(r, "go") == "went"

        async def noted() -> bool:
            return await node.ask(r, "get") == ["note"]

        await eventually(noted)


async def test_urgent_messages_skip_the_backlog() -> None:
    gate = asyncio.Event()

    class Busy(Actor):
        urgent = frozenset({tuple})

        def on_start(self) -> None:
            self.order: list[Any] = []

        async def on_message(self, msg: Any) -> Any:
            await gate.wait()
            self.order.append(msg)
            return msg

    async with Node("t") as node:
        r = node.spawn(Busy)
        await asyncio.sleep(0)
        for i in range(5):
            node.send(r, i)
        ask = asyncio.ensure_future(node.ask(r, ("control",)))
        mb = node.cell(r).mailbox
        # 0 is in hand, the urgent ask went to the front of 1..4
        await eventually(lambda: len(mb) == 5 and not isinstance(mb.items[0], int))
        gate.set()
        assert await ask == ("control",)
        assert node.cell(r).actor.order[:2] == [0, ("control",)]  # right after the message in hand


def test_run_tunes_the_collector_unless_told_not_to() -> None:
    import gc

    from e2actors.runtime.node import GC_THRESHOLDS, run

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)

        async def nothing() -> int:
            return 7

        assert run(nothing(), tune=False) == 7
        assert gc.get_threshold() == (700, 10, 10)
        assert run(nothing()) == 7
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
