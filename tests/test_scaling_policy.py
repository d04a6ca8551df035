"""The autoscaler's decisions (pure): hysteresis, cooldown, limits, drops."""

from e2actors.manager.scaling import Autoscaler, ScalingPolicy


def test_scale_out_needs_sustained_overload_then_cools_down() -> None:
    a = Autoscaler(ScalingPolicy(high=0.7, low=0.1, sustain=1.0, cooldown=3.0))
    a.report("ids", "ids#1", 0.9, 0, 0.0)
    assert a.decide("ids", 1, 1, 4, 0.0) is None  # not sustained yet
    a.report("ids", "ids#1", 0.95, 0, 0.5)
    assert a.decide("ids", 1, 1, 4, 0.5) is None
    a.report("ids", "ids#1", 0.95, 0, 1.1)
    d = a.decide("ids", 1, 1, 4, 1.1)
    assert d is not None and d.kind == "out" and d.target == 2
    a.changed("ids", 1.1)
    a.report("ids", "ids#1", 0.95, 0, 2.5)
    assert a.decide("ids", 2, 1, 4, 2.5) is None  # cooling down
    a.report("ids", "ids#1", 0.95, 0, 4.5)
    a.decide("ids", 2, 1, 4, 4.5)
    a.report("ids", "ids#1", 0.95, 0, 5.6)
    assert a.decide("ids", 2, 1, 4, 5.6).target == 3  # type: ignore[union-attr]


def test_blip_does_nothing_and_limits_hold() -> None:
    a = Autoscaler(ScalingPolicy(sustain=1.0, cooldown=0.0))
    a.report("x", "x#1", 0.99, 0, 0.0)
    a.decide("x", 1, 1, 1, 0.0)
    a.report("x", "x#1", 0.5, 0, 0.6)  # back to normal: the clock restarts
    assert a.decide("x", 1, 1, 4, 0.6) is None
    a.report("x", "x#1", 0.99, 0, 1.0)
    a.decide("x", 1, 1, 4, 1.0)
    a.report("x", "x#1", 0.99, 0, 2.1)
    assert a.decide("x", 1, 1, 1, 2.1) is None  # max reached


def test_drops_count_as_overload_and_idle_scales_in() -> None:
    a = Autoscaler(ScalingPolicy(sustain=0.0, cooldown=0.0))
    a.report("x", "x#1", 0.1, 5, 0.0)
    a.decide("x", 1, 1, 3, 0.0)  # first look only records the drop count
    a.report("x", "x#1", 0.1, 9, 0.5)
    assert a.decide("x", 1, 1, 3, 0.5).kind == "out"  # type: ignore[union-attr]
    a.report("x", "x#1", 0.01, 9, 1.0)
    a.report("x", "x#2", 0.02, 0, 1.0)
    assert a.decide("x", 2, 1, 3, 1.0).kind == "in"  # type: ignore[union-attr]
    assert a.decide("x", 1, 1, 3, 1.0) is None  # at the minimum
    assert a.decide("x", 1, 1, 3, 10.0) is None  # stale reports: no decision
