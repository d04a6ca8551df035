"""Routing: each server's :class:`~e2actors.switch.table.SwitchTable`, from the policy and a placement.

Every switch gets the same routes and the same NF groups (all members, local and remote, so all
switches balance a group alike); what differs per server is the external ports it holds.

Routes follow the policy edges in file order, per source, so the first edge whose condition holds
takes the packet, as the policy reads:

* an edge from ``in`` becomes a route from ``port:in``; its condition is the edge's ``when``
  and-ed with the entry filter of the classes it serves (all classes unless ``class:`` says), so
  traffic of no class finds no route and is dropped;
* an edge from ``NF.PORT`` becomes a route from ``nf:NF.PORT``; from ``NF``, one route per port;
  a ``class:`` restriction adds those classes' filters to the condition;
* targets: ``nf:NF``, ``port:out``, ``drop``;
* an NF port no edge leaves (a sink such as a logger) gets an explicit ``drop`` route named
  ``NF.PORT->end``, so its packets are counted as ending there rather than as "no route".

Inline NFs have ``GroupSpec.inline = True`` and members without an actor ref.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from e2actors.manager.conditions import any_of, combine
from e2actors.manager.hardware import Hardware
from e2actors.manager.policy import DROP, IN, OUT, Edge, Policy
from e2actors.runtime.ref import ActorRef
from e2actors.manager.shards import shard_port_params
from e2actors.switch.credits import DEFAULT_WINDOW, INPUT_KINDS, LIVE_WINDOW
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable

__all__ = ["fanout_group", "groups", "routes", "switch_tables", "tables_from"]


def _target(e: Edge) -> str:
    if e.target == OUT:
        return f"port:{OUT}"
    if e.target == DROP:
        return "drop"
    return f"nf:{e.target}"


def routes(policy: Policy) -> tuple[Route, ...]:
    """The routes of a policy, grouped by source (in order of first appearance), file order within."""
    by_source: dict[str, list[Route]] = {}
    all_classes = any_of(*(c.filter for c in policy.classes))
    for e in policy.edges:
        if e.classes:
            cls_cond = any_of(*(policy.class_named(c).filter for c in e.classes))
        else:
            cls_cond = all_classes if e.source == IN else ""
        cond = combine(cls_cond, e.when)
        if e.source == IN:
            sources = [f"port:{IN}"]
        else:
            ports = [e.port] if e.port else list(policy.nfs[e.source].ports)
            sources = [f"nf:{e.source}.{p}" for p in ports]
        for s in sources:
            by_source.setdefault(s, []).append(Route(s, cond, _target(e), e.label))
    for n, spec in policy.nfs.items():
        for p in spec.ports:
            s = f"nf:{n}.{p}"
            if s not in by_source:
                by_source[s] = [Route(s, "", "drop", f"{n}.{p}->end")]
    return tuple(r for rs in by_source.values() for r in rs)


def groups(policy: Policy, placement: Mapping[str, str], refs: Mapping[str, ActorRef] | None = None,
           states: Mapping[str, str] | None = None, weights: Mapping[str, float] | None = None,
           sharded: bool = False) -> tuple[GroupSpec, ...]:
    """One :class:`GroupSpec` per NF with every placed instance as a member. ``sharded``: the
    ingress is split by flow over the servers, so groups keep flows in their shard (``local``)
    unless they balance by host."""
    refs, states, weights = refs or {}, states or {}, weights or {}
    out = []
    by_nf: dict[str, list[tuple[int, str, str]]] = {}
    for inst, server in placement.items():
        nf, sep, k = inst.partition("#")
        if sep:
            by_nf.setdefault(nf, []).append((int(k) if k.isdigit() else 0, inst, server))
    for n, spec in policy.nfs.items():
        members = tuple(
            Member(inst, server, None if spec.inline else refs.get(inst), weights.get(inst, 1.0),
                   states.get(inst, "running"))
            for _k, inst, server in sorted(by_nf.get(n, ())))
        out.append(GroupSpec(n, members, spec.affinity, spec.input, spec.inline, spec.cls, dict(spec.config),
                             tuple(spec.ports), sharded and spec.affinity != "host"))
    return tuple(out)


def switch_tables(policy: Policy, placement: Mapping[str, str], hardware: Hardware, version: int = 1,
                  refs: Mapping[str, ActorRef] | None = None, switches: Mapping[str, ActorRef] | None = None,
                  states: Mapping[str, str] | None = None, clock: str = "wall") -> dict[str, SwitchTable]:
    """Each server's switch table (server -> table). ``refs`` gives instances' actors once deployed,
    ``switches`` each server's switch actor, ``states`` members' states (default ``running``)."""
    rs = routes(policy)
    gs = groups(policy, placement, refs, states, sharded=bool(hardware.shards))
    return tables_from(hardware, version, rs, gs, switches, clock, fanout_group(policy, hardware))


def tables_from(hardware: Hardware, version: int, rs: tuple[Route, ...], gs: tuple[GroupSpec, ...],
                switches: Mapping[str, ActorRef] | None, clock: str = "wall", group: int = 0,
                servers: tuple[str, ...] | None = None) -> dict[str, SwitchTable]:
    """Each server's table from its routes and groups (a transaction's in-between tables are made
    here too): the servers' ports with their credit origins and shard parameters, the clock."""
    shards = hardware.shards
    port_servers = {p.name: p.server for p in hardware.ports.values()}
    # Every input port is a credit origin (see e2actors.switch.credits), numbered in a stable order.
    origins: dict[int, str] = {}
    per_server: dict[str, list[PortSpec]] = {}
    for server in hardware.servers:
        specs = []
        for k, p in enumerate(hardware.ports.values()):
            if shards and server in shards:
                # A fanout group is per interface: each port its own id.
                params = shard_port_params(p.kind, p.params, server, shards, (group + k) & 0xFFFF)
            elif p.server == server:
                params = dict(p.params)
            else:
                continue
            if p.kind in INPUT_KINDS:
                origin = len(origins) + 1
                origins[origin] = server
                params["origin"] = origin
                params.setdefault("window", DEFAULT_WINDOW if p.kind == "pcap-in" else LIVE_WINDOW)
            specs.append(PortSpec(p.name, p.kind, params))
        per_server[server] = specs
    out = {}
    for server in servers if servers is not None else hardware.servers:
        ps = dict(port_servers)
        if shards and server in shards:
            ps.update({p.name: server for p in hardware.ports.values()})  # each shard has its own
        out[server] = SwitchTable(version, server, tuple(per_server[server]), gs, rs, dict(switches or {}), ps,
                                  dict(origins), clock)
    return out


def fanout_group(policy: Policy, hardware: Hardware) -> int:
    """A PACKET_FANOUT group id for a sharded live interface (16 bits), stable for one deployment."""
    from zlib import crc32

    return crc32(f"{policy.name}:{sorted(hardware.servers)}:{os.getpid()}".encode()) & 0xFFFF
