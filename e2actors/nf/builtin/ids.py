"""``IDS``: Snort/Suricata-style signatures over the reassembled stream, all patterns at once.

Config (the ``config`` of the policy)::

    rules: PATH | [RULE, ...]   # a rules file, or rule lines (a list mixing both is allowed:
                                # an item that does not look like a rule is read as a file path;
                                # files are read from the node's data directory, see Pipelet.data_path)
    vars: {HTTP_PORTS: "[80,8080]", ...}   # port variables (unknown ones mean any)
    strict: true                 # a malformed rule raises RuleError; false: skip it with a warning
    max_flows: 200000            # flows tracked (least recently used evicted past it)
    flow_timeout: 120            # seconds of idleness before a flow's state expires
    overlap: first               # TCP overlap policy of the reassembly: first, last, bsd, linux
    inspect_window: 32768        # stream bytes kept per direction for relative matches and pcre
    stop_on_alert: true          # false: keep inspecting an unsafe flow (every rule can alert)
    matcher: hyperscan           # the prefilter engine (default: hyperscan when installed)

TCP arrives through :meth:`IDS.on_stream` (the StreamDriver hands in-order payload per flow
direction). The rule set is compiled per side of the connection into a prefilter
(:class:`~e2actors.nf.rules.Matcher`, all payload patterns in one pass) and full checks
(:func:`~e2actors.nf.rules.inspect`) on the last ``inspect_window`` bytes of the direction; HTTP
rules are checked on each request parsed by :class:`~e2actors.nf.http1.RequestParser`; rules with
``dsize`` (or ``flow:no_stream``) on the payload of each packet that carried the chunk.
When a rule matches, the flow is unsafe: the call returns ``Verdict(port="unsafe",
meta={"verdict": "unsafe", "sid": ..., "msg": ...})`` (sticky: the rest of the flow follows). With
``stop_on_alert`` the flow is not inspected any further. Otherwise the first call of a flow returns
``Verdict(port="safe", meta={"verdict": "safe"})`` and later ones None (keep it).

**Direction and flow state, as Suricata** (with ``stream.midstream`` on): the client is fixed by
the flow's first packet: the sender of the SYN (:meth:`set_client`), the receiver of a SYN/ACK
(:meth:`set_server`), else the sender of the flow's first packet (for TCP joined mid-stream, the
stream driver tells it with :meth:`set_first_sender` even when that packet was a pure ACK). ``flow:established`` holds for TCP once the
SYN/ACK was seen, or at once for a flow joined mid-stream (no SYN seen); a flow whose SYN is never
answered is not established. For UDP and ICMP it holds once both sides have sent a packet (the first
reply is established, the first datagram is not), as in Suricata.

Non-TCP packets go through :meth:`process`: each payload is matched alone (UDP, ICMP, other IP) and
the packet leaves on ``safe`` or ``unsafe`` with the same metadata; a TCP packet that reaches
:meth:`process` (no stream driver) is not matched: it follows its flow's verdict.

Counters: ``alerts`` (flows or datagrams flagged), ``alert:<sid>`` per rule, ``flows``,
``stream_bytes``, ``packets``, ``http_requests``. :attr:`IDS.alerts` gives ``{sid: count}``;
:attr:`IDS.alert_log` the latest ``(flow, direction, sid)`` alerts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from e2actors.errors import ConfigError
from e2actors.nf.config import config_number
from e2actors.nf.http1 import RequestParser
from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.nf.rules import (
    ANY_SIDE,
    DEFAULT_BACKEND,
    HTTP_BUFFERS,
    MATCHERS,
    TO_CLIENT,
    TO_SERVER,
    Literals,
    Matcher,
    Rule,
    RuleError,
    RuleSet,
    inspect,
    load_rules,
    parse_rules,
)
from e2actors.packet.batch import Batch
from e2actors.packet.defrag import Defragmenter
from e2actors.packet.flowtable import FlowTable
from e2actors.packet.reassembly import OVERLAP_POLICIES
from e2actors.runtime.confine import Confinement

__all__ = ["IDS", "Detector"]

# Flow state: a list (cheap, and msgpack-safe once the sets become lists).
_CLIENT, _STAGE, _SID, _D0, _D1, _FLAGS, _BITS, _FIRED = range(8)
_NEW, _SAFE, _UNSAFE = 0, 1, 2
_UNKNOWN = -1
# _FLAGS bits
_SYN, _SYNACK, _SEEN0, _SEEN1, _HTTP = 1, 2, 4, 8, 16
# Direction state: the Matcher's [pos, tail, seen, pids] and then:
_BUF, _BUFSTART, _PARSER = 4, 5, 6


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


def _flowbits_ok(r: Rule, bits: set[str]) -> bool:
    for verb, names, all_of in r.flowbits:
        if verb == "isset":
            if not (all(n in bits for n in names) if all_of else any(n in bits for n in names)):
                return False
        elif verb == "isnotset":
            if not (all(n not in bits for n in names) if all_of else any(n not in bits for n in names)):
                return False
    return True


def _flowbits_apply(r: Rule, bits: set[str]) -> None:
    for verb, names, _all in r.flowbits:
        if verb == "set":
            bits.update(names)
        elif verb == "unset":
            bits.difference_update(names)
        elif verb == "toggle":
            for n in names:
                if n in bits:
                    bits.discard(n)
                else:
                    bits.add(n)


def _order(r: Rule) -> int:
    """Rules that set flowbits are checked before the ones that test them (as Suricata orders them)."""
    verbs = {v for v, _, _ in r.flowbits}
    if verbs & {"set", "unset", "toggle"} and not verbs & {"isset", "isnotset"}:
        return 0
    return 1 if verbs & {"set", "unset", "toggle"} else 2


class _HttpRules:
    """HTTP rules, prefiltered on each request by the longest positive content of each rule."""

    def __init__(self, rules: list[Rule], backend: str) -> None:
        self.rules = rules
        self.always: list[int] = []
        per: dict[str, list[tuple[bytes, bool]]] = {}
        owners: dict[str, list[int]] = {}
        for ri, r in enumerate(rules):
            best = None
            for b, els in r.buffers:
                for e in els:
                    if getattr(e, "pattern", None) is not None and not e.negated and b in HTTP_BUFFERS:
                        if best is None or len(e.pattern) > len(best[1]):
                            best = (b, e.pattern, e.nocase)
            if best is None:
                self.always.append(ri)
            else:
                per.setdefault(best[0], []).append((best[1], best[2]))
                owners.setdefault(best[0], []).append(ri)
        self.lits = {b: Literals(p, backend or DEFAULT_BACKEND) for b, p in per.items()}
        self.owners = owners

    def candidates(self, req: dict[str, bytes]) -> list[int]:
        out = list(self.always)
        for b, lit in self.lits.items():
            buf = req.get(b)
            if buf:
                own = self.owners[b]
                out.extend(own[k] for k in {k for k, _, _ in lit.scan(buf)})
        return sorted(set(out), key=lambda i: (_order(self.rules[i]), i))


class Detector:
    """A rule set compiled for one IDS: matchers per side of the connection and per kind of input.
    Building it is the expensive part of loading rules (pure work, no I/O: run it in a thread)."""

    def __init__(self, rs: RuleSet, backend: str | None = None) -> None:
        stream = [r for r in rs.rules if r.proto in ("tcp", "ip", "http") and not r.http and not r.packet_only]
        pkt_tcp = [r for r in rs.rules if r.proto in ("tcp", "ip", "http") and not r.http and r.packet_only]
        other = [r for r in rs.rules if r.proto not in ("tcp", "http") and not r.http]
        http = [r for r in rs.rules if r.http]

        def sided(rules: list[Rule], side: int) -> list[Rule]:
            return sorted((r for r in rules if r.side in (ANY_SIDE, side)), key=_order)

        #: Stream rules, per side; TCP packet rules (dsize, no_stream), per side; other protocols.
        self.stream = {s: Matcher(sided(stream, s), backend) for s in (TO_SERVER, TO_CLIENT)}
        self.tcp_packet = {s: Matcher(sided(pkt_tcp, s), backend) for s in (TO_SERVER, TO_CLIENT)}
        self.packet = {s: Matcher(sided(other, s), backend) for s in (TO_SERVER, TO_CLIENT)}
        self.http = _HttpRules([r for r in http if r.side in (ANY_SIDE, TO_SERVER)], backend) if http else None
        self.backend = self.stream[TO_SERVER].backend


@dataclass
class IDSConfig:
    """The IDS's config (checked at plan time, inline rules and rule files the planner sees included)."""

    #: A rules file, rule text, or a list of both.
    rules: str | list[str] = field(default_factory=list)
    vars: dict[str, Any] | None = None
    strict: bool = True
    matcher: str | None = None
    overlap: str | None = None
    defrag: bool = True
    stop_on_alert: bool = True
    inspect_window: int = 32768
    flow_timeout: float | None = None
    max_flows: int | None = None


class IDS(Pipelet):
    """Signature IDS: flags flows whose stream matches a rule (see the module docstring)."""
    config_schema = IDSConfig

    ports = ("safe", "unsafe")
    affinity = "flow"
    input = "bytestream"
    cost_pps = 50_000
    flow_timeout = 120.0
    max_flows = 200_000
    timer_interval = 1.0  # (fragments of datagrams that never complete time out)

    def __init__(self) -> None:
        super().__init__()
        self.ruleset = RuleSet()
        self.rules: list[Rule] = []
        self.detector: Detector | None = None
        self._fingerprint = ""
        self._by_sid: dict[int, Rule] = {}
        self._calls = 0
        self.window = 32768
        self.stop_on_alert = True
        #: Fragments of non-TCP datagrams are reassembled before the packet rules look at them
        #: (config ``defrag: false`` turns it off: each fragment is then matched alone).
        self.defrag: Defragmenter | None = Defragmenter()
        #: The latest alerts: ``(flow, direction, sid)``.
        self.alert_log: deque[tuple[Hashable, int, int]] = deque(maxlen=10000)
        #: Options for the reassembly that feeds :meth:`on_stream` (the runner reads them).
        self.reassembly: dict[str, Any] = {}

    @classmethod
    def reassembly_options(cls, config: dict[str, Any]) -> dict[str, Any]:
        if "overlap" not in config:
            return {}
        overlap = str(config["overlap"])
        if overlap not in OVERLAP_POLICIES:
            raise ConfigError("IDS", "overlap", f"one of {', '.join(OVERLAP_POLICIES)}, not {overlap!r}")
        return {"overlap": overlap}

    # --- setup -----------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict[str, Any], base_dir: str = ".") -> None:
        """At plan time: the numbers, the matcher, the overlap policy and the rules written in the
        config itself (rule files are read on the node that runs the NF, from its data directory)."""
        super().validate_config(config, base_dir)
        for key, default, minimum in (("flow_timeout", 1.0, 1e-9), ("max_flows", 1, 1), ("inspect_window", 1, 1)):
            config_number("IDS", config, key, default, minimum=minimum)
        if config.get("matcher") not in (None, *MATCHERS):
            raise ConfigError("IDS", "matcher", f"one of {', '.join(MATCHERS)}, not {config['matcher']!r}")
        cls.reassembly_options(config)
        vars_ = config.get("vars")
        if vars_ is not None and not isinstance(vars_, dict):
            raise ConfigError("IDS", "vars", "a mapping such as {HOME_NET: 10.0.0.0/8}")
        strict = config.get("strict", True)
        items = _rule_items(config.get("rules", ()))
        inline = [line for it in items if _is_rule_text(it) for line in it.splitlines()]
        try:
            if inline:
                parse_rules(inline, "<config rules>", vars_, strict)
            # Rule files the planner can see (a path next to the policy) are read now, so a broken
            # rule stops the run before traffic, with its file and line; others are the node's.
            for it in items:
                if not _is_rule_text(it) and os.path.isfile(it):
                    load_rules(it, vars_, strict)
        except RuleError as exc:
            raise ConfigError("IDS", "rules", str(exc)) from None

    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        for item in _rule_items(config.get("rules", ())):
            if not _is_rule_text(item):
                confine.path(item, "rules")

    async def setup(self, config: dict[str, Any]) -> None:
        self.config = config
        if "max_flows" in config or "flow_timeout" in config:
            self.flows = FlowTable(config_number("IDS", config, "flow_timeout", float(self.flow_timeout), minimum=1e-9),
                                   config_number("IDS", config, "max_flows", int(self.max_flows), minimum=1))
        self.window = config_number("IDS", config, "inspect_window", self.window, minimum=1)
        self.stop_on_alert = bool(config.get("stop_on_alert", True))
        if not config.get("defrag", True):
            self.defrag = None
        self.reassembly = self.reassembly_options(config)
        if config.get("matcher") not in (None, *MATCHERS):
            raise ConfigError("IDS", "matcher", f"one of {', '.join(MATCHERS)}, not {config['matcher']!r}")
        # Rule files are read from inside the node's data directory.
        rules = [it if _is_rule_text(it) else self.data_path(it, "rules")
                 for it in _rule_items(config.get("rules", ()))]
        # Compiling a large rule set takes long: off the event loop, so the node keeps answering.
        rs, det = await asyncio.to_thread(self.compile, rules, config.get("vars"),
                                          config.get("strict", True), config.get("matcher"))
        self._install(rs, det)

    @staticmethod
    def compile(rules: Any, vars: dict[str, str] | None = None, strict: bool = True,
                matcher: str | None = None) -> tuple[RuleSet, Detector]:
        """Parse and compile rules (a path, or a list of rule lines and/or paths). Pure work."""
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
        return rs, Detector(rs, matcher)

    def load(self, rules: Any, vars: dict[str, str] | None = None, strict: bool = True,
             matcher: str | None = None) -> None:
        """(Re)load the rules synchronously (tests, tools); :meth:`setup` builds them in a thread."""
        self._install(*self.compile(rules, vars, strict, matcher))

    def _install(self, rs: RuleSet, det: Detector) -> None:
        self.ruleset = rs
        self.rules = rs.rules
        self.detector = det
        self._by_sid = {r.sid: r for r in rs.rules}
        h = hashlib.sha256()
        for r in rs.rules:
            h.update(r.text.encode("utf-8", "surrogateescape") + b"\n")
        self._fingerprint = h.hexdigest()[:16]
        self.counters["rules"] = len(rs.rules)
        self.counters["rules_skipped"] = len(rs.skipped)

    @property
    def alerts(self) -> dict[int, int]:
        """``{sid: alerts}``."""
        return {int(k[6:]): v for k, v in self.counters.items() if k.startswith("alert:")}

    # --- flow state --------------------------------------------------------------------------------
    def _state(self, flow: Hashable) -> list[Any]:
        now = self.now  # the runner's clock: packet time in replays, wall time live
        st = self.flows.touch(flow, now)
        if st is None:
            self._calls += 1
            if self._calls & 1023 == 0:
                for k, v in self.flows.expire(now):
                    self.on_flow_end(k, v)
            st = [_UNKNOWN, _NEW, 0, None, None, 0, set(), set()]
            self.flows.set(flow, st, now)
            self.counters["flows"] += 1
        return st

    def set_client(self, flow: Hashable, direction: int) -> None:
        """The SYN's sender (``direction``) is the client; ignored once the client is known."""
        st = self._state(flow)
        st[_FLAGS] |= _SYN
        if st[_CLIENT] == _UNKNOWN:
            st[_CLIENT] = direction

    def set_server(self, flow: Hashable, direction: int) -> None:
        """A SYN/ACK from ``direction``: the handshake is answered; its receiver is the client."""
        st = self._state(flow)
        st[_FLAGS] |= _SYNACK
        if st[_CLIENT] == _UNKNOWN:
            st[_CLIENT] = 1 - direction

    def set_first_sender(self, flow: Hashable, direction: int) -> None:
        """Joined mid-stream, the flow's first packet (payload-less) came from ``direction``: as
        Suricata with ``stream.midstream``, that side is the client (no handshake seen)."""
        st = self._state(flow)
        if st[_CLIENT] == _UNKNOWN:
            st[_CLIENT] = direction

    @staticmethod
    def _client(st: list[Any], direction: int) -> int:
        c = st[_CLIENT]
        if c == _UNKNOWN:
            c = st[_CLIENT] = direction  # the first packet's sender
        return c

    @staticmethod
    def _established(st: list[Any], tcp: bool) -> bool:
        f = st[_FLAGS]
        if tcp:
            return not f & _SYN or bool(f & _SYNACK)
        return f & (_SEEN0 | _SEEN1) == _SEEN0 | _SEEN1

    def _header_ok(self, r: Rule, st: list[Any], ports: tuple[int, int] | None, tcp: bool) -> bool:
        if ports is not None and not r.ports_match(*ports):
            return False
        if r.established is not None and r.established != self._established(st, tcp):
            return False
        return not r.flowbits or _flowbits_ok(r, st[_BITS])

    def _take(self, r: Rule, st: list[Any], hits: list[Rule]) -> None:
        """``r`` matched: apply its flowbits; it alerts unless noalert (once per flow)."""
        if r.flowbits:
            _flowbits_apply(r, st[_BITS])
        if not r.noalert and r.sid not in st[_FIRED]:
            hits.append(r)

    # --- streams ---------------------------------------------------------------------------------
    def on_stream(self, flow: Hashable, direction: int, data: bytes) -> Verdict | None:
        st = self._state(flow)
        stage = st[_STAGE]
        if stage == _UNSAFE and self.stop_on_alert:
            return None
        det = self.detector
        if det is None:
            return None
        st[_FLAGS] |= _SEEN0 << direction
        side = TO_SERVER if self._client(st, direction) == direction else TO_CLIENT
        m = det.stream[side]
        d = st[_D0 + direction]
        if d is None:
            d = st[_D0 + direction] = m.new_state() + [b"", 0, None]
        self.counters["stream_bytes"] += len(data)
        hits: list[Rule] = []
        if data:
            ports = _flow_ports(flow)
            if ports is not None and direction == 1:
                ports = (ports[1], ports[0])
            if side == TO_SERVER and det.http is not None:
                self._http(st, d, data, ports, hits)
            if m.complex:
                buf = d[_BUF] + data if d[_BUF] else data
                if len(buf) > self.window:
                    d[_BUFSTART] += len(buf) - self.window
                    buf = buf[-self.window:]
                d[_BUF] = buf
            found = m.feed(d, data)
            if found:
                for i in m.fired(found, d[2]):
                    r = m.rules[i]
                    if (r.proto != "http" or st[_FLAGS] & _HTTP) and self._header_ok(r, st, ports, True):
                        self._take(r, st, hits)
            if m.complex:
                cands = m.candidates(d)
                if len(cands) > 1:
                    cands.sort()  # the rules are in flowbits order
                for i in cands:
                    r = m.rules[i]
                    if r.sid in st[_FIRED]:
                        continue
                    if (r.proto != "http" or st[_FLAGS] & _HTTP) and self._header_ok(r, st, ports, True) \
                            and inspect(r.buffers[0][1] if r.buffers else (), d[_BUF], d[_BUFSTART]):
                        self._take(r, st, hits)
            pm = det.tcp_packet[side]
            if pm.rules and self.carriers:
                for pkt in self.carriers:
                    self._packet_rules(pm, st, pkt.payload, ports, True, hits)
        if hits:
            return self._alert(flow, direction, st, hits)
        if stage == _NEW:
            st[_STAGE] = _SAFE
            return Verdict(port="safe", meta={"verdict": "safe"})
        return None

    def _http(self, st: list[Any], d: list[Any], data: bytes, ports: tuple[int, int] | None,
              hits: list[Rule]) -> None:
        p = d[_PARSER]
        if p is None:
            p = d[_PARSER] = RequestParser()
        hr = self.detector.http  # type: ignore[union-attr]
        for req in p.feed(data):
            st[_FLAGS] |= _HTTP
            self.counters["http_requests"] += 1
            for i in hr.candidates(req):
                r = hr.rules[i]
                if r.sid in st[_FIRED] or not self._header_ok(r, st, ports, True):
                    continue
                ok = True
                for b, els in r.buffers:
                    buf = req.get(b)
                    if buf is None or not inspect(els, buf):
                        ok = False
                        break
                if ok:
                    self._take(r, st, hits)

    def _packet_rules(self, pm: Matcher, st: list[Any], payload: bytes, ports: tuple[int, int] | None,
                      tcp: bool, hits: list[Rule]) -> None:
        """Match one packet's payload alone against ``pm``'s rules."""
        s = pm.new_state()
        found = pm.feed(s, payload) if payload else []
        for i in pm.fired(found, s[2]) if found else ():
            r = pm.rules[i]
            if r.sid not in st[_FIRED] and r.dsize_match(len(payload)) \
                    and self._header_ok(r, st, ports, tcp):
                self._take(r, st, hits)
        if pm.complex:
            for i in sorted(pm.candidates(s)):
                r = pm.rules[i]
                if r.sid in st[_FIRED] or not r.dsize_match(len(payload)):
                    continue
                if self._header_ok(r, st, ports, tcp) and inspect(r.buffers[0][1] if r.buffers else (), payload):
                    self._take(r, st, hits)

    def _alert(self, flow: Hashable, direction: int, st: list[Any], hits: list[Rule]) -> Verdict | None:
        first = st[_STAGE] != _UNSAFE
        st[_STAGE] = _UNSAFE
        fired = st[_FIRED]
        for r in hits:
            fired.add(r.sid)
            self.counters[f"alert:{r.sid}"] += 1
            self.alert_log.append((flow, direction, r.sid))
        if not first:
            return None
        st[_SID] = hits[0].sid
        self.counters["alerts"] += 1
        if self.stop_on_alert:
            st[_D0] = st[_D1] = None  # no more scanning: free the buffers
        return Verdict(port="unsafe", meta=self._meta(hits[0]), reason=f"sid {hits[0].sid}")

    def on_gap(self, flow: Hashable, direction: int, missing: int) -> Verdict | None:
        """Bytes lost: the tail and buffer no longer join the next chunk, but offsets stay right."""
        st = self.flows.get(flow)
        if st is not None and st[_D0 + direction] is not None:
            d = st[_D0 + direction]
            d[0] += missing
            d[1] = b""
            d[_BUFSTART] += len(d[_BUF]) + missing
            d[_BUF] = b""
            d[_PARSER] = None
            if self.detector is not None and self.detector.http is not None:
                p = RequestParser()
                p.dead = "gap"  # a request parser cannot resynchronize after lost bytes
                d[_PARSER] = p
        return None

    @staticmethod
    def _meta(r: Rule) -> dict[str, Any]:
        return {"verdict": "unsafe", "sid": r.sid, "msg": r.msg}

    def on_flow_end(self, flow: Hashable, state: Any) -> None:
        self.flows.pop(flow)

    # --- packets ---------------------------------------------------------------------------------
    async def process(self, batch: Batch) -> None:
        det = self.detector
        safe = self._out["safe"]
        unsafe = self._out["unsafe"]
        for pkt in batch.packets:
            self.counters["packets"] += 1
            if pkt.proto == 6:
                flow = pkt.flow_key
                fl = pkt.tcp_flags & 0x12
                if fl == 0x02:  # SYN without ACK: its sender is the client
                    self.set_client(flow, pkt.direction)
                elif fl == 0x12:
                    self.set_server(flow, pkt.direction)
                st = self.flows.get(flow)
                if st is not None and st[_STAGE] == _UNSAFE:
                    r = self._by_sid.get(st[_SID])
                    pkt.meta.update(self._meta(r) if r else {"verdict": "unsafe", "sid": st[_SID]})
                    unsafe.append(pkt)
                else:
                    pkt.meta["verdict"] = "safe"
                    safe.append(pkt)
                continue
            originals = None
            if pkt.frag and self.defrag is not None and pkt.reason is None:
                # A fragment: the datagram is matched whole (a signature split across fragments
                # is found), and its fragments leave together with that verdict.
                whole = self.defrag.feed(pkt, self.now)
                self._defrag_dropped()
                if whole is None:
                    continue  # held until its datagram is complete
                originals = self.defrag.last_fragments
                pkt = whole
            hits: list[Rule] = []
            if det is not None and pkt.reason is None and (det.packet[TO_SERVER].rules or det.packet[TO_CLIENT].rules):
                flow = pkt.flow_key
                st = self._state(flow)  # every packet: the first one fixes the client
                direction = pkt.direction
                st[_FLAGS] |= _SEEN0 << direction
                side = TO_SERVER if self._client(st, direction) == direction else TO_CLIENT
                pm = det.packet[side]
                if pm.rules:
                    ports = (pkt.sport, pkt.dport) if pkt.sport >= 0 else None
                    self._packet_rules(pm, st, pkt.payload, ports, False, hits)
                    hits = [r for r in hits if r.proto_match(pkt.proto)]
                    self.alert_log.extend((flow, direction, r.sid) for r in hits)
            if hits:
                self.counters["alerts"] += 1
                for r in hits:
                    self.counters[f"alert:{r.sid}"] += 1
                meta, out = self._meta(hits[0]), unsafe
            else:
                meta, out = {"verdict": "safe"}, safe
            for p in (originals if originals is not None else (pkt,)):
                p.meta.update(meta)
                out.append(p)

    def _defrag_dropped(self) -> None:
        """Fragments the reassembly gave up on leave uninspected as a datagram: overlapping or
        duplicate pieces (an evasion technique) are unsafe, the rest (timed out, over a bound)
        pass marked ``defrag`` with the reason."""
        d = self.defrag
        if d is None:
            return
        for p, reason in d.take_dropped():
            evasive = "overlap" in reason or "duplicate" in reason
            p.meta.update({"verdict": "unsafe" if evasive else "safe", "defrag": reason})
            self.counters[f"fragments: {reason}"] += 1
            self._out["unsafe" if evasive else "safe"].append(p)

    def on_timer(self) -> None:
        if self.defrag is not None and len(self.defrag):
            self.defrag.expire(self.now)
            self._defrag_dropped()

    def pending(self) -> int:
        return 0 if self.defrag is None else self.defrag.held_fragments

    async def flush(self) -> None:
        if self.defrag is not None:
            self.defrag.flush()
            self._defrag_dropped()

    # --- state -----------------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        flows = []
        for k, st, t in self.flows.export():
            out = list(st)
            out[_BITS] = sorted(st[_BITS])
            out[_FIRED] = sorted(st[_FIRED])
            for i in (_D0, _D1):
                d = st[i]
                if d is not None:
                    # The HTTP parser restarts at the next request boundary it can find: dropped.
                    out[i] = [d[0], d[1], sorted(d[2]), sorted(d[3]), d[_BUF], d[_BUFSTART]]
            flows.append((k, out, t))
        return {"flows": flows, "counters": dict(self.counters), "rules": self._fingerprint}

    def import_state(self, data: dict[str, Any]) -> None:
        same = data.get("rules") == self._fingerprint
        entries = []
        for k, st, t in data.get("flows", ()):
            st = list(st)
            while len(st) < 8:  # state exported by an older IDS
                st.append(0 if len(st) == _FLAGS else set())
            st[_BITS] = set(st[_BITS] or ())
            st[_FIRED] = set(st[_FIRED] or ())
            for i in (_D0, _D1):
                d = st[i]
                if d is not None:
                    d = list(d)
                    pos, tail = d[0], bytes(d[1])
                    # Matched-content ids only mean something under the same rules.
                    seen = set(d[2]) if same else set()
                    pids = set(d[3]) if same and len(d) > 3 else set()
                    buf = bytes(d[4]) if len(d) > 4 else b""
                    bstart = int(d[5]) if len(d) > 5 else pos
                    st[i] = [pos, tail, seen, pids, buf, bstart, None]
            entries.append((k, st, t))
        self.flows.load(entries)
        self.counters.update({k: v for k, v in data.get("counters", {}).items() if k not in ("rules", "rules_skipped")})


# RuleError is re-exported for NF authors catching load failures.
__all__ += ["RuleError"]
