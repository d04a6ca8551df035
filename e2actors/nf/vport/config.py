"""What a virtual-port NF runs and how it is wired: its config, parsed and checked. Pure code.

A vport NF is an existing program (Suricata, an nftables rule set, nginx, a Linux bridge) in a
network namespace of its own, joined to the switch by veth pairs. Its config (the ``config`` of a
``class: e2actors.nf.vport:VPort`` NF, or the keys of a ``kind: vport`` NF in a policy)::

    command: "suricata -c {dir}/suricata.yaml --af-packet -l {dir} -k none"   # optional
    setup:                       # optional: commands run once in the namespace first
      - "nft -f {dir}/firewall.nft"
    files: [suricata.yaml, drop.rules]   # copied into the instance's directory {dir}
    interfaces:                  # the program's interfaces, as it names them in its namespace
      in0:  {side: client, port: safe}   # client-side packets are written here; what the
      out0: {side: server, port: safe}   # program sends out of an interface leaves on `port`
    ready: {log: "Engine started", timeout: 60}   # or {command: ...}, {file: ...}, {probe: true}
    unreturned: unsafe           # packets the program never sent back: drop | consume | a port
    return_timeout: 0.5          # seconds before a packet counts as not sent back
    window: 1024                 # packets inside the program at most (backpressure past it)
    ordered: true                # a packet for the other interface waits until the previous
    order_wait: 0.005            #   ones came back (at most order_wait seconds; see below)
    eve: eve.json                # Suricata EVE JSON in {dir}: alerts become counters alert:SID
    health: {command: "...", interval: 2}    # optional: a periodic check; failing = a crash

Interface keys: ``side`` (``client``: packets of a flow's client side are written into it;
``server``: the other direction; ``both``: a one-armed NF gets both; ``none``: output only),
``port`` (the NF port what the program sends out of it leaves on; null: ignored, counted),
``meta`` (metadata set on *new* frames the program sends out of it: a proxy's replies towards the
clients of a bump in the wire need ``{reverse: in}``). ``{dir}``, ``{ns}`` and ``{instance}`` in
commands and copied text files become the instance's directory, namespace and name.

``ordered``: on a wire, a server's answer cannot overtake the request it answers; through two
interfaces into a program with a capture thread per interface (Suricata), it could. So before
writing packets into the other interface than the previous ones, the NF waits until the
previous ones of the same flow came back out of the program (a dropped packet never comes back:
then it waits ``order_wait``, once per flow). ``ordered: false`` writes at once; so does an NF
without a ``command`` (only the kernel: it handles each write before the write returns).

Every error is a :class:`VPortConfigError` naming the key at fault.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2actors.errors import E2Error

__all__ = ["Iface", "ReadyCheck", "SIDES", "VPORT_CLASS", "VPORT_KEYS", "VPortConfig", "VPortConfigError",
           "VPortError", "expand"]

#: The class a ``kind: vport`` NF runs.
VPORT_CLASS = "e2actors.nf.vport:VPort"
#: Config keys of a vport NF (also the keys a ``kind: vport`` NF takes at its top level).
VPORT_KEYS = frozenset({"command", "setup", "files", "interfaces", "ready", "unreturned", "return_timeout",
                        "window", "eve", "health", "env", "data_dir", "ipv6", "mtu", "stop_timeout", "ordered",
                        "order_wait"})
SIDES = ("client", "server", "both", "none")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_READY_KINDS = ("log", "command", "file", "probe")
_TOKENS = ("dir", "ns", "instance")


class VPortError(E2Error):
    """A vport NF could not start or lost its program (not root, a program missing, a failed
    readiness check, the program exited)."""


class VPortConfigError(VPortError, ValueError):
    """A vport NF's config is wrong: ``key`` is the config key at fault, ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Iface:
    """One interface of the program, as named inside its namespace."""

    name: str
    side: str = "both"
    port: str | None = "out"
    meta: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ReadyCheck:
    """``kind``: ``log`` (a regex the program's output matches), ``command`` (an argv that exits 0
    in the namespace), ``file`` (a path, relative to the instance directory, that exists) or
    ``probe`` (a frame written on the client side comes back out of the program)."""

    kind: str
    arg: Any


@dataclass(frozen=True)
class VPortConfig:
    """A parsed vport config (see the module docstring)."""

    interfaces: tuple[Iface, ...]
    command: tuple[str, ...] | None = None
    setup: tuple[tuple[str, ...], ...] = ()
    files: tuple[str, ...] = ()
    ready: tuple[ReadyCheck, ...] = ()
    ready_timeout: float = 30.0
    unreturned: str = "drop"
    return_timeout: float = 0.5
    window: int = 1024
    ordered: bool = True
    order_wait: float = 0.005
    eve: str | None = None
    health: tuple[str, ...] | None = None
    health_interval: float = 2.0
    env: tuple[tuple[str, str], ...] = ()
    data_dir: str | None = None
    ipv6: bool = False
    mtu: int = 1500
    stop_timeout: float = 3.0

    # --- derived ----------------------------------------------------------------------------------
    @property
    def ports(self) -> tuple[str, ...]:
        """The NF's ports: those the interfaces map to, in order, then the ``unreturned`` port."""
        out: list[str] = []
        for i in self.interfaces:
            if i.port is not None and i.port not in out:
                out.append(i.port)
        if self.unreturned not in ("drop", "consume") and self.unreturned not in out:
            out.append(self.unreturned)
        return tuple(out) or ("out",)

    def writer(self, side: str) -> Iface:
        """The interface packets of ``side`` (client or server) are written into."""
        for i in self.interfaces:
            if i.side == side:
                return i
        for i in self.interfaces:
            if i.side == "both":
                return i
        raise VPortConfigError("interfaces", f"no interface takes {side}-side packets")  # (parse checks it)

    def programs(self) -> list[tuple[str, str]]:
        """``(program, config key)`` for every program the NF runs (its argv[0]s)."""
        out = [(argv[0], "setup") for argv in self.setup]
        if self.command:
            out.append((self.command[0], "command"))
        out += [(c.arg[0], "ready") for c in self.ready if c.kind == "command"]
        if self.health:
            out.append((self.health[0], "health"))
        return out

    @property
    def program_name(self) -> str:
        """A short name for what runs in the namespace (drop reasons use it)."""
        if self.command:
            return self.command[0].rsplit("/", 1)[-1]
        if self.setup:
            return self.setup[-1][0].rsplit("/", 1)[-1]
        return "the namespace"

    # --- parsing ----------------------------------------------------------------------------------
    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> VPortConfig:
        """Check and parse a vport config; raises :class:`VPortConfigError`."""
        if not isinstance(config, Mapping):
            raise VPortConfigError("", "a vport config is a mapping")
        for k in config:
            if k not in VPORT_KEYS:
                raise VPortConfigError(str(k), f"unknown key (known: {', '.join(sorted(VPORT_KEYS))})")
        ifaces = _interfaces(config.get("interfaces"))
        command = _argv(config["command"], "command") if config.get("command") not in (None, "") else None
        setup_v = config.get("setup") or ()
        if isinstance(setup_v, (str, bytes)) or not isinstance(setup_v, (list, tuple)):
            raise VPortConfigError("setup", "a list of commands")
        setup = tuple(_argv(c, f"setup[{i}]") for i, c in enumerate(setup_v))
        if command is None and not setup:
            raise VPortConfigError("command", "a vport NF needs a command (the program) and/or setup commands")
        files_v = config.get("files") or ()
        if isinstance(files_v, str):
            files_v = [files_v]
        if not isinstance(files_v, (list, tuple)) or not all(isinstance(f, str) and f for f in files_v):
            raise VPortConfigError("files", "a list of file paths")
        names = [f.rstrip("/").rsplit("/", 1)[-1] for f in files_v]
        if len(set(names)) != len(names):
            raise VPortConfigError("files", "two files with the same name (they are copied into one directory)")
        ready, ready_timeout = _ready(config.get("ready"))
        unreturned = config.get("unreturned", "drop")
        if not isinstance(unreturned, str) or not unreturned:
            raise VPortConfigError("unreturned", "drop, consume or the name of a port")
        eve = config.get("eve")
        if eve is not None and (not isinstance(eve, str) or not eve):
            raise VPortConfigError("eve", "a file name in the instance directory (e.g. eve.json)")
        health, interval = None, 2.0
        h = config.get("health")
        if h is not None:
            if not isinstance(h, Mapping) or "command" not in h:
                raise VPortConfigError("health", "a mapping with command (and interval, seconds)")
            health = _argv(h["command"], "health")
            interval = _positive(h.get("interval", 2.0), "health")
        env = config.get("env") or {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
            raise VPortConfigError("env", "a mapping of variable names to values")
        data_dir = config.get("data_dir")
        if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
            raise VPortConfigError("data_dir", "a directory path")
        ipv6 = config.get("ipv6", False)
        if not isinstance(ipv6, bool):
            raise VPortConfigError("ipv6", "true or false")
        ordered = config.get("ordered", True)
        if not isinstance(ordered, bool):
            raise VPortConfigError("ordered", "true or false")
        mtu = config.get("mtu", 1500)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise VPortConfigError("mtu", "an integer from 68 to 65535")
        window = config.get("window", 1024)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise VPortConfigError("window", "a positive integer (packets)")
        return cls(
            interfaces=ifaces, command=command, setup=setup, files=tuple(files_v), ready=ready,
            ready_timeout=ready_timeout, unreturned=unreturned,
            return_timeout=_positive(config.get("return_timeout", 0.5), "return_timeout"), window=window,
            eve=eve, health=health, health_interval=interval, ordered=ordered,
            order_wait=_positive(config.get("order_wait", 0.005), "order_wait"),
            env=tuple((str(k), str(v)) for k, v in env.items()), data_dir=data_dir, ipv6=ipv6, mtu=mtu,
            stop_timeout=_positive(config.get("stop_timeout", 3.0), "stop_timeout"))


def expand(text: str, values: Mapping[str, str]) -> str:
    """``{dir}``, ``{ns}`` and ``{instance}`` in ``text`` replaced (other braces are left alone:
    shell snippets and nginx or Suricata config blocks keep theirs)."""
    for k in _TOKENS:
        if k in values:
            text = text.replace("{" + k + "}", values[k])
    return text


# --- pieces -------------------------------------------------------------------------------------
def _positive(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise VPortConfigError(key, f"a positive number of seconds, not {v!r}")
    return float(v)


def _argv(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        try:
            argv = shlex.split(v)
        except ValueError as exc:
            raise VPortConfigError(key, f"cannot split {v!r} into arguments: {exc}") from None
    elif isinstance(v, (list, tuple)) and all(isinstance(a, (str, int, float)) for a in v):
        argv = [str(a) for a in v]
    else:
        raise VPortConfigError(key, f"a command line (a string or a list of arguments), not {v!r}")
    if not argv or not argv[0]:
        raise VPortConfigError(key, "an empty command")
    return tuple(argv)


def _interfaces(v: Any) -> tuple[Iface, ...]:
    if v is None:
        raise VPortConfigError("interfaces", "needed: the program's interfaces, e.g. {in0: {side: client}, "
                                             "out0: {side: server}}")
    if isinstance(v, (list, tuple)):  # a list of names: one is a one-armed NF, two a bump in the wire
        if not all(isinstance(x, str) for x in v):
            raise VPortConfigError("interfaces", "a list of interface names or a mapping name -> options")
        sides = ["both"] if len(v) == 1 else ["client", "server"] + ["none"] * (len(v) - 2)
        v = {name: {"side": s} for name, s in zip(v, sides)}
    if not isinstance(v, Mapping) or not v:
        raise VPortConfigError("interfaces", "a mapping name -> {side, port, meta}, at least one")
    out: list[Iface] = []
    for name, opts in v.items():
        if not isinstance(name, str) or not _IFNAME.match(name) or name == "lo":
            raise VPortConfigError("interfaces", f"{name!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
        if opts is None:
            opts = {}
        if isinstance(opts, str):
            opts = {"port": opts}
        if not isinstance(opts, Mapping):
            raise VPortConfigError("interfaces", f"{name}: options are a mapping (side, port, meta)")
        unknown = set(opts) - {"side", "port", "meta"}
        if unknown:
            raise VPortConfigError("interfaces", f"{name}: unknown option {sorted(unknown)[0]!r} "
                                                 f"(known: meta, port, side)")
        side = opts.get("side", "both" if len(v) == 1 else "none")
        if side not in SIDES:
            raise VPortConfigError("interfaces", f"{name}: side {side!r} is not one of {', '.join(SIDES)}")
        port = opts.get("port", "out")
        if port is not None and (not isinstance(port, str) or not port or "." in port):
            raise VPortConfigError("interfaces", f"{name}: port is a port name (or null: output ignored)")
        meta = opts.get("meta") or {}
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
            raise VPortConfigError("interfaces", f"{name}: meta is a mapping")
        out.append(Iface(name, side, port, tuple(meta.items())))
    for side in ("client", "server"):
        takers = [i.name for i in out if i.side == side]
        both = [i.name for i in out if i.side == "both"]
        if len(takers) + len(both) != 1:
            what = "none" if not takers and not both else ", ".join(takers + both)
            raise VPortConfigError("interfaces", f"exactly one interface must take {side}-side packets (side: "
                                                 f"{side} or both); here: {what}")
    return tuple(out)


def _ready(v: Any) -> tuple[tuple[ReadyCheck, ...], float]:
    if v is None:
        return (), 30.0
    items = v if isinstance(v, (list, tuple)) else [v]
    checks: list[ReadyCheck] = []
    timeout = 30.0
    for item in items:
        if not isinstance(item, Mapping):
            raise VPortConfigError("ready", "a mapping (log, command, file or probe; timeout) or a list of them")
        if "timeout" in item:
            timeout = _positive(item["timeout"], "ready")
        kinds = [k for k in item if k != "timeout"]
        for k in kinds:
            if k not in _READY_KINDS:
                raise VPortConfigError("ready", f"unknown check {k!r} (known: {', '.join(_READY_KINDS)})")
            arg = item[k]
            if k == "log":
                if not isinstance(arg, str) or not arg:
                    raise VPortConfigError("ready", "log is a regular expression the program's output matches")
                try:
                    re.compile(arg)
                except re.error as exc:
                    raise VPortConfigError("ready", f"log: bad regular expression {arg!r}: {exc}") from None
            elif k == "command":
                arg = _argv(arg, "ready")
            elif k == "file":
                if not isinstance(arg, str) or not arg:
                    raise VPortConfigError("ready", "file is a path (relative: in the instance directory)")
            elif k == "probe":
                if not isinstance(arg, bool):
                    raise VPortConfigError("ready", "probe is true or false")
                if not arg:
                    continue
            checks.append(ReadyCheck(k, arg))
    return tuple(checks), timeout
