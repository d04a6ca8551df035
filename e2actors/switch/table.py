"""The switch table: what the manager's routing hands each server's switch (codec tags 300-319).

A table is versioned and replaces the previous one atomically. It names the server's external
ports, every NF group the switch can reach (local and remote members, so all switches balance a
group the same way), and the routes: for each source (an external port, or an NF's output port)
the ordered list of (condition, target) pairs; the first route whose condition matches takes the
packet, and a packet that matches none is dropped with the reason ``no route``.

Sources: ``port:NAME`` (entering from an external port) or ``nf:NF.PORT`` (emitted by an NF).
Targets: ``nf:NF`` (its group's load balancer), ``port:NAME`` (an external port, on whichever
server holds it), or ``drop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from e2actors.runtime.codec import message
from e2actors.runtime.ref import ActorRef

__all__ = ["GroupSpec", "Member", "PortSpec", "Route", "SwitchTable"]


@message(300)
@dataclass(frozen=True, slots=True)
class PortSpec:
    """An external port on this server. ``kind``: ``pcap-in`` (params: path, speed: 0 = as fast
    as possible or a replay factor, loop, shard: ``[k, n]`` to keep only the flows of shard k of
    n), ``pcap-out`` (path), ``afpacket`` (iface; fanout: a PACKET_FANOUT group id), ``memory``.
    Any kind: ``reverse_of: PORT`` makes what this port receives the return direction of ``PORT``
    (a bump in the wire; see :mod:`e2actors.switch.switch`). Input ports: ``origin`` (the number
    of the port's ingress credits) and ``window`` (the packets it may have in the deployment at
    once; see :mod:`e2actors.switch.credits`)."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@message(301)
@dataclass(frozen=True, slots=True)
class Member:
    """One instance of an NF group. ``ref`` is its actor (None for an inline instance, which runs
    inside the switch of ``server``). ``state``: ``running``, ``starting`` (no traffic yet),
    ``draining`` (no new flows), ``moving`` (its packets are held)."""

    instance: str
    server: str
    ref: ActorRef | None = None
    weight: float = 1.0
    state: str = "running"


@message(302)
@dataclass(frozen=True, slots=True)
class GroupSpec:
    """All instances of one NF, balanced with ``affinity`` (none, flow, host). ``local``: the
    ingress is sharded by flow across the servers (one switch per core), so each switch balances
    new flows over its own server's members while it has some that take them (host affinity never
    does: a host's flows arrive at every shard)."""

    nf: str
    members: tuple[Member, ...]
    affinity: str = "none"
    input: str = "packets"
    inline: bool = False
    pipelet: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    ports: tuple[str, ...] = ("out",)
    local: bool = False


@message(303)
@dataclass(frozen=True, slots=True)
class Route:
    """From ``source``, when ``condition`` holds (empty: always), go to ``target``. ``name``
    labels the policy edge for counters and traces."""

    source: str
    condition: str
    target: str
    name: str = ""


@message(304)
@dataclass(frozen=True, slots=True)
class SwitchTable:
    """Everything one server's switch needs, as one versioned value."""

    version: int
    server: str
    ports: tuple[PortSpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    routes: tuple[Route, ...] = ()
    switches: dict[str, ActorRef] = field(default_factory=dict)  # server -> its switch
    port_servers: dict[str, str] = field(default_factory=dict)  # external port -> server
    origins: dict[int, str] = field(default_factory=dict)  # ingress credit origin -> its server
    #: ``wall``, or ``packet``: the deployment replays a capture as fast as it goes, and switches
    #: keep time by the packets' timestamps (see e2actors.switch.dataplane).
    clock: str = "wall"
