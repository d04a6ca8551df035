"""``HostFilter`` (parental control): decide a TCP flow by its HTTP Host or TLS SNI, by domain suffix.

Config::

    block: [youtube.com, ...]  or  {youtube.com: video, ...}   # blocked domains (optional category)
    allow: [kids.youtube.com, ...]                             # exceptions that always pass
    tag:   [example.com, ...]  or  {example.com: news, ...}    # meta["category"] (list: "tagged")
    port:  {cdn.example.com: slow, ...}                        # send to another output port
    action_default: pass | block   # hosts matching no entry, and flows whose host is unknown
    on_block: drop | port          # drop blocked flows (default), or send them to port "blocked"
    max_buffer: 8192               # client bytes buffered looking for the host, then give up

Matching is by domain suffix on label boundaries: ``youtube.com`` matches ``youtube.com`` and
``www.youtube.com`` but not ``notyoutube.com``; entries are normalized (lowercase, no trailing dot, a
leading ``*.`` or ``.`` ignored). Each attribute (allow/block, category, port) comes from the most
specific entry that sets it, so ``allow: [kids.youtube.com]`` carves an exception out of
``block: [youtube.com]``. A domain both blocked and allowed is a config error.

The host is decided by :class:`e2actors.packet.l7.HostSniffer` over the flow's reassembled stream
(in sequence order, duplicates dropped, gaps reported), the same code the switch's ``domain``
learning runs, so both decide every flow alike: the client is the first direction to send bytes
(HTTP and TLS clients speak first), its bytes are buffered across segments up to ``max_buffer`` and
read as HTTP/1.x (Host) or TLS (SNI). Until the host is known the packets pass (the flow's initial
verdict is the first port, ``out``); then the decision is a sticky verdict for the rest of the flow
(the first request decides: later requests of a keep-alive connection are not looked at):

- blocked: ``Verdict(drop=True)`` (``on_block: drop``) or ``Verdict(port="blocked")``, with
  ``meta = {"host": h, "action": "blocked", "category": c}``;
- otherwise ``Verdict(port=<port map or "out">, meta={"host": h, "category": c})`` (``category`` only
  when tagged): every flow whose host is known carries ``meta["host"]``;
- no host (not HTTP/TLS, malformed, no Host/SNI, over ``max_buffer``, a gap in the client's bytes,
  the flow ended first): ``action_default``.

Ports named in ``port`` are added to this instance's ports (the policy must wire them).
Counters: ``flows``, ``host_http``, ``host_tls``, ``no_host``, ``gave_up``, ``blocked``, ``tagged``.
Non-TCP packets reaching :meth:`process` go to ``out`` unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from e2actors.errors import ConfigError
from e2actors.nf.config import config_number
from e2actors.nf.pipelet import Pipelet, Verdict
from e2actors.packet.l7 import HostSniffer, normalize_host

__all__ = ["DomainTable", "HostFilter"]


def _norm_domain(d: str) -> str:
    s = str(d).strip().lower()
    if s.startswith("*."):
        s = s[2:]
    s = s.strip(".")
    h = normalize_host(s)
    if h is None:
        raise ValueError(f"{d!r} is not a domain name")
    return h


class DomainTable:
    """``domain -> {action, category, port}`` looked up by the most specific suffix."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, str]] = {}

    def add(self, domain: str, key: str, value: str) -> None:
        e = self.entries.setdefault(_norm_domain(domain), {})
        old = e.get(key)
        if old is not None and old != value:
            raise ValueError(f"{domain!r} is given {key} {old!r} and {value!r}")
        e[key] = value

    def lookup(self, host: str) -> dict[str, str]:
        """The attributes for ``host``, each from the most specific matching entry."""
        out: dict[str, str] = {}
        labels = host.split(".")
        for i in range(len(labels)):
            e = self.entries.get(".".join(labels[i:]))
            if e:
                for k, v in e.items():
                    out.setdefault(k, v)
        return out


def _items(v: Any, default: str) -> list[tuple[str, str]]:
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if isinstance(v, dict):
        return [(str(k), str(c) if c is not None else default) for k, c in v.items()]
    return [(str(k), default) for k in v]


class HostFilter(Pipelet):
    """Blocks, tags or steers TCP flows by HTTP Host / TLS SNI (see the module docstring)."""

    ports = ("out", "blocked")
    affinity = "flow"
    input = "bytestream"
    cost_pps = 200_000
    max_flows = 200_000

    def __init__(self) -> None:
        super().__init__()
        self.table = DomainTable()
        self.action_default = "pass"
        self.on_block = "drop"
        self.max_buffer = 8192
        self._new = 0

    setup_is_pure = True  # only reads its config: the planner checks it by running setup

    async def setup(self, config: dict[str, Any]) -> None:
        self.config = config
        known = {"block", "allow", "tag", "port", "action_default", "on_block", "max_buffer"}
        unknown = set(config) - known
        if unknown:
            raise ConfigError("HostFilter", ", ".join(sorted(unknown)), f"unknown key (known: {', '.join(sorted(known))})")
        t = DomainTable()

        def add(key: str, domain: str, attr: str, value: str) -> None:
            try:
                t.add(domain, attr, value)
            except ValueError as exc:
                raise ConfigError("HostFilter", key, str(exc)) from None

        for d, cat in _items(config.get("block"), ""):
            add("block", d, "action", "block")
            if cat:
                add("block", d, "category", cat)
        for d, _ in _items(config.get("allow"), ""):
            add("allow", d, "action", "allow")
        for d, cat in _items(config.get("tag"), "tagged"):
            add("tag", d, "category", cat)
        new_ports: list[str] = []
        for d, port in (config.get("port") or {}).items():
            add("port", d, "port", str(port))
            if port not in self.ports and port not in new_ports:
                new_ports.append(str(port))
        self.table = t
        self.action_default = config.get("action_default", "pass")
        if self.action_default not in ("pass", "block"):
            raise ConfigError("HostFilter", "action_default", f"pass or block, not {self.action_default!r}")
        self.on_block = config.get("on_block", "drop")
        if self.on_block not in ("drop", "port"):
            raise ConfigError("HostFilter", "on_block", f"drop or port, not {self.on_block!r}")
        self.max_buffer = config_number("HostFilter", config, "max_buffer", 8192, minimum=0)
        if new_ports:
            self.ports = self.ports + tuple(new_ports)  # instance attribute: this instance's ports
            self.take_outputs()

    # --- decisions -------------------------------------------------------------------------------
    def decide(self, host: str | None) -> Verdict:
        """The verdict for a flow to ``host`` (None: unknown)."""
        if host is None:
            self.counters["no_host"] += 1
            if self.action_default == "block":
                return self._blocked({"action": "blocked"})
            return Verdict(port="out")
        a = self.table.lookup(host)
        meta: dict[str, Any] = {"host": host}
        if "category" in a:
            meta["category"] = a["category"]
            self.counters["tagged"] += 1
        action = a.get("action") or ("block" if self.action_default == "block" else "allow")
        if action == "block":
            meta["action"] = "blocked"
            return self._blocked(meta)
        return Verdict(port=a.get("port", "out"), meta=meta)

    def _blocked(self, meta: dict[str, Any]) -> Verdict:
        self.counters["blocked"] += 1
        reason = f"blocked host {meta.get('host', '(unknown)')}"
        if self.on_block == "port":
            return Verdict(port="blocked", meta=meta, reason=reason)
        return Verdict(drop=True, meta=meta, reason=reason)

    # --- streams ---------------------------------------------------------------------------------
    # Flow state: a HostSniffer (exported as [decided, client direction or -1, buffered client bytes]).
    def on_stream(self, flow: Hashable, direction: int, data: bytes) -> Verdict | None:
        now = self.now  # the runner's clock: packet time in replays, wall time live
        sn = self.flows.touch(flow, now)
        if sn is None:
            self._new += 1
            if self._new & 1023 == 0:
                for k, v in self.flows.expire(now):
                    self.on_flow_end(k, v)
            sn = HostSniffer(self.max_buffer)
            self.flows.set(flow, sn, now)
            self.counters["flows"] += 1
        if sn.decided or not sn.data(direction, data):
            return None
        return self._done(sn)

    def _done(self, sn: HostSniffer) -> Verdict:
        if sn.host is not None:
            self.counters["host_" + sn.kind] += 1
        elif sn.why in ("bound", "gap"):
            self.counters["gave_up"] += 1
        return self.decide(sn.host)

    def on_gap(self, flow: Hashable, direction: int, missing: int) -> Verdict | None:
        now = self.now
        sn = self.flows.touch(flow, now)
        if sn is None:  # the flow's first bytes are missing
            sn = HostSniffer(self.max_buffer)
            self.flows.set(flow, sn, now)
            self.counters["flows"] += 1
        if sn.decided or not sn.gap(direction):
            return None
        return self._done(sn)

    def on_flow_end(self, flow: Hashable, state: Any) -> None:
        self.flows.pop(flow)

    def export_state(self) -> dict[str, Any]:
        return {"flows": [(k, sn.to_list(), t) for k, sn, t in self.flows.export()],
                "counters": dict(self.counters)}

    def import_state(self, data: dict[str, Any]) -> None:
        entries = [(k, HostSniffer.from_list(v, self.max_buffer), t) for k, v, t in data.get("flows", ())]
        self.flows.load(entries)
        self.counters.update(data.get("counters", {}))
