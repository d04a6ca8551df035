"""The Pipelet API: what an NF author subclasses.

A pipelet is the code of one network function. The framework runs each instance of it (in an NF
instance actor, inside the switch when ``inline``, or alone under :mod:`e2actors.testing`) and
feeds it batches of packets, or in-order TCP bytes for ``input = "bytestream"``::

    class TTLGuard(Pipelet):
        ports = ("out", "expired")

        async def setup(self, config):
            self.min_ttl = config.get("min_ttl", 2)

        async def process(self, batch):
            for pkt in batch:
                if pkt.ttl >= 0 and pkt.ttl < self.min_ttl:
                    self.emit(pkt, "expired")
                else:
                    self.emit(pkt)

Each packet goes to one of ``ports`` with :meth:`emit` (the first port by default) or is dropped
with :meth:`drop` (a reason is counted); a packet that is neither is counted as dropped
("not emitted"). ``pkt.meta`` is per-packet metadata that travels with the packet to later NFs
and servers, where conditions can test it.

Files: a config is data from the policy, and on an agent the policy comes from another machine,
so a pipelet that reads or writes files names them in :attr:`Pipelet.config_paths` (checked when
the instance is deployed: a path outside the node's data directory refuses the spawn, naming the
NF, the key and the reason) and opens what :meth:`Pipelet.data_path` returns (the path inside the
data directory, checked again). See :mod:`e2actors.runtime.confine`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from e2actors.nf.config import parse_config
from e2actors.packet.batch import Batch
from e2actors.packet.flowtable import FlowTable
from e2actors.packet.packet import Packet
from e2actors.runtime.confine import Confinement, ConfinementError, process_confinement

__all__ = ["DROP", "ConfinementError", "Pipelet", "Verdict"]

Affinity = Literal["none", "flow", "host"]
InputKind = Literal["packets", "bytestream"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a bytestream pipelet decides for the packets that carried some stream bytes.

    ``port``: the output port (None: the pipelet's first port); ``drop``: drop them instead;
    ``meta``: metadata set on each of them; ``sticky``: also apply to the flow's later packets
    that carry no new bytes (pure ACKs, retransmissions, the FIN) until another verdict.
    """

    port: str | None = None
    drop: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    sticky: bool = True


DROP = Verdict(drop=True, reason="dropped by verdict")


class Pipelet:
    """Base class of every NF. Override :meth:`setup`, :meth:`process` and, for bytestream NFs,
    :meth:`on_stream`. Class attributes describe the NF to the manager and the switch."""

    #: Output port names; the first is the default for :meth:`emit`.
    ports: ClassVar[tuple[str, ...]] = ("out",)
    #: ``none``: any instance may take any packet; ``flow``: every packet of a connection (both
    #: directions) reaches the same instance; ``host``: every packet of a source host does.
    affinity: ClassVar[Affinity] = "none"
    #: ``packets``, or ``bytestream`` to get in-order TCP payload through :meth:`on_stream`.
    input: ClassVar[InputKind] = "packets"
    #: Packets per second one instance (one core) sustains: the sizing default.
    cost_pps: ClassVar[int] = 100_000
    #: Seconds after which an idle flow's state in :attr:`flows` expires.
    flow_timeout: ClassVar[float] = 60.0
    #: Bound on the flows kept in :attr:`flows` (least recently used evicted past it).
    max_flows: ClassVar[int] = 1_000_000
    #: Seconds between :meth:`on_timer` calls (None: no timer). Time-driven NFs (a shaper
    #: releasing queued packets) use it.
    timer_interval: ClassVar[float | None] = None
    #: Config keys that name files the pipelet reads or writes (a value may be a path or a list
    #: of paths): ``{"pcap": "write", "rules": "read"}``. A node that confines NFs refuses to
    #: deploy an instance whose paths leave its data directory (:meth:`check_config`).
    config_paths: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        # The runner awaits these: a plain ``def`` would fail on the first packet, far from here.
        for hook in ("setup", "process", "flush", "teardown"):
            fn = cls.__dict__.get(hook)
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{cls.__module__}.{cls.__qualname__}.{hook} must be 'async def {hook}(...)' "
                                "(the runner awaits it)")

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        #: Per-flow state keyed by the symmetric flow key, with idle expiry.
        self.flows: FlowTable[Any] = FlowTable(self.flow_timeout, self.max_flows)
        #: Free-form counters (exported as metrics; shown in summaries).
        self.counters: collections.Counter[str] = collections.Counter()
        #: Why packets were dropped: reason -> count.
        self.drops: collections.Counter[str] = collections.Counter()
        #: The instance's name once it runs (``nf#index``).
        self.name = type(self).__name__
        #: True when this instance takes over from an earlier run of the same member (a restart
        #: after a crash; a replacement after a move, an upgrade or a lost server): files it
        #: writes should go on after what that one wrote, not start afresh. Set before setup.
        self.resumed = False
        #: The current time as the runner sees it: packet timestamps when replaying a capture
        #: (so tests are deterministic), the wall clock live. Set before each call.
        self.now = 0.0
        #: Bytestream NFs, during :meth:`on_stream`: the packets that carried the chunk's bytes
        #: (read their headers; their fate is the verdict's).
        self.carriers: tuple[Packet, ...] | list[Packet] = ()
        self._out: dict[str, list[Packet]] = {p: [] for p in self.ports}
        self._default_out: list[Packet] = self._out[self.ports[0]]
        self._dropped = 0
        #: Ingress credits of the packets dropped since the runner last looked: origin -> packets.
        self._fin: dict[int, int] = {}
        #: Set by the NF instance actor: asks it to collect what was emitted now (see :meth:`wake`).
        self._waker: Callable[[], None] | None = None
        #: What this instance may touch on its node (set by the NF instance actor before
        #: :meth:`setup`); None: the process's (an agent's), or nothing confined.
        self.confinement: Confinement | None = None
        #: The config as the typed object of :attr:`config_schema` (None without a schema).
        self.settings: Any = None

    # --- the NF author's hooks ------------------------------------------------------------------
    async def setup(self, config: dict[str, Any]) -> None:
        """Called once before any packet, with the NF's ``config`` from the policy."""

    async def process(self, batch: Batch) -> None:
        """Handle a batch: :meth:`emit` or :meth:`drop` each packet. Default: pass everything."""
        self._default_out.extend(batch.packets)

    def on_stream(self, flow: Hashable, direction: int, data: bytes) -> Verdict | str | None:
        """Bytestream NFs: ``data`` is the next in-order TCP payload of ``flow`` in ``direction``
        (0: from the flow key's low end, 1: the other way). Return a :class:`Verdict`, a port name,
        or None (keep the flow's current verdict, initially the first port) for the packets that
        carried it. Bytes that never arrived are reported through :meth:`on_gap` instead."""
        return None

    def set_client(self, flow: Hashable, direction: int) -> None:
        """Bytestream NFs: the runner saw ``flow`` open (a SYN without ACK) from ``direction``,
        which is therefore the client's side."""

    def set_server(self, flow: Hashable, direction: int) -> None:
        """Bytestream NFs: the side sending in ``direction`` answered ``flow``'s SYN (a SYN/ACK):
        it is the server, and the handshake was seen."""

    def set_first_sender(self, flow: Hashable, direction: int) -> None:
        """Bytestream NFs: ``flow`` was joined mid-stream (no SYN seen) and its first packet, one
        without payload (a pure ACK), came from ``direction``; told before its first bytes.
        Suricata (``stream.midstream``) takes that side as the client."""

    def on_gap(self, flow: Hashable, direction: int, missing: int) -> Verdict | str | None:
        """Bytestream NFs: ``missing`` bytes of ``flow`` never arrived in time; the stream goes on
        after them. Return a verdict as :meth:`on_stream` does (default: keep the current one)."""
        return None

    def on_timer(self) -> None:
        """Called every :attr:`timer_interval` seconds (of :attr:`now`); may :meth:`emit`."""

    def pending(self) -> int:
        """Packets the pipelet holds (e.g. a shaper's queue); the runner drains them at the end."""
        return 0

    def on_flow_end(self, flow: Hashable, state: Any) -> None:
        """A flow's state left :attr:`flows` (idle expiry, eviction, or the connection ended)."""

    async def flush(self) -> None:
        """End of input (a replay finished): emit whatever the pipelet still holds that only
        time or its own I/O would release."""

    async def teardown(self) -> None:
        """Called once when the instance stops: close files, flush buffers."""

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        """Called on the node before an instance is deployed: raise :class:`ConfinementError` if
        ``config`` names something this node does not allow. Default: every path under the keys
        of :attr:`config_paths` must resolve inside the data directory. Override (calling super)
        to check more, e.g. paths built from a template."""
        for key in cls.config_paths:
            value = config.get(key)
            for v in value if isinstance(value, (list, tuple)) else (value,):
                if v is not None and v != "":
                    confine.path(str(v), key)

    def data_path(self, path: str, key: str = "") -> str:
        """The file ``path`` (from the config) names, inside this node's data directory: relative
        paths are taken from it, and a path that leaves it raises :class:`ConfinementError`. Where
        nothing is confined (a local run, :mod:`e2actors.testing`), ``path`` as it is."""
        c = self.confinement if self.confinement is not None else process_confinement()
        if c is None:
            return str(path)
        return c.path(path, key)

    # --- moving an instance with its state ------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Everything needed to carry on elsewhere (msgpack-safe). Default: :attr:`flows` and
        :attr:`counters`. Override (calling super) if the pipelet keeps other state."""
        return {"flows": self.flows.export(), "counters": dict(self.counters)}

    def import_state(self, data: dict[str, Any]) -> None:
        """Take over state from :meth:`export_state` of another instance (of this or an older
        version of the class)."""
        self.flows.load(data.get("flows", ()))
        self.counters.update(data.get("counters", {}))

    # --- called from process --------------------------------------------------------------------
    def emit(self, pkt: Packet, port: str | None = None) -> None:
        """Send ``pkt`` out of ``port`` (default: the first port)."""
        if port is None:
            self._default_out.append(pkt)
        else:
            try:
                self._out[port].append(pkt)
            except KeyError:
                raise ValueError(f"{type(self).__name__} has no port {port!r} (ports: {self.ports})") from None

    def drop(self, pkt: Packet, reason: str = "dropped") -> None:
        """Drop ``pkt``, counting ``reason``."""
        self.drops[reason] += 1
        self._dropped += 1
        o = pkt.origin
        if o:
            fin = self._fin
            fin[o] = fin.get(o, 0) + 1

    def wake(self) -> None:
        """A pipelet with I/O of its own (a program behind a virtual port) emitted packets outside
        :meth:`process` or :meth:`on_timer`: ask for them to be collected now rather than at the
        next timer tick. A no-op where nothing can be woken (:mod:`e2actors.testing`, inline)."""
        if self._waker is not None:
            self._waker()

    # --- for the runner (the NF author does not call these) -----------------------------------
    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """What :meth:`wake` calls (the instance running the pipelet collects its output)."""
        self._waker = waker

    def take_outputs(self) -> dict[str, list[Packet]]:
        """Hand over what was emitted since the last call (port -> packets) and start empty lists."""
        out = self._out
        self._out = {p: [] for p in self.ports}
        self._default_out = self._out[self.ports[0]]
        return out

    def take_finished(self) -> dict[int, int]:
        """Ingress credits of the packets dropped since the last call: origin -> packets."""
        fin = self._fin
        if fin:
            self._fin = {}
        return fin

    def count_dropped(self, reason: str, n: int) -> None:
        """``n`` of this NF's packets were dropped for it elsewhere (by its verdicts, in the switch)."""
        self.drops[reason] += n
        self._dropped += n

    @property
    def dropped_total(self) -> int:
        """Packets dropped so far (by :meth:`drop` and :meth:`count_dropped`)."""
        return self._dropped

    #: The NF's config as a dataclass (fields: the keys, their types and defaults), or None. When
    #: set, a config is checked against it at plan time (:func:`e2actors.nf.config.parse_config`)
    #: and the instance has the typed object as :attr:`settings` before :meth:`setup` runs.
    config_schema: ClassVar[type | None] = None

    #: ``setup`` has no effect outside the instance (no file opened, no program started), so the
    #: planner may run it on a config to check it before any traffic (:meth:`validate_config`).
    setup_is_pure: ClassVar[bool] = False

    @classmethod
    def parse_settings(cls, config: dict[str, Any]) -> Any:
        """``config`` checked against :attr:`config_schema` (the typed object), or None without one."""
        if cls.config_schema is None:
            return None
        return parse_config(cls.__name__, cls.config_schema, config)

    @classmethod
    def validate_config(cls, config: dict[str, Any], base_dir: str = ".") -> None:
        """Check an NF's ``config`` before anything runs (``e2actors plan`` and deploy call it):
        raise :class:`~e2actors.errors.ConfigError` naming the key and the reason. Default: run
        :meth:`setup` on a throwaway instance when it is pure (:attr:`setup_is_pure`); override to
        check what an impure setup would use."""
        # The class whose setup runs must say it is pure itself: a subclass that overrides
        # setup does not inherit its parent's word for it.
        cls.parse_settings(config)
        owner = next(k for k in cls.__mro__ if "setup" in vars(k))
        if not vars(owner).get("setup_is_pure", False):
            return
        p = cls()
        p.name = f"{cls.__name__} (config check)"
        p.config = dict(config)
        p.settings = cls.parse_settings(p.config)
        # On a private loop in a worker thread: the caller may be inside a running loop (a
        # Manager embedded in a script) or not (``e2actors plan``).
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            ex.submit(asyncio.run, p.setup(p.config)).result()

    @classmethod
    def reassembly_options(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Bytestream NFs: options for the TCP reassembly that feeds :meth:`on_stream` (e.g. an
        ``overlap`` policy), from the NF's config — the switch reassembles before the instance
        ever sees the config. Default: none."""
        return {}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The NF description defaults this class gives the manager."""
        return {"ports": list(cls.ports), "affinity": cls.affinity, "input": cls.input, "cost_pps": cls.cost_pps}
