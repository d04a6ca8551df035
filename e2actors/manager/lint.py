"""Policy lint: mistakes a policy can make that are not errors (it loads, it runs) but that an
operator almost never means. Pure code over a loaded :class:`~e2actors.manager.policy.Policy`
(and, when given, a sample capture). ``e2actors plan`` prints each as ``FILE:LINE: warning: ...``;
``--strict`` makes them fail the plan.

* an edge that can never be taken: an earlier edge from the same source (and port, for the same
  classes) has no condition, so it takes every packet first — yet sizing gives the later edge its
  share of the traffic;
* an NF output port that no edge leaves: its packets are dropped there (counted under
  ``NF.PORT->end``); add an edge to ``drop`` to say it is meant;
* an NF with ``affinity: none`` whose pipelet keeps per-flow state (``self.flows``): a flow's
  packets may reach several instances, each with a part of its state;
* with a sample capture: traffic that no class takes because the class filters miss it as
  libpcap's semantics say — ``ip`` or ``tcp port 80`` do not match VLAN-tagged frames, ``ip`` does
  not match IPv6: those packets find no route and are dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

from e2actors.manager.policy import IN, Policy

__all__ = ["Warning_", "lint"]


@dataclass(frozen=True)
class Warning_:
    """One lint finding: where (file, line) and what."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: warning: {self.message}"


def lint(policy: Policy, sample: Iterable | None = None) -> list[Warning_]:
    """The findings for ``policy`` (see the module docstring); ``sample``: packets of a capture."""
    out: list[Warning_] = []
    f = policy.file
    # 1. edges shadowed by an earlier unconditional edge from the same source
    seen: dict[tuple[str, str | None], list] = {}
    for e in policy.edges:
        ports = [None] if e.source == IN else ([e.port] if e.port else list(policy.nfs[e.source].ports))
        for port in ports:
            earlier = seen.setdefault((e.source, port), [])
            for prev in earlier:
                if not prev.when and (not prev.classes or set(e.classes or _all(policy)) <= set(prev.classes)):
                    out.append(Warning_(f, e.line, f"edge {e.label} can never be taken: {prev.label} (line "
                                                   f"{prev.line}) has no condition and takes every packet first"
                                        + (f"; sizing still gives it {e.fraction:.0%}" if e.fraction else "")))
                    break
            earlier.append(e)
    # 2. NF outputs no edge leaves
    used = {(e.source, e.port) for e in policy.edges}
    for name, spec in policy.nfs.items():
        for port in spec.ports:
            if (name, port) not in used and (name, None) not in used:
                out.append(Warning_(f, spec.line, f"output {name}.{port} has no edge: its packets are dropped "
                                                  f"there (add an edge from {name}.{port} to drop to say so)"))
    # 3. stateful NFs without affinity
    for name, spec in policy.nfs.items():
        if spec.affinity != "none" or spec.inline:
            continue
        cls = _load(spec.cls)
        if cls is not None and _keeps_flow_state(cls):
            out.append(Warning_(f, spec.line, f"NF {name} has affinity none but {spec.cls} keeps per-flow state "
                                              "(self.flows): a flow's packets may reach several instances; "
                                              "give it affinity: flow"))
    # 4. traffic the class filters miss (pcap semantics), on a sample
    if sample is not None:
        out.extend(_missed_by_classes(policy, sample))
    return out


def _all(policy: Policy) -> list[str]:
    return [c.name for c in policy.classes]


def _load(path: str) -> type | None:
    import importlib

    module, _, qual = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    return obj if isinstance(obj, type) else None


def _keeps_flow_state(cls: type) -> bool:
    """Whether the pipelet's own code (not the base class's) uses ``self.flows``."""
    from e2actors.nf.pipelet import Pipelet

    for klass in cls.__mro__:
        if klass is Pipelet or klass is object:
            break
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if "self.flows" in src:
            return True
    return False


def _missed_by_classes(policy: Policy, sample: Iterable) -> list[Warning_]:
    from e2actors.packet.filter import compile_filter

    filters = [(c, compile_filter(c.filter) if c.filter else None) for c in policy.classes]
    missed_vlan = missed_v6 = total = 0
    for pkt in sample:
        if pkt.reason is not None:
            continue
        total += 1
        if any(fn is None or fn(pkt) for _c, fn in filters):
            continue
        if pkt.vlans:
            missed_vlan += 1
        elif len(pkt.src) == 16:
            missed_v6 += 1
    out = []
    line = min((c.line for c in policy.classes), default=0)
    if missed_vlan:
        out.append(Warning_(policy.file, line, f"no class takes {missed_vlan:,} VLAN-tagged packets of the sample "
                                               f"({total:,} packets): pcap filters such as `ip` or `tcp port 80` do "
                                               "not match tagged frames (write `vlan and ip`, or `ip or vlan`)"))
    if missed_v6:
        out.append(Warning_(policy.file, line, f"no class takes {missed_v6:,} IPv6 packets of the sample "
                                               f"({total:,} packets): `ip` means IPv4 (write `ip or ip6`)"))
    return out
