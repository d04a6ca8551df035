"""Plan updates, pure: the difference between two policies, and the plans a running deployment
moves to (a policy update, instances moved, removed, or re-placed after a server is lost).

Nothing here starts or stops anything: :mod:`e2actors.manager.changes` and
:mod:`e2actors.manager.recovery` apply these plans to a :class:`~e2actors.manager.deployment.Deployment`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from collections.abc import Iterable

from e2actors.errors import PlacementError, PolicyError
from e2actors.manager.hardware import Hardware
from e2actors.manager.instances import InstanceGraph, instance_name, nf_of
from e2actors.manager.placement import Placement, place_incremental
from e2actors.manager.plan import Plan
from e2actors.manager.policy import Edge, Policy
from e2actors.manager.sizing import DEFAULT_UTILIZATION, size

__all__ = ["Healed", "PolicyDiff", "diff_policies", "heal_lost", "plan_update", "replace_lost", "with_assignment",
           "with_server", "without_instances", "without_server"]

#: What may change in an NF while it runs (its instances are replaced, state carried over).
_REPLACEABLE = ("class", "config", "ports", "input")
#: What may not: the switches' balancers and inline runners are built around these.
_FIXED = ("affinity", "inline")


# --- the difference between two policies --------------------------------------------------------
def _edge_key(e: Edge) -> tuple:
    return (e.source, e.port or "", e.target, e.when, tuple(e.classes))


def _edge_text(e: Edge) -> str:
    s = f"{e.source}{'.' + e.port if e.port else ''} -> {e.target}"
    if e.when:
        s += f" when {e.when!r}"
    if e.classes:
        s += f" [class {', '.join(e.classes)}]"
    return s


@dataclass
class PolicyDiff:
    """What a policy update changes. ``instances_added`` maps each new instance to its server."""

    nfs_added: list[str] = field(default_factory=list)
    nfs_removed: list[str] = field(default_factory=list)
    #: NF -> what changed (``class``, ``config``, ...): its instances are replaced, state kept.
    nfs_changed: dict[str, list[str]] = field(default_factory=dict)
    edges_added: list[str] = field(default_factory=list)
    edges_removed: list[str] = field(default_factory=list)
    classes_changed: list[str] = field(default_factory=list)
    instances_added: dict[str, str] = field(default_factory=dict)
    instances_removed: list[str] = field(default_factory=list)
    instances_replaced: dict[str, str] = field(default_factory=dict)
    #: After the update: the version of the tables in force, how long it took, whether applied.
    applied: bool = False
    version: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def empty(self) -> bool:
        return not (self.nfs_added or self.nfs_removed or self.nfs_changed or self.edges_added
                    or self.edges_removed or self.classes_changed or self.instances_replaced)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """The difference, readably (``+`` added, ``-`` removed, ``~`` changed)."""
        if self.empty:
            return "no change"
        out: list[str] = []
        for n in self.nfs_added:
            out.append(f"+ nf {n}")
        for n in self.nfs_removed:
            out.append(f"- nf {n}")
        for n, what in self.nfs_changed.items():
            out.append(f"~ nf {n}: {', '.join(what)} (instances replaced, state carried over)")
        for e in self.edges_added:
            out.append(f"+ edge {e}")
        for e in self.edges_removed:
            out.append(f"- edge {e}")
        for c in self.classes_changed:
            out.append(f"~ class {c}")
        for i, s in self.instances_added.items():
            out.append(f"+ instance {i} on {s}")
        for i in self.instances_removed:
            out.append(f"- instance {i}")
        for i, s in self.instances_replaced.items():
            out.append(f"~ instance {i} on {s}")
        if self.applied:
            out.append(f"applied: tables v{self.version} in {self.seconds * 1000:.0f} ms")
        elif self.error:
            out.append(f"NOT applied (rolled back): {self.error}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """NFs, edges and classes added, removed or changed from ``old`` to ``new`` (instances are
    filled in by :func:`plan_update`). Raises :class:`PolicyError` for changes that cannot be
    made live (an NF's affinity or inline flag)."""
    d = PolicyDiff()
    d.nfs_added = [n for n in new.nfs if n not in old.nfs]
    d.nfs_removed = [n for n in old.nfs if n not in new.nfs]
    for n in new.nfs:
        if n not in old.nfs:
            continue
        a, b = old.nfs[n].to_dict(), new.nfs[n].to_dict()
        for k in _FIXED:
            if a[k] != b[k]:
                raise PolicyError(new.file, new.nfs[n].line,
                                  f"nf {n}: {k} cannot change while running ({a[k]} -> {b[k]}); "
                                  f"add the NF under another name and remove this one")
        what = [k for k in _REPLACEABLE if a.get(k) != b.get(k)]
        if what:
            d.nfs_changed[n] = what
    ok, nk = {_edge_key(e): e for e in old.edges}, {_edge_key(e): e for e in new.edges}
    d.edges_added = [_edge_text(e) for k, e in nk.items() if k not in ok]
    d.edges_removed = [_edge_text(e) for k, e in ok.items() if k not in nk]
    oc, nc = {c.name: c.filter for c in old.classes}, {c.name: c.filter for c in new.classes}
    d.classes_changed = sorted(f"{c}: {oc.get(c, '(none)')!r} -> {nc.get(c, '(none)')!r}"
                               for c in set(oc) | set(nc) if oc.get(c) != nc.get(c))
    return d


def plan_update(plan: Plan, new: Policy) -> tuple[Plan, PolicyDiff]:
    """The plan for ``new`` given the running ``plan``: NFs kept keep their instances where they
    are; added NFs are sized and placed incrementally (nothing placed moves)."""
    d = diff_policies(plan.policy, new)
    sizing = size(new, DEFAULT_UTILIZATION)
    counts: dict[str, list[int]] = {}
    for n, spec in new.nfs.items():
        if n in plan.policy.nfs:
            counts[n] = [int(i.partition("#")[2]) for i in plan.instances_of(n)]
        else:
            counts[n] = list(range(1, sizing.instances[n] + 1))
    sizing = sizing.resized({k: len(v) for k, v in counts.items()})
    graph = InstanceGraph.build(new, sizing, counts, plan.graph.pinned)
    kept = {i: s for i, s in plan.assignment.items() if i in set(graph.instances)}
    added = [instance_name(n, k) for n in d.nfs_added for k in counts[n]]
    placement = place_incremental(graph, plan.hardware, kept, added)
    nxt = {n: max(v, default=0) + 1 for n, v in counts.items()}
    for n, k in plan.next_index.items():
        if n in nxt:
            nxt[n] = max(nxt[n], k)
    new_plan = Plan(new, plan.hardware, sizing, graph, placement, {}, list(plan.notes), nxt)
    d.instances_added = {i: placement.assignment[i] for i in added if not new.nfs[nf_of(i)].inline}
    d.instances_removed = [i for n in d.nfs_removed for i in plan.instances_of(n)
                           if not plan.policy.nfs[n].inline]
    d.instances_replaced = {i: placement.assignment[i] for n in d.nfs_changed for i in new_plan.instances_of(n)
                            if not new.nfs[n].inline}
    return new_plan, d


def with_assignment(plan: Plan, changes: dict[str, str], solver: str = "moved") -> Plan:
    """``plan`` with some instances on other servers (nothing else changes)."""
    a = {**plan.assignment, **changes}
    pl = Placement(a, plan.graph.cut(a), solver, 0.0, None, plan.placement.feasible)
    return dataclasses.replace(plan, placement=pl)


def without_instances(plan: Plan, gone: set[str]) -> Plan:
    """``plan`` without the instances ``gone`` (of NFs that keep at least one other)."""
    counts = {n: [int(i.partition("#")[2]) for i in plan.instances_of(n) if i not in gone] for n in plan.policy.nfs}
    sizing = plan.sizing.resized({k: len(v) for k, v in counts.items()})
    graph = InstanceGraph.build(plan.policy, sizing, counts, plan.graph.pinned)
    kept = {i: s for i, s in plan.assignment.items() if i not in gone}
    placement = place_incremental(graph, plan.hardware, kept, [])
    return dataclasses.replace(plan, sizing=sizing, graph=graph, placement=placement)


def without_server(hw: Hardware, lost: str) -> Hardware:
    """``hw`` with server ``lost`` kept (its name, its place in the shard order and the credit
    origins numbered from it stay stable) but with no cores: nothing is placed there any more."""
    return _hardware(hw, {lost: 0})


def with_server(hw: Hardware, server: str, cores: int) -> Hardware:
    """``hw`` with ``server``'s cores given back (a lost server re-admitted as fresh capacity)."""
    return _hardware(hw, {server: cores})


def _hardware(hw: Hardware, cores: dict[str, int]) -> Hardware:
    servers = [dataclasses.replace(s, cores=cores[n]) if n in cores else s for n, s in hw.servers.items()]
    new = Hardware(servers, hw.ports, hw.file)
    new.shards = hw.shards  # (a sharded deployment's switches keep their shard of the input)
    new.servers_line = hw.servers_line
    return new


def replace_lost(plan: Plan, lost: str) -> tuple[Plan, dict[str, str]]:
    """The plan without server ``lost`` (kept in the hardware with no cores, so nothing lands
    there) and its instances placed again on the others. Returns ``(plan, {instance: server})``
    for the instances that moved. Raises :class:`PlacementError` when the others lack room."""
    new_hw = without_server(plan.hardware, lost)
    gone = [i for i, s in plan.assignment.items() if s == lost and plan.graph.cores.get(i, 0)]
    kept = {i: s for i, s in plan.assignment.items() if i not in gone}
    placement = place_incremental(plan.graph, new_hw, kept, gone)
    placement.solver = "recovery"
    new = dataclasses.replace(plan, hardware=new_hw, placement=placement)
    return new, {i: placement.assignment[i] for i in gone}


@dataclass
class Healed:
    """How a plan heals after losing a server (:func:`heal_lost`): the new plan; ``moved``:
    instances placed again (instance -> server); ``dropped``: instances left out because their
    NF runs elsewhere too (its flows go to the others); ``failed``: the last instances of their NF
    that found no room (their NF's packets are dropped with a reason); ``why``: why not all moved."""

    plan: Plan
    moved: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    why: str = ""


def heal_lost(plan: Plan, lost: str, failed: Iterable[str] = ()) -> Healed:
    """The plan after losing server ``lost``, as much of it as the other servers have room for:

    1. every instance of ``lost`` placed again on the others (incremental: nothing else moves);
    2. else (no room) the instances of NFs that keep a live instance elsewhere are dropped (their
       flows go to the others; the autoscaler may grow the group later) and only the NFs whose
       last instances were on ``lost`` are placed again;
    3. those that still find no room are ``failed``.

    ``failed``: instances already failed (they do not count as live elsewhere)."""
    try:
        new, moved = replace_lost(plan, lost)
        return Healed(new, moved)
    except PlacementError as exc:
        why = str(exc)
    hw0 = without_server(plan.hardware, lost)
    dead = set(failed)
    gone = [i for i, s in plan.assignment.items() if s == lost and plan.graph.cores.get(i, 0)]
    alive_nfs = {nf_of(i) for i, s in plan.assignment.items()
                 if s != lost and i not in dead and plan.graph.cores.get(i, 0)}
    dropped = [i for i in gone if nf_of(i) in alive_nfs]
    rest = [i for i in gone if i not in dropped]
    base = dataclasses.replace(plan, hardware=hw0)
    if dropped:
        base = without_instances(base, set(dropped))
    if not rest:
        return Healed(base, {}, dropped, [], why)
    kept = {i: s for i, s in base.assignment.items() if i not in rest}
    try:
        placement = place_incremental(base.graph, hw0, kept, rest)
    except PlacementError as exc:
        return Healed(base, {}, dropped, rest, str(exc))
    placement.solver = "recovery"
    return Healed(dataclasses.replace(base, placement=placement), {i: placement.assignment[i] for i in rest},
                  dropped, [], why)
