"""``Firewall``: an ordered ACL of pcap-filter conditions with connection tracking.

Config::

    rules:                      # first match wins
      - allow: "tcp dst port 80 or tcp dst port 443"
      - deny: "udp port 53 and not host 198.18.0.53"
      - "allow icmp"            # the same as {allow: icmp}
    default: deny               # what matches no rule (allow | deny)
    conntrack: true             # replies of allowed connections pass

With connection tracking, a packet that an ``allow`` rule (or an allowing default) lets through
opens its connection (the symmetric flow key) and every later packet of it, in either direction,
passes without consulting the ACL, until a TCP RST or idle expiry (``flow_timeout``). Denied
packets are dropped with the reason ``deny rule N`` or ``default deny``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from e2actors.errors import ConfigError, FilterError
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.filter import compile_filter

__all__ = ["Firewall"]


@dataclass
class FirewallConfig:
    """The Firewall's config (checked at plan time)."""

    #: ``allow EXPR`` / ``deny EXPR`` strings or ``{allow: EXPR}`` mappings, first match wins.
    rules: list[Any] = field(default_factory=list)
    default: Literal["allow", "deny"] = "deny"
    conntrack: bool = True


class Firewall(Pipelet):
    config_schema = FirewallConfig
    ports = ("out",)
    affinity = "flow"
    cost_pps = 400_000
    flow_timeout = 300.0

    setup_is_pure = True  # only reads its config: the planner checks it by running setup

    async def setup(self, config: dict[str, Any]) -> None:
        self.rules: list[tuple[bool, Any, str]] = []
        for i, r in enumerate(config.get("rules", ()), 1):
            if isinstance(r, str):
                action, _, expr = r.strip().partition(" ")
            elif isinstance(r, dict) and len(r) == 1:
                action, expr = next(iter(r.items()))
            else:
                raise ConfigError("Firewall", "rules", f"rule {i}: expected 'allow EXPR', 'deny EXPR' or {{allow: EXPR}}, "
                                                       f"got {r!r}")
            if action not in ("allow", "deny"):
                raise ConfigError("Firewall", "rules", f"rule {i}: action must be allow or deny, not {action!r}")
            try:
                flt = compile_filter(str(expr))
            except FilterError as exc:
                raise ConfigError("Firewall", "rules", f"rule {i}: {exc}") from None
            self.rules.append((action == "allow", flt, f"deny rule {i}"))
        default = config.get("default", "deny")
        if default not in ("allow", "deny"):
            raise ConfigError("Firewall", "default", f"must be allow or deny, not {default!r}")
        self.default_allow = default == "allow"
        self.conntrack = bool(config.get("conntrack", True))

    async def process(self, batch: Batch) -> None:
        flows = self.flows
        now = self.now
        rules = self.rules
        emit, drop = self.emit, self.drop
        ct = self.conntrack
        for pkt in batch.packets:
            key = pkt.flow_key if ct else None
            if ct and flows.touch(key, now) is not None:
                if pkt.tcp_flags & 0x04:  # RST closes the connection
                    flows.pop(key)
                emit(pkt)
                continue
            for allow, match, why in rules:
                if match(pkt):
                    if allow:
                        break
                    drop(pkt, why)
                    self.counters[why] += 1
                    break
            else:
                if not self.default_allow:
                    drop(pkt, "default deny")
                    continue
                allow = True
            if not allow:
                continue
            if ct and not pkt.tcp_flags & 0x04:
                flows.set(key, 1, now)
                self.counters["connections"] += 1
            emit(pkt)
