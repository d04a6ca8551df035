"""The hardware description: the servers NF instances can run on, and where the external ports are.

::

    servers:
      - {name: s1, cores: 4, nic: 10Gbit, address: "10.0.0.1:7400"}
      - {name: s2, cores: 4, nic: 10Gbit}
    ports:
      in:  s1                                      # or a mapping: server, kind, and port params
      out: {server: s1, kind: afpacket, iface: veth-out}

Server keys: ``switches`` (switch processes on the machine, one per core, each with a shard of the
flows: see :mod:`e2actors.manager.shards`; default 1), ``name``, ``cores`` (cores for NF instances;
the switch's own core is not counted),
``nic`` (NIC bandwidth, bits/s or a rate like ``10Gbit``; default unlimited), ``address``
(``host:port`` of the server's agent, for a cluster; absent: this process). Ports: ``in`` and
``out`` name the server that holds each external port (default: the first server), optionally with
a port ``kind`` (``memory``, ``pcap-in``, ``pcap-out``, ``afpacket``) and its parameters, as
:class:`e2actors.switch.table.PortSpec` takes them. A bump in the wire, carrying both directions
through one policy: ``out: {server: s1, kind: afpacket, iface: veth-srv, reverse_of: in}`` (what
arrives on ``out`` takes the policy as the return direction and leaves through ``in``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from e2actors.manager.policy import IN, OUT, PolicyError, parse_rate, read_file
from e2actors.manager.yamlsrc import LDict, LList, load_yaml, plain, yaml_problem

__all__ = ["Hardware", "PortPlace", "Server"]

_SERVER_KEYS = {"name", "cores", "nic", "address", "switches"}
_PORT_KEYS = {"server", "kind"}


@dataclass(frozen=True)
class Server:
    """One server: ``cores`` for NF instances, ``nic_bps`` (inf: unlimited), its agent's ``address``."""

    name: str
    cores: int
    nic_bps: float = math.inf
    address: str | None = None
    line: int = field(default=0, compare=False)
    #: Lines of the ``cores`` and ``nic`` values in the file (0: not from a file, or not given):
    #: placement errors name the entry that binds.
    cores_line: int = field(default=0, compare=False)
    nic_line: int = field(default=0, compare=False)
    #: For one of several switch processes of one machine (``switches: N``): the server whose
    #: agent starts this one (its address is known only then).
    shard_of: str | None = None


@dataclass(frozen=True)
class PortPlace:
    """An external port: the server holding it, its kind and parameters."""

    name: str
    server: str
    kind: str = "memory"
    params: dict[str, Any] = field(default_factory=dict)


class Hardware:
    """The servers (in order) and the external ports' places."""

    def __init__(self, servers: Iterable[Server], ports: Mapping[str, PortPlace] | None = None,
                 file: str = "<hardware>") -> None:
        self.servers: dict[str, Server] = {s.name: s for s in servers}
        if not self.servers:
            raise PolicyError(file, 0, "hardware: at least one server")
        first = next(iter(self.servers))
        ports = dict(ports or {})
        for p in (IN, OUT):
            ports.setdefault(p, PortPlace(p, first))
        self.ports: dict[str, PortPlace] = ports
        self.file = file
        #: Servers that each hold every external port and a shard of the flows (one switch per
        #: core, see :mod:`e2actors.manager.shards`); empty: the ports are where ``ports`` says.
        self.shards: tuple[str, ...] = ()
        #: Line of the file's ``servers`` list (0 when not from a file): where a shortage of cores points.
        self.servers_line = 0

    @classmethod
    def single(cls, cores: int = 1 << 30, name: str = "local") -> Hardware:
        """One server with ``cores`` (default: as many as needed), both ports on it: the embedded case."""
        return cls([Server(name, cores)])

    @classmethod
    def uniform(cls, n: int, cores: int, nic_bps: float = math.inf, prefix: str = "s") -> Hardware:
        """``n`` alike servers ``s1..sn``; the ports on the first."""
        return cls([Server(f"{prefix}{i + 1}", cores, nic_bps) for i in range(n)])

    @classmethod
    def load(cls, path: str | os.PathLike) -> Hardware:
        path = os.fspath(path)
        return cls.from_yaml(read_file(path, "the hardware file"), path)

    @classmethod
    def from_yaml(cls, text: str, file: str = "<string>") -> Hardware:
        try:
            data = load_yaml(text, file)
        except yaml.YAMLError as e:
            line, column, reason = yaml_problem(e, text)
            raise PolicyError(file, line, reason, column) from None
        return cls.from_data(data, file)

    @classmethod
    def from_data(cls, data: Any, file: str = "<hardware>") -> Hardware:
        def line(c: Any, k: Any = None) -> int:
            return c.line(k) if isinstance(c, (LDict, LList)) else 0

        if not isinstance(data, dict) or not isinstance(data.get("servers"), list) or not data["servers"]:
            raise PolicyError(file, line(data) or 1, "hardware: a mapping with 'servers' (a list) and 'ports'")
        for k in data:
            if k not in ("servers", "ports", "name", "description"):
                raise PolicyError(file, line(data, k), f"hardware: unknown key {k!r}")
        servers: list[Server] = []
        switches_of: dict[str, tuple[int, int]] = {}  # server -> (switch processes, line)
        for i, d in enumerate(data["servers"]):
            ln = line(data["servers"], i)
            if not isinstance(d, dict):
                raise PolicyError(file, ln, "a server is a mapping: name, cores, nic, address")
            for k in d:
                if k not in _SERVER_KEYS:
                    raise PolicyError(file, line(d, k), f"server {i + 1}: unknown key {k!r} "
                                                         f"(known: {', '.join(sorted(_SERVER_KEYS))})")
            name = str(d.get("name") or f"s{i + 1}")
            if any(s.name == name for s in servers):
                raise PolicyError(file, ln, f"server {name!r} is listed twice")
            cores = d.get("cores")
            if isinstance(cores, bool) or not isinstance(cores, int) or cores < 0:
                raise PolicyError(file, line(d, "cores") or ln, f"server {name}: cores is an integer >= 0")
            nic = math.inf
            if d.get("nic") is not None:
                try:
                    nic = parse_rate(d["nic"], "nic")
                except ValueError as e:
                    raise PolicyError(file, line(d, "nic"), f"server {name}: {e}") from None
            addr = d.get("address")
            if addr is not None and (not isinstance(addr, str) or ":" not in addr):
                raise PolicyError(file, line(d, "address"), f"server {name}: address is host:port")
            servers.append(Server(name, cores, nic, addr, ln, line(d, "cores") or ln,
                                  line(d, "nic") or ln if d.get("nic") is not None else 0))
            sw = d.get("switches", 1)
            if isinstance(sw, bool) or not isinstance(sw, int) or sw < 1:
                raise PolicyError(file, line(d, "switches") or ln, f"server {name}: switches is an integer >= 1")
            if sw > 1:
                switches_of[name] = (sw, line(d, "switches") or ln)
        names = {s.name for s in servers}
        ports: dict[str, PortPlace] = {}
        pd = data.get("ports") or {}
        if not isinstance(pd, dict):
            raise PolicyError(file, line(data, "ports"), "hardware: ports is a mapping: in/out -> server")
        for pname, v in pd.items():
            ln = line(pd, pname)
            if pname not in (IN, OUT):
                raise PolicyError(file, ln, f"hardware: unknown external port {pname!r} (ports: in, out)")
            if isinstance(v, str):
                v = {"server": v}
            if not isinstance(v, dict) or not isinstance(v.get("server"), str):
                raise PolicyError(file, ln, f"port {pname}: a server name, or a mapping with 'server'")
            if v["server"] not in names:
                raise PolicyError(file, line(v, "server") or ln,
                                  f"port {pname}: unknown server {v['server']!r} (servers: {', '.join(names)})")
            params = {k: plain(x) for k, x in v.items() if k not in _PORT_KEYS}
            ports[pname] = PortPlace(pname, v["server"], str(v.get("kind", "memory")), params)
        if switches_of:
            # One switch per core of one machine: the server's agent starts the other switch
            # processes, each a server of the plan with a shard of the flows (see manager/shards.py).
            (name, (n, ln)), = list(switches_of.items())[:1]
            holders = {p.server for p in ports.values()} | ({servers[0].name} if len(ports) < 2 else set())
            if len(servers) != 1 or holders != {name} or len(switches_of) > 1:
                raise PolicyError(file, ln, f"server {name}: switches > 1 (one switch per core) needs it to be the "
                                            "hardware's only server, holding both ports")
            base = servers[0]
            per = max(1, base.cores // n)
            servers = [dataclasses.replace(base, cores=per)] + [
                Server(f"{name}.{k}", per, base.nic_bps, None, base.line, base.cores_line, base.nic_line, shard_of=name)
                for k in range(2, n + 1)]
        hw = cls(servers, ports, file)
        if switches_of:
            hw.shards = tuple(s.name for s in servers)
        key = getattr(data, "key_locs", {}).get("servers")
        hw.servers_line = key.line if key is not None else line(data, "servers")
        return hw

    # --- views -----------------------------------------------------------------------------------
    @property
    def total_cores(self) -> int:
        return sum(s.cores for s in self.servers.values())

    def port_server(self, port: str) -> str:
        return self.ports[port].server

    def to_dict(self) -> dict[str, Any]:
        return {"servers": [{"name": s.name, "cores": s.cores,
                             "nic": None if math.isinf(s.nic_bps) else s.nic_bps,
                             **({"address": s.address} if s.address else {})} for s in self.servers.values()],
                "ports": {p.name: {"server": p.server, "kind": p.kind, **p.params} for p in self.ports.values()}}

    def __repr__(self) -> str:
        return f"<Hardware {len(self.servers)} servers, {self.total_cores} cores>"


