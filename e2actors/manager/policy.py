"""The policy: the operator's DAG of NFs, from a YAML file or the Python builder, validated.

A policy has NF descriptions, traffic classes and edges::

    nfs:
      ids:    {class: "e2actors.nf.builtin.ids:IDS", ports: [safe, unsafe], input: bytestream,
               affinity: flow, cost_pps: 150000, config: {rules: rules/example.rules}}
      logger: {class: "e2actors.nf.builtin.logger:Logger", config: {pcap: unsafe.pcap}}
    classes:
      - {name: all, filter: "ip or ip6", load_pps: 200000, load_bps: 1.6Gbit}
    edges:
      - {from: in, to: ids}
      - {from: ids.unsafe, to: logger, fraction: 0.05}
      - {from: ids.safe, to: out}

NF keys: ``class`` (``module:QualName`` or ``module.QualName``, a :class:`~e2actors.Pipelet`),
``config``, ``ports``, ``cost_pps`` (packets/s one instance sustains), ``affinity``
(none, flow, host), ``input`` (packets, bytestream), ``inline`` (runs inside the switch: no core of
its own), ``min``/``max`` instances. ``ports``, ``cost_pps``, ``affinity`` and ``input`` default to
what the class says (:meth:`Pipelet.describe`). ``kind: vport`` instead of ``class``: an existing
program behind virtual ports, its settings (``command``, ``interfaces``, ``ready``, ...) at the NF's
top level (:mod:`e2actors.nf.vport.config`; its ports come from its interfaces).

Class keys: ``name``, ``filter`` (the entry condition, pcap-filter), ``load_pps`` and/or
``load_bps`` (numbers or rates such as ``1.5Gbit``), ``packet_bytes`` (mean frame size relating the
two when only one is given; default 800).

Edge keys: ``from`` (``in``, ``NF`` = every output port of NF, or ``NF.PORT``), ``to`` (an NF,
``out`` or ``drop``), ``when`` (a condition; see :mod:`e2actors.manager.conditions`), ``fraction``
(the share of the traffic *entering* the source that takes this edge: for ``in``, of the class's
offered load), ``class`` (a class name or list: only that traffic takes the edge; default all
classes), ``name`` (labels the edge in counters; default ``FROM->TO``). Per source, routes keep file
order and the first edge whose condition holds takes the packet. Edges of a source without a
``fraction`` share what the given fractions leave, equally (or take their share from
:func:`e2actors.manager.sizing.profile`).

Several classes merge into one graph: they share NFs, and ``class:`` on an edge restricts it.
Every error is a :class:`PolicyError` naming the file, the line and the reason.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import yaml

from e2actors.errors import E2Error, PolicyError
from e2actors.manager.conditions import check_condition, error_column
from e2actors.manager.yamlsrc import LDict, LList, Loc, load_yaml, plain, yaml_problem

__all__ = ["Edge", "NFSpec", "Policy", "PolicyBuilder", "PolicyError", "TrafficClass",
           "parse_count", "parse_rate", "resolve_class", "resolve_config", "IN", "OUT", "DROP"]

IN, OUT, DROP = "in", "out", "drop"
RESERVED = frozenset({IN, OUT, DROP})
AFFINITIES = ("none", "flow", "host")
INPUTS = ("packets", "bytestream")
DEFAULT_PACKET_BYTES = 800


# --- values -----------------------------------------------------------------------------------
_RATE_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
               "bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kpps": 1e3, "mpps": 1e6, "pps": 1}


def _parse_unit(v: Any, units: dict[str, float], what: str) -> float:
    import re

    if isinstance(v, bool):
        raise ValueError(f"{what} must be a number, not {v!r}")
    if isinstance(v, (int, float)):
        x = float(v)
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(v))
        if not m or m.group(2).lower() not in units:
            raise ValueError(f"{what} {v!r} is not a number (units: {', '.join(u for u in units if u)})")
        x = float(m.group(1)) * units[m.group(2).lower()]
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{what} must be a non-negative number, not {v!r}")
    return x


def read_file(path: str, what: str) -> str:
    """The text of a policy or hardware file; a :class:`PolicyError` naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(path, 0, f"cannot read {what}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PolicyError(path, line, f"{what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode's universal newlines


def parse_rate(v: Any, what: str = "rate") -> float:
    """Bits per second from ``10Gbit``, ``1.5 gbit``, ``500kbit`` or a number."""
    return _parse_unit(v, _RATE_UNITS, what)


def parse_count(v: Any, what: str = "count") -> float:
    """A count (packets/s) from ``200000``, ``200k``, ``1.5M``."""
    return _parse_unit(v, _COUNT_UNITS, what)


def resolve_class(path: str) -> type:
    """Import a pipelet class from ``module:QualName`` (or ``module.QualName``)."""
    from e2actors.nf.pipelet import Pipelet

    module, qual = split_class_path(path)
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Pipelet)):
        raise TypeError(f"{path} is not a Pipelet subclass")
    return obj


def split_class_path(path: str) -> tuple[str, str]:
    module, sep, qual = path.partition(":")
    if not sep:
        module, _, qual = path.rpartition(".")
    if not module or not qual:
        raise ValueError(f"bad class path {path!r}: use module:QualName")
    return module, qual


# --- the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NFSpec:
    """One NF's description. ``cls`` is ``module:QualName``; ``line`` where it is defined."""

    name: str
    cls: str
    config: dict[str, Any] = field(default_factory=dict)
    ports: tuple[str, ...] = ("out",)
    cost_pps: float = 100_000
    affinity: str = "none"
    input: str = "packets"
    inline: bool = False
    min_instances: int = 1
    max_instances: int | None = None
    line: int = field(default=0, compare=False)
    #: Seconds between checkpoints of its instances' state (None: none; see
    #: :mod:`e2actors.manager.checkpoint`).
    checkpoint: float | None = None

    @property
    def cores(self) -> int:
        """Cores one instance takes: 0 for an inline NF (it runs inside its server's switch)."""
        return 0 if self.inline else 1

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class": self.cls, "ports": list(self.ports), "cost_pps": self.cost_pps,
                             "affinity": self.affinity, "input": self.input, "inline": self.inline,
                             "min": self.min_instances, "max": self.max_instances}
        if self.config:
            d["config"] = self.config
        if self.checkpoint is not None:
            d["checkpoint"] = self.checkpoint
        return d


@dataclass(frozen=True)
class TrafficClass:
    """A traffic class: its entry ``filter`` and offered load."""

    name: str
    filter: str
    load_pps: float
    load_bps: float
    line: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "filter": self.filter, "load_pps": self.load_pps, "load_bps": self.load_bps}


@dataclass(frozen=True)
class Edge:
    """A policy edge. ``source`` is ``in`` or an NF; ``port`` is None for every port of the NF;
    ``target`` an NF, ``out`` or ``drop``; ``classes`` empty for all classes."""

    index: int
    source: str
    port: str | None
    target: str
    when: str = ""
    fraction: float | None = None
    classes: tuple[str, ...] = ()
    name: str = ""
    line: int = field(default=0, compare=False)

    @property
    def label(self) -> str:
        return self.name or f"{self.source}{'.' + self.port if self.port else ''}->{self.target}"

    def applies_to(self, cls: str) -> bool:
        return not self.classes or cls in self.classes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"from": self.source + (f".{self.port}" if self.port else ""), "to": self.target}
        if self.when:
            d["when"] = self.when
        if self.fraction is not None:
            d["fraction"] = self.fraction
        if self.classes:
            d["class"] = list(self.classes)
        if self.name:
            d["name"] = self.name
        return d


_TOP_KEYS = {"name", "description", "nfs", "classes", "edges"}
_NF_KEYS = {"class", "config", "ports", "cost_pps", "affinity", "input", "inline", "min", "max", "checkpoint"}
_CLASS_KEYS = {"name", "filter", "load_pps", "load_bps", "packet_bytes"}
_EDGE_KEYS = {"from", "to", "when", "fraction", "class", "name"}


def _line(container: Any, key: Any = None) -> int:
    if isinstance(container, (LDict, LList)):
        return container.line(key)
    return 0


def _loc(container: Any, key: Any) -> Loc | None:
    if isinstance(container, LDict):
        return container.locs.get(key)
    return None


class Policy:
    """A validated policy. ``graph`` is its :class:`networkx.DiGraph` (nodes: ``in``, ``out``,
    ``drop`` when used, and the NFs with attribute ``spec``; each edge has ``edges``, the list of
    policy :class:`Edge` s it stands for)."""

    def __init__(self, nfs: Mapping[str, NFSpec], classes: Iterable[TrafficClass], edges: Iterable[Edge],
                 file: str = "<policy>", name: str = "", base_dir: str = ".") -> None:
        self.nfs: dict[str, NFSpec] = dict(nfs)
        self.classes: list[TrafficClass] = list(classes)
        self.edges: list[Edge] = list(edges)
        self.file = file
        self.name = name
        #: Directory relative config paths (rules, pcaps) are taken from: the policy file's.
        self.base_dir = base_dir
        self._graph: nx.DiGraph | None = None

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, check_classes: bool = True, check_conditions: bool = True) -> Policy:
        """Read and validate a policy file. ``check_classes``: import each NF's class (its
        description defaults come from it); ``check_conditions``: compile every condition."""
        path = os.fspath(path)
        text = read_file(path, "the policy")
        return cls.from_yaml(text, file=path, check_classes=check_classes, check_conditions=check_conditions,
                             base_dir=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_yaml(cls, text: str, file: str = "<string>", check_classes: bool = True,
                  check_conditions: bool = True, base_dir: str = ".") -> Policy:
        """Parse and validate policy YAML text (``file`` names it in errors)."""
        try:
            data = load_yaml(text, file)
        except yaml.YAMLError as e:
            line, column, reason = yaml_problem(e, text)
            raise PolicyError(file, line, reason, column) from None
        return cls.from_data(data, file=file, check_classes=check_classes, check_conditions=check_conditions,
                             base_dir=base_dir)

    @classmethod
    def from_data(cls, data: Any, file: str = "<policy>", check_classes: bool = True,
                  check_conditions: bool = True, base_dir: str = ".") -> Policy:
        """Validate plain data (as parsed from YAML, or built by :class:`PolicyBuilder`)."""
        p = _Parser(file, check_classes, check_conditions, base_dir).parse(data)
        p.base_dir = base_dir
        return p

    @staticmethod
    def builder(name: str = "") -> PolicyBuilder:
        """A :class:`PolicyBuilder`: the Python way to write the same policy as the YAML file."""
        return PolicyBuilder(name)

    # --- views ----------------------------------------------------------------------------------
    @property
    def graph(self) -> nx.DiGraph:
        if self._graph is None:
            self._graph = _build_graph(self)
        return self._graph

    def edges_from(self, node: str) -> list[Edge]:
        """Policy edges leaving ``node`` (``in`` or an NF), in file order."""
        return [e for e in self.edges if e.source == node]

    def class_named(self, name: str) -> TrafficClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def total_pps(self) -> float:
        return sum(c.load_pps for c in self.classes)

    def with_load(self, pps: float) -> Policy:
        """The same policy with every class's load scaled so that they offer ``pps`` in total."""
        total = self.total_pps
        if total <= 0:
            n = len(self.classes) or 1
            classes = [replace(c, load_pps=pps / n, load_bps=pps / n * 8 * DEFAULT_PACKET_BYTES) for c in self.classes]
        else:
            k = pps / total
            classes = [replace(c, load_pps=c.load_pps * k, load_bps=c.load_bps * k) for c in self.classes]
        p = Policy(self.nfs, classes, self.edges, self.file, self.name, self.base_dir)
        return p

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data, every default filled in (what the YAML and the builder agree on)."""
        return {"name": self.name, "nfs": {n: s.to_dict() for n, s in self.nfs.items()},
                "classes": [c.to_dict() for c in self.classes], "edges": [e.to_dict() for e in self.edges]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"<Policy {self.name or self.file}: {len(self.nfs)} NFs, {len(self.classes)} classes, {len(self.edges)} edges>"


def _build_graph(p: Policy) -> nx.DiGraph:
    g = nx.DiGraph(name=p.name)
    g.add_node(IN, kind="port")
    g.add_node(OUT, kind="port")
    for name, spec in p.nfs.items():
        g.add_node(name, kind="nf", spec=spec)
    for e in p.edges:
        if e.target == DROP and DROP not in g:
            g.add_node(DROP, kind="drop")
        if g.has_edge(e.source, e.target):
            g.edges[e.source, e.target]["edges"].append(e)
        else:
            g.add_edge(e.source, e.target, edges=[e])
    return g


class _Parser:
    def __init__(self, file: str, check_classes: bool, check_conditions: bool = True, base_dir: str = ".") -> None:
        self.file = file
        self.base_dir = base_dir
        self.check_classes = check_classes
        self.check_conditions = check_conditions

    def err(self, line: int, reason: str, column: int = 0) -> PolicyError:
        return PolicyError(self.file, line, reason, column)

    def _keys(self, d: Any, allowed: set[str], what: str) -> None:
        for k in d:
            if k not in allowed:
                line = d.key_locs[k].line if isinstance(d, LDict) and k in d.key_locs else _line(d)
                raise self.err(line, f"{what}: unknown key {k!r} (known: {', '.join(sorted(allowed))})")

    def parse(self, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise self.err(_line(data) or 1, "a policy is a mapping with nfs, classes and edges")
        self._keys(data, _TOP_KEYS, "policy")
        nfs_d = data.get("nfs") or {}
        if not isinstance(nfs_d, dict):
            raise self.err(_line(data, "nfs"), "nfs: a mapping of NF name -> description")
        nfs = {}
        for name, d in nfs_d.items():
            nfs[str(name)] = self.nf(str(name), d, _line(nfs_d, name), nfs_d)
        classes_d = data.get("classes")
        if not classes_d:
            raise self.err(_line(data, "classes") if "classes" in data else _line(data),
                           "classes: at least one traffic class (name, filter, load_pps)")
        if not isinstance(classes_d, list):
            raise self.err(_line(data, "classes"), "classes: a list of traffic classes")
        classes: list[TrafficClass] = []
        for i, d in enumerate(classes_d):
            c = self.traffic_class(i, d, _line(classes_d, i))
            if any(o.name == c.name for o in classes):
                raise self.err(c.line, f"class {c.name!r} is defined twice")
            classes.append(c)
        edges_d = data.get("edges")
        if not edges_d or not isinstance(edges_d, list):
            raise self.err(_line(data, "edges") if "edges" in data else _line(data),
                           "edges: a list of edges (from, to, when, fraction)")
        edges = [self.edge(i, d, _line(edges_d, i), nfs, classes) for i, d in enumerate(edges_d)]
        p = Policy(nfs, classes, edges, self.file, str(data.get("name") or ""))
        self.structure(p)
        return p

    # --- NFs --------------------------------------------------------------------------------------
    def nf(self, name: str, d: Any, line: int, parent: Any) -> NFSpec:
        if name in RESERVED or not name or "." in name or ":" in name:
            raise self.err(line, f"NF name {name!r} is reserved or has '.'/':' in it")
        if isinstance(d, str):
            d = {"class": d}
        if not isinstance(d, dict):
            raise self.err(line, f"NF {name}: a mapping with at least 'class'")
        line = _line(d) or line
        if "kind" in d:
            d = self.nf_kind(name, d, line)
        self._keys(d, _NF_KEYS, f"NF {name}")
        path = d.get("class")
        if not path or not isinstance(path, str):
            raise self.err(line, f"NF {name}: needs 'class' (module:QualName of a Pipelet)")
        try:
            module, qual = split_class_path(path)
        except ValueError as e:
            raise self.err(_line(d, "class") or line, f"NF {name}: {e}") from None
        cls_path = f"{module}:{qual}"
        defaults: dict[str, Any] = {"ports": ["out"], "affinity": "none", "input": "packets", "cost_pps": 100_000}
        class_ports: list[str] | None = None
        if self.check_classes:
            try:
                cls = resolve_class(path)
            except (ImportError, AttributeError, TypeError, ValueError) as e:
                raise self.err(_line(d, "class") or line, f"NF {name}: cannot import class {path}: {e}") from None
            defaults = cls.describe()
            class_ports = list(defaults["ports"])
            if hasattr(cls, "ports_for"):  # (a vport NF's ports come from its config)
                try:
                    class_ports = list(cls.ports_for(d.get("config") or {}))
                except E2Error as e:
                    key, cfg = getattr(e, "key", ""), d.get("config")
                    at = _line(cfg, key) if key and isinstance(cfg, LDict) and key in cfg else _line(d, "config")
                    raise self.err(at or line, f"NF {name}: config: {e}") from None
                defaults["ports"] = class_ports
        ports = d.get("ports", defaults["ports"])
        if isinstance(ports, str):
            ports = [ports]
        if not isinstance(ports, list) or not ports or not all(isinstance(x, str) and x for x in ports):
            raise self.err(_line(d, "ports"), f"NF {name}: ports is a non-empty list of names")
        if len(set(ports)) != len(ports):
            raise self.err(_line(d, "ports"), f"NF {name}: a port is listed twice")
        if class_ports is not None and set(ports) != set(class_ports):
            raise self.err(_line(d, "ports"), f"NF {name}: ports {ports} differ from the ports of "
                                              f"{path}: {class_ports}")
        try:
            cost = parse_count(d.get("cost_pps", defaults["cost_pps"]), "cost_pps")
        except ValueError as e:
            raise self.err(_line(d, "cost_pps"), f"NF {name}: {e}") from None
        if cost <= 0:
            raise self.err(_line(d, "cost_pps"), f"NF {name}: cost_pps must be positive")
        affinity = d.get("affinity", defaults["affinity"])
        if affinity not in AFFINITIES:
            raise self.err(_line(d, "affinity"), f"NF {name}: affinity {affinity!r} is not one of {', '.join(AFFINITIES)}")
        input_ = d.get("input", defaults["input"])
        if input_ not in INPUTS:
            raise self.err(_line(d, "input"), f"NF {name}: input {input_!r} is not one of {', '.join(INPUTS)}")
        inline = d.get("inline", False)
        if not isinstance(inline, bool):
            raise self.err(_line(d, "inline"), f"NF {name}: inline is true or false")
        lo, hi = d.get("min", 1), d.get("max")
        if isinstance(lo, bool) or not isinstance(lo, int) or lo < 1:
            raise self.err(_line(d, "min"), f"NF {name}: min is an integer >= 1")
        if hi is not None and (isinstance(hi, bool) or not isinstance(hi, int) or hi < lo):
            raise self.err(_line(d, "max"), f"NF {name}: max is an integer >= min ({lo})")
        checkpoint = d.get("checkpoint")
        if checkpoint is not None:
            if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, float)) or not checkpoint > 0 \
                    or checkpoint == float("inf"):
                raise self.err(_line(d, "checkpoint"), f"NF {name}: checkpoint is a number of seconds > 0")
            if inline:
                raise self.err(_line(d, "checkpoint"), f"NF {name}: an inline NF runs inside its switch and "
                                                       "is lost with it: it takes no checkpoint")
            checkpoint = float(checkpoint)
        config = d.get("config") or {}
        if not isinstance(config, dict):
            raise self.err(_line(d, "config"), f"NF {name}: config is a mapping")
        if self.check_classes:
            # The NF's configuration is checked now, before any traffic: FILE:LINE of the key.
            try:
                cls.validate_config(resolve_config(plain(config), self.base_dir), self.base_dir)
            except E2Error as e:
                key = getattr(e, "key", "")
                top = key.split("[", 1)[0].split(".", 1)[0]  # (hosts[1], limits.rate: the key's line)
                cfg_line = d.key_locs["config"].line if isinstance(d, LDict) and "config" in d.key_locs else _line(d)
                at = _line(config, top) if top and isinstance(config, LDict) and top in config else cfg_line
                why = getattr(e, "reason", "") or str(e)
                raise self.err(at or line, f"NF {name}: config {key!r}: {why}" if key else f"NF {name}: config: {why}") \
                    from None
            except Exception as e:  # (a wrong type where a list or a mapping belongs, say)
                raise self.err(_line(d, "config") or line, f"NF {name}: config: {type(e).__name__}: {e}") from None
        return NFSpec(name, cls_path, plain(config), tuple(ports), cost, affinity, input_, inline, lo, hi, line,
                      checkpoint)

    def nf_kind(self, name: str, d: Any, line: int) -> Any:
        """``kind: vport``: an existing program behind virtual ports, its settings at the NF's top
        level (see :mod:`e2actors.nf.vport.config`); the NF it stands for (class, config, ports)."""
        from e2actors.nf.vport.config import VPORT_CLASS, VPORT_KEYS, VPortConfig, VPortConfigError

        if d["kind"] != "vport":
            raise self.err(_line(d, "kind"), f"NF {name}: unknown kind {d['kind']!r} (known: vport)")
        for k in ("class", "config"):
            if k in d:
                raise self.err(_line(d, k), f"NF {name}: a kind: vport NF takes no {k!r} (its settings are "
                                            f"keys of the NF: {', '.join(sorted(VPORT_KEYS))})")
        for k in ("inline", "input"):
            if k in d:
                raise self.err(_line(d, k), f"NF {name}: a kind: vport NF takes no {k!r} (its program runs in "
                                            f"a namespace of its own and takes packets)")
        config = {k: plain(d[k]) for k in d if k in VPORT_KEYS}
        try:
            ports = VPortConfig.parse(config).ports
        except VPortConfigError as e:
            raise self.err(_line(d, e.key) if e.key in d else line, f"NF {name}: {e}") from None
        out = LDict({k: v for k, v in d.items() if k not in VPORT_KEYS and k != "kind"})
        if isinstance(d, LDict):
            out.loc, out.locs, out.key_locs = d.loc, dict(d.locs), dict(d.key_locs)
        else:
            out.loc, out.locs, out.key_locs = Loc(line, 0), {}, {}
        out["class"] = VPORT_CLASS
        out["config"] = config
        out.setdefault("ports", list(ports))
        return out

    # --- classes ----------------------------------------------------------------------------------
    def traffic_class(self, i: int, d: Any, line: int) -> TrafficClass:
        if not isinstance(d, dict):
            raise self.err(line, "a traffic class is a mapping: name, filter, load_pps")
        self._keys(d, _CLASS_KEYS, f"class {i + 1}")
        name = str(d.get("name") or f"class{i + 1}")
        flt = d.get("filter", "")
        if not isinstance(flt, str):
            raise self.err(_line(d, "filter"), f"class {name}: filter is a string")
        self.condition(flt, d, "filter", f"class {name}")
        try:
            size = parse_count(d.get("packet_bytes", DEFAULT_PACKET_BYTES), "packet_bytes")
            pps = parse_count(d["load_pps"], "load_pps") if "load_pps" in d else None
            bps = parse_rate(d["load_bps"], "load_bps") if "load_bps" in d else None
        except ValueError as e:
            key = next((k for k in ("load_pps", "load_bps", "packet_bytes") if k in d), None)
            raise self.err(_line(d, key), f"class {name}: {e}") from None
        if pps is None and bps is None:
            raise self.err(line, f"class {name}: needs load_pps and/or load_bps")
        if size <= 0:
            raise self.err(_line(d, "packet_bytes"), f"class {name}: packet_bytes must be positive")
        if pps is None:
            pps = bps / (8 * size)  # type: ignore[operator]
        if bps is None:
            bps = pps * 8 * size
        return TrafficClass(name, flt, float(pps), float(bps), line)

    def condition(self, text: str, d: Any, key: str, what: str) -> None:
        if not self.check_conditions:
            return
        try:
            check_condition(text)
        except E2Error as e:
            col = error_column(e)
            loc = _loc(d, key)
            filecol = loc.column + (1 if loc.quoted else 0) + col - 1 if loc and col else 0
            msg = str(e)
            reason = f"{what}: bad condition {text!r}" + (f" at column {col}" if col else "") + f": {msg}"
            raise self.err(_line(d, key), reason, filecol) from None

    # --- edges ------------------------------------------------------------------------------------
    def edge(self, i: int, d: Any, line: int, nfs: dict[str, NFSpec], classes: list[TrafficClass]) -> Edge:
        if not isinstance(d, dict):
            raise self.err(line, "an edge is a mapping: from, to, when, fraction")
        self._keys(d, _EDGE_KEYS, f"edge {i + 1}")
        src, dst = d.get("from"), d.get("to")
        if not isinstance(src, str) or not src:
            raise self.err(line, f"edge {i + 1}: needs 'from' (in, NF or NF.PORT)")
        if not isinstance(dst, str) or not dst:
            raise self.err(line, f"edge {i + 1}: needs 'to' (an NF, out or drop)")
        node, _, port = src.partition(".")
        sline = _line(d, "from")
        if node == IN:
            if port:
                raise self.err(sline, f"edge from {src!r}: the entry port 'in' has no output ports")
        elif node in (OUT, DROP):
            raise self.err(sline, f"edge from {src!r}: '{node}' is an exit; edges leave 'in' or an NF")
        elif node not in nfs:
            raise self.err(sline, f"edge from {src!r}: unknown NF {node!r}" + _known(nfs))
        elif port and port not in nfs[node].ports:
            raise self.err(sline, f"edge from {src!r}: NF {node} has no port {port!r} "
                                  f"(ports: {', '.join(nfs[node].ports)})")
        tline = _line(d, "to")
        tnode, _, tport = dst.partition(".")
        if tnode == IN:
            raise self.err(tline, "edge to 'in': 'in' is the entry; edges go to an NF, out or drop")
        if tnode not in (OUT, DROP) and tnode not in nfs:
            raise self.err(tline, f"edge to {dst!r}: unknown NF {tnode!r}" + _known(nfs))
        if tport:
            raise self.err(tline, f"edge to {dst!r}: unknown port {tport!r}: an edge goes to an NF's input "
                                  "(ports are where traffic leaves an NF)")
        when = d.get("when", "") or ""
        if not isinstance(when, str):
            raise self.err(_line(d, "when"), f"edge {src} -> {dst}: when is a condition string")
        self.condition(when, d, "when", f"edge {src} -> {dst}")
        frac = d.get("fraction")
        if frac is not None:
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
                raise self.err(_line(d, "fraction"), f"edge {src} -> {dst}: fraction is a number in [0, 1]")
            frac = float(frac)
        cls = d.get("class") or []
        if isinstance(cls, str):
            cls = [cls]
        if not isinstance(cls, list):
            raise self.err(_line(d, "class"), f"edge {src} -> {dst}: class is a class name or a list")
        names = {c.name for c in classes}
        for c in cls:
            if c not in names:
                raise self.err(_line(d, "class"), f"edge {src} -> {dst}: unknown class {c!r} "
                                                   f"(classes: {', '.join(sorted(names))})")
        name = d.get("name", "") or ""
        return Edge(i, node, port or None, tnode, when, frac, tuple(cls), str(name), line)

    # --- the graph as a whole ---------------------------------------------------------------------
    def structure(self, p: Policy) -> None:
        g = p.graph
        nf_graph = g.subgraph(n for n in g if n not in (IN, OUT, DROP))
        try:
            cycle = nx.find_cycle(nf_graph)
        except nx.NetworkXNoCycle:
            cycle = []
        if cycle:
            u, v = cycle[-1][0], cycle[-1][1]
            e = g.edges[u, v]["edges"][0]
            path = " -> ".join([c[0] for c in cycle] + [cycle[0][0]])
            raise self.err(e.line, f"cycle: {path} (a policy is a DAG)")
        if not p.edges_from(IN):
            raise self.err(0, "no edge leaves 'in': traffic has nowhere to go")
        reach = nx.descendants(g, IN)
        for name, spec in p.nfs.items():
            if name not in reach:
                raise self.err(spec.line, f"NF {name} is unreachable from 'in' (no path of edges leads to it)")
        # fractions per (source, class) must not exceed 1
        for node in [IN, *p.nfs]:
            for c in p.classes:
                es = [e for e in p.edges_from(node) if e.applies_to(c.name) and e.fraction is not None]
                total = sum(e.fraction for e in es)  # type: ignore[misc]
                if total > 1 + 1e-9:
                    raise self.err(es[-1].line, f"fractions of the edges from {node} (class {c.name}) add up "
                                                f"to {total:g} > 1")


def _known(nfs: Mapping[str, Any]) -> str:
    return f" (NFs: {', '.join(nfs)})" if nfs else " (no NFs are defined)"




class PolicyBuilder:
    """Build a policy in Python; :meth:`build` validates it exactly as a file would be::

        policy = (Policy.builder("seed")
                  .nf("ids", "e2actors.nf.builtin.ids:IDS", ports=["safe", "unsafe"], cost_pps=150_000)
                  .nf("logger", "e2actors.nf.builtin.logger:Logger")
                  .traffic("all", "ip or ip6", load_pps=200_000)
                  .edge("in", "ids")
                  .edge("ids.unsafe", "logger", fraction=0.05)
                  .edge("ids.safe", "out")
                  .build())
    """

    def __init__(self, name: str = "") -> None:
        self._data: dict[str, Any] = {"nfs": {}, "classes": [], "edges": []}
        if name:
            self._data["name"] = name

    def nf(self, name: str, cls: str | type, *, config: dict[str, Any] | None = None,
           ports: Iterable[str] | None = None, cost_pps: float | None = None, affinity: str | None = None,
           input: str | None = None, inline: bool | None = None, min: int | None = None,
           max: int | None = None, checkpoint: float | None = None) -> PolicyBuilder:
        path = cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"
        d: dict[str, Any] = {"class": path}
        for k, v in (("config", config), ("ports", list(ports) if ports is not None else None),
                     ("cost_pps", cost_pps), ("affinity", affinity), ("input", input), ("inline", inline),
                     ("min", min), ("max", max), ("checkpoint", checkpoint)):
            if v is not None:
                d[k] = v
        self._data["nfs"][name] = d
        return self

    def traffic(self, name: str, filter: str = "", *, load_pps: float | None = None,
                load_bps: float | str | None = None, packet_bytes: float | None = None) -> PolicyBuilder:
        d: dict[str, Any] = {"name": name, "filter": filter}
        for k, v in (("load_pps", load_pps), ("load_bps", load_bps), ("packet_bytes", packet_bytes)):
            if v is not None:
                d[k] = v
        self._data["classes"].append(d)
        return self

    def edge(self, source: str, target: str, when: str = "", *, fraction: float | None = None,
             cls: str | Iterable[str] | None = None, name: str = "") -> PolicyBuilder:
        d: dict[str, Any] = {"from": source, "to": target}
        if when:
            d["when"] = when
        if fraction is not None:
            d["fraction"] = fraction
        if cls is not None:
            d["class"] = [cls] if isinstance(cls, str) else list(cls)
        if name:
            d["name"] = name
        self._data["edges"].append(d)
        return self

    def data(self) -> dict[str, Any]:
        """The policy as the plain data a YAML file would hold."""
        import copy

        return copy.deepcopy(self._data)

    def build(self, check_classes: bool = True, check_conditions: bool = True) -> Policy:
        return Policy.from_data(self.data(), file="<builder>", check_classes=check_classes,
                                check_conditions=check_conditions)


def resolve_config(config: dict[str, Any], base: str) -> dict[str, Any]:
    """Relative paths in an NF's config that name existing files are the policy directory's
    (rules files); others (outputs such as a logger's pcap) stay relative to the cwd."""

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not os.path.isabs(v) and "\n" not in v:
            p = os.path.join(base, v)
            if os.path.isfile(p):
                return os.path.abspath(p)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in config.items()}
