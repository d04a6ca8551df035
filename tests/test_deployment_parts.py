"""The pure parts of changing a deployment, without an event loop: the difference between two
policies and the plans it leads to (manager/diff.py), drain tracking (manager/drain.py), the
busy reports rebalancing reads (manager/rebalance.py)."""

from __future__ import annotations

import pytest

from e2actors.errors import PlacementError, PolicyError
from e2actors.manager.diff import diff_policies, plan_update, replace_lost, with_assignment, without_instances
from e2actors.manager.drain import DrainTracker
from e2actors.manager.hardware import Hardware, PortPlace, Server
from e2actors.manager.plan import make_plan
from e2actors.manager.policy import Policy
from e2actors.manager.rebalance import BusyTracker

BASE = """
name: {name}
nfs:
  fw: {{class: e2actors.nf.builtin.Firewall, cost_pps: 1000, min: 2, config: {{default: allow}}}}
  count: {{class: e2actors.nf.builtin.Counter, cost_pps: 1000, affinity: flow}}
{extra}classes:
  - {{name: all, filter: "", load_pps: 1000}}
edges:
  - {{from: in, to: fw}}
  - {{from: fw, to: count}}
  - {{from: count, to: {after_count}}}
{extra_edges}"""


def policy(name: str = "v1", extra: str = "", after_count: str = "out", extra_edges: str = "") -> Policy:
    return Policy.from_yaml(BASE.format(name=name, extra=extra, after_count=after_count, extra_edges=extra_edges))


def hardware(cores: int = 4) -> Hardware:
    return Hardware([Server("main", 0), Server("w1", cores), Server("w2", cores)],
                    {"in": PortPlace("in", "main"), "out": PortPlace("out", "main")})


def test_the_same_policy_makes_no_difference() -> None:
    d = diff_policies(policy(), policy())
    assert d.empty and d.text() == "no change"


def test_added_removed_and_changed_nfs_and_edges() -> None:
    new = policy("v2", extra="  tag: {class: e2actors.nf.builtin.Counter, cost_pps: 1000}\n",
                 after_count="tag", extra_edges="  - {from: tag, to: out}\n")
    d = diff_policies(policy(), new)
    assert d.nfs_added == ["tag"] and not d.nfs_removed and not d.nfs_changed
    assert d.edges_added == ["count -> tag", "tag -> out"] and d.edges_removed == ["count -> out"]
    back = diff_policies(new, policy())
    assert back.nfs_removed == ["tag"] and back.edges_added == ["count -> out"]
    changed = Policy.from_yaml(BASE.format(name="v3", extra="", after_count="out", extra_edges="")
                               .replace("{default: allow}", "{default: deny}"))
    assert diff_policies(policy(), changed).nfs_changed == {"fw": ["config"]}


def test_affinity_cannot_change_while_running() -> None:
    new = Policy.from_yaml(BASE.format(name="v2", extra="", after_count="out", extra_edges="")
                           .replace("affinity: flow", "affinity: none"))
    with pytest.raises(PolicyError, match="affinity cannot change while running"):
        diff_policies(policy(), new)


def test_plan_update_keeps_what_runs_where_it_is() -> None:
    old = make_plan(policy(), hardware())
    new = policy("v2", extra="  tag: {class: e2actors.nf.builtin.Counter, cost_pps: 1000}\n",
                 after_count="tag", extra_edges="  - {from: tag, to: out}\n")
    plan, d = plan_update(old, new)
    assert set(d.instances_added) == set(plan.instances_of("tag")) and plan.instances_of("tag")
    for inst, server in old.assignment.items():
        assert plan.assignment[inst] == server  # nothing placed moves
    assert d.instances_added == {i: plan.assignment[i] for i in plan.instances_of("tag")}
    assert not d.instances_removed and not d.instances_replaced
    # removing it again: its instances are the ones removed
    _plan2, d2 = plan_update(plan, policy("v3"))
    assert sorted(d2.instances_removed) == sorted(plan.instances_of("tag"))


def test_moved_and_removed_instances() -> None:
    plan = make_plan(policy(), hardware())
    fw1 = plan.instances_of("fw")[0]
    other = "w2" if plan.assignment[fw1] == "w1" else "w1"
    moved = with_assignment(plan, {fw1: other})
    assert moved.assignment[fw1] == other and moved.placement.solver == "moved"
    fewer = without_instances(plan, {fw1})
    assert fw1 not in fewer.assignment and fewer.instances_of("fw") == plan.instances_of("fw")[1:]


def test_a_lost_server_s_instances_go_to_the_others() -> None:
    plan = make_plan(policy(), hardware())
    lost = next(s for i, s in plan.assignment.items() if s != "main")
    new, moved = replace_lost(plan, lost)
    assert moved and all(s != lost for s in moved.values())
    assert new.hardware.servers[lost].cores == 0 and new.placement.solver == "recovery"
    assert {i for i, s in plan.assignment.items() if s == lost and plan.graph.cores.get(i)} == set(moved)
    tight = make_plan(policy(), hardware(cores=2))
    with pytest.raises(PlacementError):
        replace_lost(tight, next(s for s in tight.assignment.values() if s != "main"))


def test_drain_tracking() -> None:
    d = DrainTracker(limit=30)
    d.start("count#2", ["main", "w1"], now=0.0)
    assert "count#2" in d and len(d) == 1
    assert not d.drained("count#2", "main")
    assert not d.drained("count#3", "main")  # not draining
    assert d.drained("count#2", "w1")  # the last switch answered
    assert d.finish("count#2") and not d.finish("count#2")  # retired once
    d.start("fw#3", ["main", "w1"], now=0.0)
    assert d.overdue(29.0) == []
    assert d.overdue(31.0) == ["fw#3"] and d.overdue(32.0) == []  # reported once
    assert "fw#3" in d and d.finish("fw#3")


def test_busy_reports_age_out() -> None:
    b = BusyTracker()
    b.report("fw#1", 0.9, now=10.0)
    b.report("fw#2", 0.1, now=5.0)
    assert b.recent(11.0, max_age=2.0) == {"fw#1": 0.9}
    b.clear()
    assert b.recent(11.0, max_age=100.0) == {}


async def test_the_deployment_keeps_its_background_tasks_and_ends_them() -> None:
    import asyncio

    from e2actors.manager.deployment import Deployment
    from e2actors.runtime.node import Node

    dep = Deployment(allow=("e2actors.",), secret=b"x" * 32)
    async with Node("t") as node:
        dep.attach(node, node.ref(node.address, "nobody"))
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        task = dep.spawn_task(forever(), "forever")
        done = dep.spawn_task(asyncio.sleep(0), "quick")
        await started.wait()
        await done
        assert not done.cancelled()
        await dep.stop_all()
        assert task.cancelled()
    e = dep.record("*", "deploy", "nothing")
    assert dep.events == [e] and e.as_dict()["kind"] == "deploy"
