"""The switch's dataplane core (pure, no event loop) under pressure: small ingress batches of one
loop turn go to an instance as one batch, the window bounds what is out at an instance, a stuck
instance's waiting packets are dropped with a reason after the stall timeout (counted as
congestion, credit returned), and the autoscaler takes congestion as overload."""

from __future__ import annotations

from e2actors.manager.scaling import Autoscaler, ScalingPolicy
from e2actors.nf.messages import NFBatch
from e2actors.packet.build import ether, ipv4, udp
from e2actors.packet.packet import Packet
from e2actors.runtime.ref import ActorRef
from e2actors.switch.dataplane import Dataplane
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable

NF = ActorRef("mem://a", "nf#0")


def dataplane(stall: float = 1.0) -> Dataplane:
    table = SwitchTable(1, "a", (PortSpec("in", "memory", {"origin": 1, "window": 64}), PortSpec("out", "memory")),
                        (GroupSpec("nf", (Member("nf#0", "a", NF),), "flow"),),
                        (Route("port:in", "", "nf:nf", "e1"), Route("nf:nf.out", "", "port:out", "e2")),
                        {"a": ActorRef("mem://a", "switch-a")}, {"in": "a", "out": "a"}, {1: "a"})
    dp = Dataplane("a", stall_timeout=stall)
    dp.install(table, {}, 0.0)
    return dp


def pkt(i: int) -> Packet:
    src = "198.18.0.1"
    return Packet(ether(ipv4(src, "198.18.1.1", 17, udp(src, "198.18.1.1", 1000 + i, 53, payload=b"x" * 10))),
                  0.0, "in")


def feed(dp: Dataplane, first: int, batches: int, size: int, now: float) -> None:
    for w in range(batches):
        b = [pkt(first + w * size + k) for k in range(size)]
        dp.admit("in", b)
        dp.ingress("in", b, now)


def test_small_batches_of_one_turn_reach_the_instance_as_one() -> None:
    dp = dataplane()
    feed(dp, 0, 6, 3, 0.0)
    sends, _ports, _inline = dp.take(0.0)
    batches = [m for _ref, m, _c in sends if isinstance(m, NFBatch)]
    assert [len(m.batch.packets) for m in batches] == [18]
    assert [p.sport for p in batches[0].batch.packets] == [1000 + i for i in range(18)]  # (in order)


def test_a_stuck_instances_waiting_packets_are_dropped_with_a_reason_and_their_credit_returned() -> None:
    dp = dataplane(stall=1.0)
    feed(dp, 0, 1, 3, 0.0)
    dp.take(0.0)                       # out at the instance, never answered (it is stuck)
    feed(dp, 100, 6, 3, 0.1)
    dp.take(0.1)
    feed(dp, 500, 1, 5, 0.2)
    sends, _p, _i = dp.take(0.2)
    assert sends == [] and dp.queued == 5  # the instance's window is full: they wait
    room = dp.credits.room(1)
    dp.housekeeping(0.5)
    dp.take(0.5)
    assert not dp.drops                # not yet: a bounded wait, not an immediate drop
    dp.housekeeping(7.0)
    dp.take(7.0)
    assert dict(dp.drops) == {"instance nf#0 stalled": 5}
    assert dict(dp.congestion) == {"nf#0": 5}   # what the switch reports to the autoscaler
    assert dp.queued == 0 and dp.credits.room(1) == room + 5


def test_congestion_is_overload_for_the_autoscaler() -> None:
    a = Autoscaler(ScalingPolicy(sustain=0.0, cooldown=0.0))
    # Idle by its own report, but the switch could not deliver to it: not a scale-in, a scale-out.
    a.report("ids", "ids#1", 0.05, 0, 0.0)
    a.decide("ids", 2, 1, 4, 0.0)
    a.congested("ids", "ids#1", 40)
    a.report("ids", "ids#1", 0.05, 0, 0.5)
    d = a.decide("ids", 2, 1, 4, 0.5)
    assert d is not None and d.kind == "out", d
