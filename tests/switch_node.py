"""A switch node in its own OS process, for the network-namespace end-to-end test.

Run inside the switch's namespace (``ip netns exec NS python tests/switch_node.py ...``). It
starts a Node listening on a unix socket (a path in /tmp works across network namespaces, which
each have their own loopback), spawns a ``Switch`` with two AF_PACKET ports and a Firewall NF
group (inline in the switch, or as an ``NFInstance`` actor), installs the table, prints
``READY <address>`` and serves until its stdin closes or it is killed.

The switch is a transparent two-port bump in the wire (an L2 bridge that knows its two hosts):

    port:a -> nf:fw                              everything from the client side
    port:b -> nf:fw                              everything from the server side
    nf:fw.out  ether src CLI_MAC -> port:b       what the client sent goes towards the server
    nf:fw.out  ether src SRV_MAC -> port:a       what the server sent goes towards the client
    (anything else from the firewall: no route, dropped and counted)

One firewall group sees both directions, so its connection tracking lets the replies of an
allowed connection through. The direction after the firewall is told by the source MAC (the
switch knows which host sits behind which port, as a learning bridge would after one frame);
two separate firewall groups per direction would not share their connection table.

Also spawns ``probe``: it answers ``"fw"`` with the firewall's drops by reason and its counters
(from the inline pipelet, or by asking the instance actor).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from e2actors import Actor, ActorRef, Node, run
from e2actors.agent import stop_when_stdin_closes
from e2actors.nf.instance import NFInstance
from e2actors.nf.messages import GetStats
from e2actors.switch.messages import SetTable
from e2actors.switch.switch import Switch
from e2actors.switch.table import GroupSpec, Member, PortSpec, Route, SwitchTable

FIREWALL = "e2actors.nf.builtin.firewall:Firewall"
FW_CONFIG = {
    "rules": ["allow arp", "allow tcp dst port 8080", "deny tcp port 9090"],
    "default": "deny",
}


class Probe(Actor):
    """Reports the firewall's drops by reason, wherever the firewall runs."""

    def __init__(self, switch: ActorRef, instance: ActorRef | None) -> None:
        self.switch = switch
        self.instance = instance

    async def on_message(self, msg: Any) -> Any:
        if msg != "fw":
            return None
        if self.instance is not None:
            st = await self.node.ask(self.instance, GetStats())
            return {"drops": st["drops"], "counters": st["counters"]}
        sw = self.node.cell(self.switch).actor  # type: ignore[union-attr]
        p = sw.groups["fw"].runner.pipelet
        return {"drops": dict(p.drops), "counters": dict(p.counters)}


async def _serve(args: argparse.Namespace) -> None:
    secret = open(args.secret_file, "rb").read().strip()
    node = Node("sw", listen=args.listen, secret=secret)
    await node.start()
    sw = node.spawn(Switch, "switch", server="sw")
    inst = None
    if args.mode == "inline":
        members = (Member("fw@sw", "sw", None),)
    else:
        inst = node.spawn(NFInstance, "fw#0", pipelet=FIREWALL, config=FW_CONFIG, nf="fw", output=sw)
        members = (Member("fw#0", "sw", inst),)
    table = SwitchTable(
        1, "sw",
        (PortSpec("a", "afpacket", {"iface": args.a}), PortSpec("b", "afpacket", {"iface": args.b})),
        (GroupSpec("fw", members, affinity="flow", inline=args.mode == "inline", pipelet=FIREWALL,
                   config=FW_CONFIG),),
        (Route("port:a", "", "nf:fw", "a->fw"),
         Route("port:b", "", "nf:fw", "b->fw"),
         Route("nf:fw.out", f"ether src {args.cli_mac}", "port:b", "fw->b"),
         Route("nf:fw.out", f"ether src {args.srv_mac}", "port:a", "fw->a")),
    )
    await node.ask(sw, SetTable(table))
    node.spawn(Probe, "probe", switch=sw, instance=inst)
    print("READY", node.address, flush=True)
    await stop_when_stdin_closes()  # the test closes our stdin (or dies): we stop
    await node.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--a", required=True, help="interface of port a (client side)")
    p.add_argument("--b", required=True, help="interface of port b (server side)")
    p.add_argument("--cli-mac", required=True)
    p.add_argument("--srv-mac", required=True)
    p.add_argument("--mode", choices=("inline", "actor"), default="inline")
    run(_serve(p.parse_args(argv if argv is not None else sys.argv[1:])))


if __name__ == "__main__":
    main()
