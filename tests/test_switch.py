"""The switch actor: ports, routes, NF groups (actors and inline), metadata, domains, remote
switches, table swaps with migration avoidance, accounting and traces."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from conftest import SECRET, eventually
from e2actors import Node
from e2actors.nf.instance import NFInstance
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.traffic import generate
from e2actors.runtime.ref import ActorRef
from e2actors.switch.messages import GetSwitchStats, GetTraces, SetTable
from e2actors.switch.ports import MemoryPort
from e2actors.switch.switch import Switch
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable
from nfkit import C, S, connection, udp_pkt

ALLOW = ("e2actors.", "test_switch")


class Tagger(Pipelet):
    """Tags UDP packets ``meta.kind = "udp"`` and others ``"other"``; counts what it saw."""

    async def process(self, batch: Batch) -> None:
        for p in batch:
            p.meta["kind"] = "udp" if p.proto == 17 else "other"
            p.meta.setdefault("seen_by", []).append(self.name)
            self.emit(p)


def mem(*names: str) -> tuple[PortSpec, ...]:
    return tuple(PortSpec(n, "memory") for n in names)


async def settle(node: Node, sw: ActorRef, timeout: float = 5.0) -> dict:
    """Wait until the switch is idle (nothing in flight), then return its stats."""
    async def idle() -> dict | None:
        st = await node.ask(sw, GetSwitchStats())
        return st if st["idle"] and st["mailbox"]["depth"] == 0 else None

    return await eventually(idle, timeout, what="the switch to be idle")


def port(node: Node, sw: ActorRef, name: str) -> MemoryPort:
    return node.cell(sw).actor.ports[name]  # type: ignore[union-attr]


async def start(node: Node, table: SwitchTable, **kw: Any) -> ActorRef:
    sw = node.spawn(Switch, f"switch-{table.server}", server=table.server, **kw)
    assert await node.ask(sw, SetTable(table)) == table.version
    return sw


async def test_port_to_port_with_drops_counted() -> None:
    async with Node("t") as node:
        table = SwitchTable(1, "s1", mem("in", "out"), (),
                            (Route("port:in", "ip or ip6", "port:out", "in->out"),))
        sw = await start(node, table)
        pkts = generate(30, seed=1)
        port(node, sw, "in").inject(pkts)
        st = await settle(node, sw)
        out = port(node, sw, "out").received
        from e2actors.packet.filter import compile_filter

        is_ip = compile_filter("ip or ip6")  # pcap semantics: VLAN-tagged frames do not match
        ip = [p for p in pkts if p.reason is None and is_ip(p)]
        assert [p.data for p in out] == [p.data for p in ip]
        malformed = sum(1 for p in pkts if p.reason is not None)
        assert st["drops"]["malformed"] == malformed
        assert st["drops"].get("no route", 0) == len(pkts) - malformed - len(ip)
        assert st["routes"]["in->out"] == len(ip)


@pytest.mark.parametrize("inline", [False, True])
async def test_chain_through_nf_groups_with_metadata_routing(inline: bool) -> None:
    async with Node("t", allow_spawn=ALLOW) as node:
        sw_name = "switch-s1"
        sw_ref = ActorRef(node.address, sw_name)
        members = []
        if not inline:
            for i in range(3):
                ref = node.spawn(NFInstance, f"tag#{i}", pipelet=Tagger, nf="tag", output=sw_ref)
                members.append(Member(f"tag#{i}", "s1", ref))
        else:
            members.append(Member("tag@s1", "s1", None))
        table = SwitchTable(
            1, "s1", mem("in", "out", "udp"),
            (GroupSpec("tag", tuple(members), affinity="flow", inline=inline,
                       pipelet="test_switch:Tagger"),),
            (Route("port:in", "", "nf:tag", "in->tag"),
             Route("nf:tag.out", 'meta.kind == "udp"', "port:udp", "tag->udp"),
             Route("nf:tag.out", "", "port:out", "tag->out")),
        )
        sw = node.spawn(Switch, sw_name, server="s1")
        await node.ask(sw, SetTable(table))
        pkts = [p for p in generate(60, seed=2) if p.reason is None]
        port(node, sw, "in").inject(pkts)
        await settle(node, sw)
        udp = port(node, sw, "udp").received
        other = port(node, sw, "out").received
        assert sorted(p.data for p in udp) == sorted(p.data for p in pkts if p.proto == 17)
        assert len(udp) + len(other) == len(pkts)
        # Each flow was handled by exactly one instance (affinity), and order per flow is kept.
        by_flow: dict = {}
        for p in udp + other:
            by_flow.setdefault(p.flow_key, set()).update(p.meta["seen_by"])
        assert all(len(v) == 1 for v in by_flow.values())
        if not inline:
            assert len({i for v in by_flow.values() for i in v}) == 3  # all instances took flows
        pos = {id(p): i for i, p in enumerate(pkts)}
        for lst in (udp, other):
            seen: dict = {}
            for p in lst:
                seen.setdefault(p.flow_key, []).append(pos[id(p)])
            assert all(v == sorted(v) for v in seen.values())


async def test_domain_routes_hold_the_whole_flow_until_the_host_is_known() -> None:
    async with Node("t") as node:
        table = SwitchTable(1, "s1", mem("in", "out", "yt"), (),
                            (Route("port:in", "domain youtube.com", "port:yt", "youtube"),
                             Route("port:in", "", "port:out", "rest")))
        sw = await start(node, table)
        yt = connection(request=b"GET / HTTP/1.1\r\nHost: www.youtube.com\r\n\r\n", cport=41000)
        ex = connection(request=b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", cport=41001)
        notyt = connection(request=b"GET / HTTP/1.1\r\nHost: notyoutube.com\r\n\r\n", cport=41002)
        dns = [udp_pkt(C, S, 5000, 53, b"\x00" * 20)]
        mixed = [p for trio in zip(yt, ex, notyt) for p in trio] + dns
        port(node, sw, "in").inject(mixed)
        st = await settle(node, sw)
        # Every packet of the youtube connection, its handshake included, took the youtube path.
        assert [p.data for p in port(node, sw, "yt").received] == [p.data for p in yt]
        rest = port(node, sw, "out").received
        assert sorted(p.data for p in rest) == sorted(p.data for p in ex + notyt + dns)
        assert st["hosts_learned"] == 3


async def test_domain_hold_bound_decides_without_a_host() -> None:
    async with Node("t") as node:
        table = SwitchTable(1, "s1", mem("in", "out", "yt"), (),
                            (Route("port:in", "domain youtube.com", "port:yt", "youtube"),
                             Route("port:in", "", "port:out", "rest")))
        sw = await start(node, table, hold_seconds=0.1)
        syn_only = connection(cport=42000)[:1]
        port(node, sw, "in").inject(syn_only)
        await eventually(lambda: len(port(node, sw, "out").received) == 1)  # once the hold bound passed
        st = await settle(node, sw)
        assert len(port(node, sw, "out").received) == 1
        assert st["counters"]["domain hold timeouts"] == 1


async def test_two_switches_carry_traffic_and_metadata_between_servers() -> None:
    async with Node("a", listen="mem://sw-a", secret=SECRET, allow_spawn=ALLOW) as na, \
            Node("b", listen="mem://sw-b", secret=SECRET, allow_spawn=ALLOW) as nb:
        swa, swb = ActorRef(na.address, "switch-a"), ActorRef(nb.address, "switch-b")
        inst = nb.spawn(NFInstance, "tag#0", pipelet=Tagger, nf="tag", output=swb)
        group = GroupSpec("tag", (Member("tag#0", "b", inst),), affinity="flow")
        routes = (Route("port:in", "", "nf:tag", "in->tag"), Route("nf:tag.out", "", "port:out", "tag->out"))
        common = dict(groups=(group,), routes=routes, switches={"a": swa, "b": swb},
                      port_servers={"in": "a", "out": "a"})
        na.spawn(Switch, "switch-a", server="a")
        nb.spawn(Switch, "switch-b", server="b")
        await na.ask(swa, SetTable(SwitchTable(1, "a", ports=mem("in", "out"), **common)))
        await nb.ask(swb, SetTable(SwitchTable(1, "b", **common)))
        pkts = [p for p in generate(20, seed=3) if p.reason is None]
        port(na, swa, "in").inject(pkts)
        await eventually(lambda: len(port(na, swa, "out").received) == len(pkts))
        out = port(na, swa, "out").received
        assert sorted(p.data for p in out) == sorted(p.data for p in pkts)
        assert all(p.meta["seen_by"] == ["tag#0"] for p in out)  # metadata crossed servers twice
        sta = await na.ask(swa, GetSwitchStats())
        stb = await nb.ask(swb, GetSwitchStats())
        assert sta["remote_tx"]["b"] == len(pkts) and stb["remote_tx"]["a"] == len(pkts)


async def test_scale_out_while_traffic_flows_keeps_every_flow_on_one_instance() -> None:
    async with Node("t", allow_spawn=ALLOW) as node:
        swref = ActorRef(node.address, "switch-s1")
        refs = {f"tag#{i}": node.spawn(NFInstance, f"tag#{i}", pipelet=Tagger, nf="tag", output=swref)
                for i in range(4)}

        def table(v: int, n: int, draining: tuple = ()) -> SwitchTable:
            ms = tuple(Member(f"tag#{i}", "s1", refs[f"tag#{i}"], state="draining" if i in draining else "running")
                       for i in range(n))
            return SwitchTable(v, "s1", mem("in", "out"), (GroupSpec("tag", ms, affinity="flow"),),
                               (Route("port:in", "", "nf:tag", "a"), Route("nf:tag.out", "", "port:out", "b")))

        sw = node.spawn(Switch, "switch-s1", server="s1")
        await node.ask(sw, SetTable(table(1, 2)))
        pkts = [p for p in generate(400, seed=9) if p.reason is None]
        chunks = [pkts[i:i + 200] for i in range(0, len(pkts), 200)]
        for i, ch in enumerate(chunks):
            port(node, sw, "in").inject(ch)
            if i == len(chunks) // 3:
                await node.ask(sw, SetTable(table(2, 4)))  # scale out 2 -> 4
            if i == 2 * len(chunks) // 3:
                await node.ask(sw, SetTable(table(3, 4, draining=(0,))))  # drain one
            await asyncio.sleep(0)
        await settle(node, sw)
        out = port(node, sw, "out").received
        assert len(out) == len(pkts)
        inst_of: dict = {}
        for p in out:
            inst_of.setdefault(p.flow_key, set()).update(p.meta["seen_by"])
        assert all(len(v) == 1 for v in inst_of.values()), "a flow reached two instances"
        per = Counter(next(iter(v)) for v in inst_of.values())
        assert per["tag#2"] > 0 and per["tag#3"] > 0  # new instances took new flows


async def test_traces_show_the_path() -> None:
    async with Node("t", allow_spawn=ALLOW) as node:
        table = SwitchTable(1, "s1", mem("in", "out"),
                            (GroupSpec("tag", (Member("tag@s1", "s1"),), inline=True, pipelet="test_switch:Tagger"),),
                            (Route("port:in", "", "nf:tag", "in->tag"), Route("nf:tag.out", "udp", "port:out", "tag->out")))
        sw = await start(node, table, trace_every=1)
        port(node, sw, "in").inject(connection()[:2] + [udp_pkt(C, S, 1, 2)])
        await settle(node, sw)
        traces = await node.ask(sw, GetTraces())
        hops = [[h[1] for h in t["hops"]] for t in traces]
        assert ["in s1:in", "route in->tag -> nf:tag", "route tag->out -> port:out", "out s1:out"] in hops
        assert any(h[-1] == "drop no route" for h in hops)


async def test_unknown_table_versions_are_ignored_and_bad_ports_refused() -> None:
    async with Node("t") as node:
        t2 = SwitchTable(2, "s1", mem("in", "out"), (), (Route("port:in", "", "port:out", "x"),))
        sw = await start(node, t2)
        assert await node.ask(sw, SetTable(SwitchTable(1, "s1"))) == 2  # an older table changes nothing
        with pytest.raises(Exception, match="unknown kind"):
            await node.ask(sw, SetTable(SwitchTable(3, "s1", (PortSpec("x", "carrier-pigeon"),))))
