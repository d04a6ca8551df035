"""The runtime's pure parts, tested without an event loop: mailbox, supervision policy, the
connection caps (the handshake and records: tests/test_auth_records.py)."""

from __future__ import annotations

import pytest

from e2actors import MailboxFull
from e2actors.runtime.mailbox import Mailbox
from e2actors.runtime.supervision import RestartPolicy, RestartTracker
from e2actors.runtime.transport import Admission


def test_mailbox_drop_policy_counts_and_never_grows() -> None:
    mb = Mailbox(3, "drop")
    assert [mb.put_nowait(i) for i in range(5)] == [True, True, True, False, False]
    s = mb.stats()
    assert (s.depth, s.capacity, s.dropped, s.processed) == (3, 3, 2, 0)
    assert mb.get_nowait() == 0
    assert mb.put_nowait(9)
    assert [mb.get_nowait() for _ in range(3)] == [1, 2, 9]
    assert mb.stats().processed == 4


def test_mailbox_block_policy_refuses_nowait_when_full() -> None:
    mb = Mailbox(2, "block")
    mb.put_nowait("a")
    mb.put_nowait("b")
    with pytest.raises(MailboxFull):
        mb.put_nowait("c")
    assert mb.stats().dropped == 0 and len(mb) == 2


def test_mailbox_items_is_a_live_view_of_the_queue() -> None:
    mb = Mailbox(4)
    items = mb.items
    mb.put_nowait("a")
    mb.put_front("sig")
    assert list(items) == ["sig", "a"] and items is mb.items
    mb.get_nowait()
    assert list(items) == ["a"]
    mb.drain()
    assert not items


def test_mailbox_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        Mailbox(0)
    with pytest.raises(ValueError):
        Mailbox(10, "grow")  # type: ignore[arg-type]


def test_restart_tracker_limits_and_backoff() -> None:
    t = RestartTracker(RestartPolicy(max_restarts=3, within=10.0, backoff=0.1, backoff_max=0.25))
    assert t.on_crash(0.0) == ("restart", 0.1)
    assert t.on_crash(1.0) == ("restart", 0.2)
    assert t.on_crash(2.0) == ("restart", 0.25)
    assert t.on_crash(3.0) == ("escalate", 0.0)
    # Old restarts age out of the window.
    assert t.on_crash(12.5)[0] == "restart"


def test_restart_tracker_strategies() -> None:
    assert RestartTracker(RestartPolicy(strategy="stop")).on_crash(0)[0] == "stop"
    t = RestartTracker(RestartPolicy(max_restarts=0, on_exhausted="stop"))
    assert t.on_crash(0)[0] == "stop"


def test_admission_caps_in_total_and_per_host() -> None:
    a = Admission(max_total=3, max_per_host=2)
    assert a.admit("198.18.0.1") is None and a.admit("198.18.0.1") is None
    assert "2 connections from 198.18.0.1" in (a.admit("198.18.0.1") or "")
    assert a.admit("198.18.0.2") is None
    assert "cap of 3 connections" in (a.admit("198.18.0.3") or "")
    assert (a.total, a.from_host("198.18.0.1"), a.from_host("198.18.0.3")) == (3, 2, 0)
    a.release("198.18.0.1")
    assert a.admit("198.18.0.3") is None  # room again, for any host
    for host in ("198.18.0.1", "198.18.0.2", "198.18.0.3"):
        a.release(host)
    assert a.total == 0 and all(a.from_host(h) == 0 for h in ("198.18.0.1", "198.18.0.2", "198.18.0.3"))
