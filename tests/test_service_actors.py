"""``$system`` and the control endpoint outlive bad requests: an agent in its own process takes
hundreds of unknown or malformed messages to ``$system`` (tells and asks), answers each ask with an
error, counts them, logs a line or two, and still spawns afterwards (four such messages used to
spend its restart budget and leave it unable to spawn)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from clusterkit import Agent, metric, start_agent
from conftest import SECRET, eventually_blocking
from e2actors import ActorRef, E2Error, GetNodeInfo, Node, NodeInfo, Spawn
from e2actors.manager.control import ControlActor, GetStatus
from e2actors.runtime import service
from e2actors.runtime.messages import NodeUp, StopActor, Terminated, Tick
from e2actors.runtime.service import ServiceActor


@pytest.fixture
def agent(tmp_path: Path):
    sf = tmp_path / "secret"
    sf.write_bytes(SECRET)
    a = start_agent(tmp_path, "s1", "tcp://127.0.0.1:0", sf)
    yield a
    a.kill()


def bad_messages(address: str) -> list[Any]:
    """What a peer holding the secret might send ``$system`` that it does not handle."""
    ghost = ActorRef(address, "ghost")
    return [
        "hello", 42, 3.5, None, b"\x00\xff", [1, 2, 3], {"spawn": "e2actors.x:Y"}, {"cls": None},
        Tick("t"), NodeUp(address), Terminated(ghost, "gone"),
        Spawn("no-colon", ""),                              # malformed class path
        Spawn("e2actors.nothing_here:X", ""),               # on the allow-list, not importable
        Spawn("e2actors.runtime.node:NoSuchClass", ""),
        Spawn("os:system", "evil", {"command": "true"}),    # off the allow-list
    ]


def mistyped_messages() -> list[Any]:
    """Messages whose fields are not of their declared types: they never reach ``$system`` (the
    codec refuses them, see the test below)."""
    return [Spawn("e2actors.runtime.node:SystemActor", "x", [1, 2]),  # kwargs not a mapping
            Spawn(5, None)]                                          # fields of the wrong types


def wait_metric(agent: Agent, name: str, want: float, timeout: float = 15.0, **labels: str) -> float:
    """The agent's metric ``name`` once it reaches ``want`` (its metrics refresh twice a second)."""
    got: list[float] = []

    def reached() -> bool:
        got.append(metric(agent.metrics(), name, **labels))
        return got[-1] >= want

    eventually_blocking(reached, timeout, what=f"{name} {labels} to reach {want}")
    return got[-1]


async def test_agent_system_actor_survives_hundreds_of_bad_messages(agent: Agent) -> None:
    async with Node("peer", secret=SECRET) as node:
        sysref = node.system_ref(agent.address)
        bad = bad_messages(agent.address)
        sent = 0
        for round_ in range(14):
            for msg in bad:
                if round_ % 2:
                    node.send(sysref, msg)                  # a tell: no one to answer, still no crash
                else:
                    with pytest.raises(E2Error) as ei:  # (its own type: E2Error, SpawnRefused, or RemoteError)
                        await node.ask(sysref, msg, timeout=10)
                    said = f"{type(ei.value).__name__}: {ei.value}"
                    assert any(w in said for w in ("does not handle", "SpawnRefused", "Error")), said
                sent += 1
        assert sent > 400 // 2
        # Still serving, in order after every bad message: describe, spawn, stop.
        info = await node.ask(sysref, GetNodeInfo(), timeout=10)
        assert isinstance(info, NodeInfo) and info.pid == agent.proc.pid
        ref = await node.ask(sysref, Spawn("e2actors.runtime.node:SystemActor", "second"), timeout=10)
        assert ref == ActorRef(agent.address, "second")
        assert await node.ask(sysref, StopActor("second"), timeout=10) is True
    assert wait_metric(agent, "e2_node_events_total", sent, event="bad_requests") == sent
    text = agent.metrics()
    assert metric(text, "e2_node_events_total", event="actor_crashes") == 0
    assert metric(text, "e2_node_events_total", event="actor_restarts") == 0
    # Logged, but not once per message: one line per 10 s (this test takes a few seconds).
    lines = [ln for ln in agent.log_text().splitlines() if "$system refused a" in ln]
    assert 1 <= len(lines) <= 3, lines


async def test_agent_closes_the_link_of_a_peer_sending_mistyped_fields(agent: Agent) -> None:
    """A message whose fields are not of their declared types does not decode: the agent closes
    that one connection and counts it (as it does any frame that does not decode), and a new
    connection is served as before."""
    from e2actors.errors import ActorStopped

    async with Node("peer", secret=SECRET) as node:
        sysref = node.system_ref(agent.address)
        bad = mistyped_messages()
        for msg in bad:
            with pytest.raises(ActorStopped, match="lost"):
                await node.ask(sysref, msg, timeout=10)
            info = await node.ask(sysref, GetNodeInfo(), timeout=10)  # (a new connection)
            assert isinstance(info, NodeInfo) and info.pid == agent.proc.pid
    assert wait_metric(agent, "e2_node_events_total", len(bad), event="codec_errors") == len(bad)
    assert metric(agent.metrics(), "e2_node_events_total", event="actor_crashes") == 0


async def test_system_actor_in_process_tells_and_asks() -> None:
    """The same in one process: inline asks (run in the asker's task) and tells."""
    async with Node("n") as node:
        sysref = node.system_ref(node.address)
        for _ in range(50):
            with pytest.raises(E2Error, match=r"\$system does not handle str"):
                await node.ask(sysref, "what")
            node.send(sysref, 7)
        assert isinstance(await node.ask(sysref, GetNodeInfo()), NodeInfo)
        assert node.counters["bad_requests"] == 100
        assert node.counters["actor_crashes"] == 0


async def test_control_actor_answers_unknown_requests_with_errors() -> None:
    """The manager's control endpoint: the same treatment (here with no manager behind it, so
    even GetStatus fails: answered, not crashed)."""
    async with Node("control") as node:
        ref = node.spawn(ControlActor, "control", manager=None)
        for _ in range(10):
            with pytest.raises(E2Error, match="control does not handle"):
                await node.ask(ref, {"apply": "x"})
            with pytest.raises(AttributeError):
                await node.ask(ref, GetStatus())
        assert node.is_alive(ref) and node.counters["actor_crashes"] == 0
        assert node.counters["bad_requests"] == 20


class Picky(ServiceActor):
    async def handle(self, msg: Any) -> Any:
        if msg == "ok":
            return "fine"
        raise ValueError(f"not {msg!r}")


async def test_bad_requests_logged_once_per_interval(monkeypatch, caplog) -> None:
    clock = [1000.0]
    # (only the service's clock: the node's stall detector must not see the jump)
    monkeypatch.setattr(service, "monotonic", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="e2actors.service")
    async with Node("n") as node:
        ref = node.spawn(Picky, "picky")
        for i in range(30):
            with pytest.raises(ValueError):
                await node.ask(ref, i)
        clock[0] += Picky.log_interval          # the next one is logged, with the count in between
        with pytest.raises(ValueError):
            await node.ask(ref, "late")
        assert await node.ask(ref, "ok") == "fine"
        node.send(ref, "tell")
        await asyncio.sleep(0)
        assert await node.ask(ref, "ok") == "fine"  # the tell was handled before this ask
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("picky refused a request int 0: not 0")
    assert "29 more since the last report" in msgs[1] and "'late'" in msgs[1]
    assert node.counters["bad_requests"] == 32
