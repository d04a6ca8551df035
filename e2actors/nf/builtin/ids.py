"""``IDS``: Snort-style ``content`` signatures over the reassembled stream, all patterns at once.

Config (the ``config`` of the policy)::

    rules: PATH | [RULE, ...]   # a rules file, or rule lines (a list mixing both is allowed:
                                # an item that does not look like a rule is read as a file path;
                                # files are read from the node's data directory, see Pipelet.data_path)
    vars: {HTTP_PORTS: "[80,8080]", ...}   # port variables (unknown ones mean any)
    strict: true                 # a malformed rule raises RuleError; false: skip it with a warning
    max_flows: 200000            # flows tracked (least recently used evicted past it)
    flow_timeout: 120            # seconds of idleness before a flow's state expires

TCP arrives through :meth:`IDS.on_stream` (the StreamDriver hands in-order payload per flow direction).
Per direction we keep the stream offset, a tail of ``longest pattern - 1`` bytes (so a pattern split
across segments or chunks is found in ``tail + chunk``), and which contents matched so far; ``depth``
and ``offset`` count from the start of that direction's stream. When every positive content of a rule
has matched in one direction (and none of its negated ones), the flow is unsafe: the call returns
``Verdict(port="unsafe", meta={"verdict": "unsafe", "sid": ..., "msg": ...})`` (sticky: the rest of the
flow follows; the flow is not scanned any further). Otherwise the first call of a flow returns
``Verdict(port="safe", meta={"verdict": "safe"})`` and later ones None (keep it).

Which side is the client (``flow:to_server`` = bytes the client sends), in order of precedence:

1. the side that sent a SYN without ACK, if the IDS saw it (:meth:`process` gets the SYN, or the
   driver calls :meth:`set_client`);
2. ports: when exactly one end of the flow key uses a port below 1024, that end is the server (this
   gets server-first protocols such as telnet, SMTP or FTP banners right);
3. the side whose bytes reached :meth:`on_stream` first.

The client is fixed by the first bytes of the flow. Non-TCP packets go through :meth:`process`: each
payload is matched alone (UDP, ICMP, other IP) and the packet leaves on ``safe`` or ``unsafe`` with the
same metadata; a TCP packet that reaches :meth:`process` (no stream driver) is not matched: it follows
its flow's verdict (``safe`` until the stream made it unsafe).

Counters: ``alerts`` (flows or datagrams flagged), ``alert:<sid>`` per rule, ``flows``, ``stream_bytes``,
``packets``. :attr:`IDS.alerts` gives ``{sid: count}``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable
from typing import Any

from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.nf.rules import ANY_SIDE, TO_CLIENT, TO_SERVER, Matcher, Rule, RuleError, RuleSet, load_rules, parse_rules
from e2actors.packet.batch import Batch
from e2actors.packet.flowtable import FlowTable
from e2actors.runtime.confine import Confinement

__all__ = ["IDS"]

# Flow state: a list (cheap, and msgpack-safe once the `seen` sets become lists).
_CLIENT, _STAGE, _SID, _D0, _D1 = range(5)
_NEW, _SAFE, _UNSAFE = 0, 1, 2
_UNKNOWN = -1


def _is_rule_text(s: str) -> bool:
    """A ``rules`` item that is rule text (or a comment), not a file path."""
    return "(" in s and s.rstrip().endswith(")") or s.lstrip().startswith("#") or "\n" in s


def _rule_items(rules: Any) -> list[str]:
    items = [rules] if isinstance(rules, (str, os.PathLike)) else list(rules or ())
    return [os.fspath(it) if isinstance(it, os.PathLike) else str(it) for it in items]


def _flow_ports(flow: Hashable) -> tuple[int, int] | None:
    """(low end port, high end port) of a packet flow key, None when the key has another shape."""
    if isinstance(flow, tuple) and len(flow) >= 5 and isinstance(flow[2], int) and isinstance(flow[4], int):
        return flow[2], flow[4]
    return None


class IDS(Pipelet):
    """Signature IDS: flags flows whose stream matches a rule (see the module docstring)."""

    ports = ("safe", "unsafe")
    affinity = "flow"
    input = "bytestream"
    cost_pps = 50_000
    flow_timeout = 120.0
    max_flows = 200_000

    def __init__(self) -> None:
        super().__init__()
        self.ruleset = RuleSet()
        self.rules: list[Rule] = []
        self._m: dict[int, Matcher] = {}
        self._pm: Matcher | None = None
        self._fingerprint = ""
        self._by_sid: dict[int, Rule] = {}
        self._calls = 0

    # --- setup -----------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        for item in _rule_items(config.get("rules", ())):
            if not _is_rule_text(item):
                confine.path(item, "rules")

    async def setup(self, config: dict[str, Any]) -> None:
        self.config = config
        if "max_flows" in config or "flow_timeout" in config:
            self.flows = FlowTable(float(config.get("flow_timeout", self.flow_timeout)),
                                   int(config.get("max_flows", self.max_flows)))
        # Rule files are read from inside the node's data directory.
        rules = [it if _is_rule_text(it) else self.data_path(it, "rules")
                 for it in _rule_items(config.get("rules", ()))]
        self.load(rules, vars=config.get("vars"), strict=config.get("strict", True))

    def load(self, rules: Any, vars: dict[str, str] | None = None, strict: bool = True) -> None:
        """(Re)load the rules: a path, or a list of rule lines and/or paths. Compiles the matchers."""
        rs = RuleSet()
        inline: list[str] = []
        for s in _rule_items(rules):
            if _is_rule_text(s):
                inline.extend(s.splitlines())
            else:
                if inline:
                    rs.extend(parse_rules(inline, "<config rules>", vars, strict))
                    inline = []
                rs.extend(load_rules(s, vars, strict))
        if inline:
            rs.extend(parse_rules(inline, "<config rules>", vars, strict))
        self.ruleset = rs
        self.rules = rs.rules
        self._by_sid = {r.sid: r for r in rs.rules}
        stream_rules = [r for r in rs.rules if r.proto in ("tcp", "ip")]
        # One matcher per side of the connection, holding only the rules that apply to it.
        self._m = {side: Matcher([r for r in stream_rules if r.side in (ANY_SIDE, side)])
                   for side in (TO_SERVER, TO_CLIENT)}
        self._pm = Matcher([r for r in rs.rules if r.proto != "tcp"])
        h = hashlib.sha256()
        for r in rs.rules:
            h.update(r.text.encode() + b"\n")
        self._fingerprint = h.hexdigest()[:16]
        self.counters["rules"] = len(rs.rules)
        self.counters["rules_skipped"] = len(rs.skipped)

    @property
    def alerts(self) -> dict[int, int]:
        """``{sid: alerts}``."""
        return {int(k[6:]): v for k, v in self.counters.items() if k.startswith("alert:")}

    # --- streams ---------------------------------------------------------------------------------
    def _state(self, flow: Hashable) -> list[Any]:
        now = self.now  # the runner's clock: packet time in replays, wall time live
        st = self.flows.touch(flow, now)
        if st is None:
            self._calls += 1
            if self._calls & 1023 == 0:
                for k, v in self.flows.expire(now):
                    self.on_flow_end(k, v)
            st = [_UNKNOWN, _NEW, 0, None, None]
            self.flows.set(flow, st, now)
            self.counters["flows"] += 1
        return st

    def set_client(self, flow: Hashable, direction: int) -> None:
        """Say which direction the client sends in (the side of the SYN); ignored once bytes flowed."""
        st = self._state(flow)
        if st[_D0] is None and st[_D1] is None:
            st[_CLIENT] = direction

    def _client(self, flow: Hashable, st: list[Any], direction: int) -> int:
        c = st[_CLIENT]
        if c == _UNKNOWN:
            ports = _flow_ports(flow)
            c = direction
            if ports is not None:
                lo, hi = ports
                if 0 <= lo < 1024 <= hi:
                    c = 1  # the low end is the server: the client sends from the high end
                elif 0 <= hi < 1024 <= lo:
                    c = 0
            st[_CLIENT] = c
        return c

    def on_stream(self, flow: Hashable, direction: int, data: bytes) -> Verdict | None:
        st = self._state(flow)
        if st[_STAGE] == _UNSAFE:
            return None
        side = TO_SERVER if self._client(flow, st, direction) == direction else TO_CLIENT
        m = self._m[side]
        d = st[_D0 + direction]
        if d is None:
            d = st[_D0 + direction] = m.new_state()
        self.counters["stream_bytes"] += len(data)
        if data:
            found = m.feed(d, data)
            if found:
                fired = m.fired(found, d[2])
                if fired:
                    ports = _flow_ports(flow)
                    if ports is not None and direction == 1:
                        ports = (ports[1], ports[0])
                    hit = [m.rules[i] for i in fired if ports is None or m.rules[i].ports_match(*ports)]
                    if hit:
                        return self._unsafe(st, hit)
        if st[_STAGE] == _NEW:
            st[_STAGE] = _SAFE
            return Verdict(port="safe", meta={"verdict": "safe"})
        return None

    def on_gap(self, flow: Hashable, direction: int, missing: int) -> Verdict | None:
        """Bytes lost: the tail no longer joins the next chunk, but offsets stay right."""
        st = self.flows.get(flow)
        if st is not None and st[_D0 + direction] is not None:
            d = st[_D0 + direction]
            d[0] += missing
            d[1] = b""
        return None

    def _unsafe(self, st: list[Any], hit: list[Rule]) -> Verdict:
        st[_STAGE] = _UNSAFE
        st[_SID] = hit[0].sid
        st[_D0] = st[_D1] = None  # no more scanning: free the tails
        self._count(hit)
        return Verdict(port="unsafe", meta=self._meta(hit[0]), reason=f"sid {hit[0].sid}")

    def _count(self, hit: list[Rule]) -> None:
        self.counters["alerts"] += 1
        for r in hit:
            self.counters[f"alert:{r.sid}"] += 1

    @staticmethod
    def _meta(r: Rule) -> dict[str, Any]:
        return {"verdict": "unsafe", "sid": r.sid, "msg": r.msg}

    def on_flow_end(self, flow: Hashable, state: Any) -> None:
        self.flows.pop(flow)

    # --- packets ---------------------------------------------------------------------------------
    async def process(self, batch: Batch) -> None:
        pm = self._pm
        safe = self._out["safe"]
        unsafe = self._out["unsafe"]
        for pkt in batch.packets:
            self.counters["packets"] += 1
            if pkt.proto == 6:
                flow = pkt.flow_key
                if pkt.tcp_flags & 0x12 == 0x02:  # SYN without ACK: its sender is the client
                    self.set_client(flow, pkt.direction)
                st = self.flows.get(flow)
                if st is not None and st[_STAGE] == _UNSAFE:
                    r = self._by_sid.get(st[_SID])
                    pkt.meta.update(self._meta(r) if r else {"verdict": "unsafe", "sid": st[_SID]})
                    unsafe.append(pkt)
                else:
                    pkt.meta["verdict"] = "safe"
                    safe.append(pkt)
                continue
            payload = pkt.payload if pm is not None and pm.patterns else b""
            hit: list[Rule] = []
            if payload:
                fired = pm.match_once(payload)  # type: ignore[union-attr]
                if fired:
                    flow = pkt.flow_key
                    st = self._state(flow)
                    direction = pkt.direction
                    side = TO_SERVER if self._client(flow, st, direction) == direction else TO_CLIENT
                    for i in fired:
                        r = pm.rules[i]  # type: ignore[union-attr]
                        if r.side in (ANY_SIDE, side) and r.proto_match(pkt.proto) and (
                                pkt.sport < 0 or r.ports_match(pkt.sport, pkt.dport)):
                            hit.append(r)
            if hit:
                self._count(hit)
                pkt.meta.update(self._meta(hit[0]))
                unsafe.append(pkt)
            else:
                pkt.meta["verdict"] = "safe"
                safe.append(pkt)

    # --- state -----------------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        flows = []
        for k, st, t in self.flows.export():
            out = list(st)
            for i in (_D0, _D1):
                if st[i] is not None:
                    out[i] = [st[i][0], st[i][1], sorted(st[i][2])]
            flows.append((k, out, t))
        return {"flows": flows, "counters": dict(self.counters), "rules": self._fingerprint}

    def import_state(self, data: dict[str, Any]) -> None:
        same = data.get("rules") == self._fingerprint
        entries = []
        for k, st, t in data.get("flows", ()):
            st = list(st)
            for i in (_D0, _D1):
                if st[i] is not None:
                    pos, tail, seen = st[i]
                    # Matched-content ids only mean something under the same rules.
                    st[i] = [pos, bytes(tail), set(seen) if same else set()]
            entries.append((k, st, t))
        self.flows.load(entries)
        self.counters.update({k: v for k, v in data.get("counters", {}).items() if k not in ("rules", "rules_skipped")})


# RuleError is re-exported for NF authors catching load failures.
__all__ += ["RuleError"]
