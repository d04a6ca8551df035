"""``VPort``: an existing program as an NF instance, behind virtual ports.

Each instance makes a network namespace of its own with one veth pair per program interface
(:class:`~e2actors.nf.vport.sandbox.Sandbox`), runs its setup commands and its program in it, waits
until the program is ready, and then moves packets: :meth:`VPort.process` writes each batch into
the program's interfaces through AF_PACKET sockets with PACKET_MMAP rings (the switch's own
:class:`~e2actors.switch.afpacket.AfPacketPort`), the packets of a flow's client side into the
``client`` interface and the others into the ``server`` one (the side is told by the flow's first
packet, or by ``meta.reverse`` in a bump in the wire); whatever the program sends out of an
interface leaves on the NF port that interface maps to.

Because the instance is an ordinary NF instance actor, the manager sizes, places, load-balances
(with flow affinity), scales and restarts vport NFs like any other: scaling out starts another
namespace with another copy of the program; a program that exits, fails its readiness check or
its health check makes the instance raise, and the supervision that restarts crashed instances
starts a new namespace and program (teardown kills the program and deletes the namespace).

Metadata cannot cross a program: it sees frames only. A frame it sends back byte for byte
unchanged is matched to the packet that carried it (:class:`~e2actors.nf.vport.inflight.InFlight`),
and that packet leaves with its metadata and ingress credit. A frame it changed or made (a NAT, a
router, a proxy's connections) leaves as a new packet without metadata (plus the interface's
``meta``), and the packet it came from counts as not sent back after ``return_timeout``: dropped
(``not returned by PROGRAM``), consumed, or sent to a port (``unreturned``) — so an inline IPS's
drops can leave on an ``unsafe`` port. See :mod:`e2actors.nf.vport.config` for the config.

Needs root (namespaces, veth pairs, AF_PACKET); refuses with the reason when not root or when a
program is missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from typing import Any

from e2actors.nf.pipelet import Pipelet
from e2actors.nf.vport.config import ReadyCheck, VPortConfig, VPortConfigError, VPortError, expand
from e2actors.nf.vport.eve import EveTail, count_event
from e2actors.nf.vport.inflight import InFlight
from e2actors.nf.vport.sandbox import Sandbox, sweep_stale
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet

__all__ = ["VPort"]

#: A frame that tests the path through the program (``ready: {probe: true}``): broadcast, from a
#: locally administered address, IEEE local experimental EtherType 0x88B5.
_PROBE_HEAD = b"\xff\xff\xff\xff\xff\xff\x02\xe2\x00\x00\x00\x01\x88\xb5e2actors vport probe "


def _confinement(p: Pipelet) -> Any:
    """What this node lets NF configs touch (files, programs), when it confines them; else None."""
    c = getattr(p, "confinement", None)
    if c is not None:
        return c
    try:
        from e2actors.runtime.confine import process_confinement  # type: ignore[import-not-found]
    except ImportError:
        return None
    return process_confinement()


_ICMP_ASK = frozenset((8, 13, 15, 17, 128, 130, 133, 135))  # (ICMP, then ICMPv6 types)
_ICMP_ANSWER = frozenset((0, 14, 16, 18, 129, 131, 134, 136))


def _from_client(pkt: Packet) -> bool:
    """Whether the first packet seen of a flow comes from its client. The switch says so in a bump
    in the wire (``meta.reverse``: it entered on the servers' side); else a TCP SYN comes from the
    client and a SYN-ACK from the server, an ICMP request from the client and its reply from the
    server; else (a flow joined midstream, after a restart or a scale-out) the side with the higher
    port is the client's, as services listen on low ports."""
    m = pkt.meta_if_any
    if m and "reverse" in m:
        return False
    proto = pkt.proto
    if pkt.l4_offset >= 0:
        if proto == 6:
            flags = pkt.tcp_flags
            if flags & 0x02:  # SYN
                return not flags & 0x10
        elif proto == 1 or proto == 58:
            t = pkt.icmp_type  # requests (echo, timestamp, ...) from the client, replies from the server
            if t in _ICMP_ASK:
                return True
            if t in _ICMP_ANSWER:
                return False
    sp, dp = pkt.sport, pkt.dport
    if sp >= 0 and dp >= 0 and sp != dp:
        return sp > dp
    return True


class VPort(Pipelet):
    """An existing program in a network namespace, wired by veth pairs (see the module docstring)."""

    ports = ("out",)
    affinity = "flow"
    cost_pps = 50_000
    #: Expiry of packets the program did not send back, EVE reading, failure checks. Output the
    #: program sends is collected as it arrives (:meth:`Pipelet.wake`), not on this timer.
    timer_interval = 0.02

    # --- the description ----------------------------------------------------------------------------
    @classmethod
    def ports_for(cls, config: dict[str, Any]) -> tuple[str, ...]:
        """The NF's ports, from its config (its interfaces' ports and the ``unreturned`` port)."""
        return VPortConfig.parse(config).ports

    @classmethod
    def validate_config(cls, config: dict[str, Any], base_dir: str = ".") -> None:
        """At plan time: the config parses (interfaces, ports, programs, readiness check)."""
        super().validate_config(config, base_dir)
        VPortConfig.parse(config)

    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Any) -> None:
        """Before deploying on a node that confines NF configs: every program the NF runs must be
        allowed there, and its files and data directory inside the node's data directory."""
        vc = VPortConfig.parse(config)
        for prog, key in vc.programs():
            confine.program(prog, key)
        for f in vc.files:
            confine.path(f, "files")
        if vc.data_dir:
            confine.path(vc.data_dir, "data_dir")

    # --- start ---------------------------------------------------------------------------------------
    async def setup(self, config: dict[str, Any]) -> None:
        self.vc = vc = VPortConfig.parse(config)
        self.ports = vc.ports
        self._out = {p: [] for p in self.ports}
        self._default_out = self._out[self.ports[0]]
        self.sandbox: Sandbox | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.dir = ""
        self._temp_dir = False
        self._tasks: list[asyncio.Task] = []
        self._ports: dict[str, Any] = {}
        self._inflight = InFlight()
        self._room = asyncio.Event()
        self._back = asyncio.Event()
        self._in_process = False
        self._failed: str | None = None
        self._running = False
        self._stopping = False
        self._probe: bytes | None = None
        self._probe_seen = asyncio.Event()
        self._eve: EveTail | None = None
        #: Alerts read from the program's EVE log: (src_ip, src_port, dest_ip, dest_port, proto, sid, action).
        self.alert_log: collections.deque[tuple] = collections.deque(maxlen=10_000)
        self._drop_reason = f"not returned by {vc.program_name}"
        self._out_map = {i.name: (i.port, dict(i.meta)) for i in vc.interfaces}
        what = f"vport NF {self.name}"
        if os.geteuid() != 0:
            raise VPortError(f"{what}: needs root (a network namespace and veth pairs need CAP_SYS_ADMIN and "
                             f"CAP_NET_ADMIN, AF_PACKET sockets CAP_NET_RAW)")
        for tool, pkg in (("ip", "iproute2"), ("ethtool", "ethtool")):
            if shutil.which(tool) is None:
                raise VPortError(f"{what}: needs the {tool!r} program (Debian package {pkg})")
        confine = _confinement(self)
        #: program -> the path it runs from (checked by the node's confinement, when there is one)
        self._resolved: dict[str, str] = {}
        for prog, key in vc.programs():
            if confine is not None:
                self._resolved[prog] = confine.program(prog, key)
            elif shutil.which(prog) is None:
                raise VPortError(f"{what}: program {prog!r} ({key}) not found: install it or fix the path")
        self._make_dir(confine)
        env = dict(os.environ)
        try:
            await sweep_stale()
            self.sandbox = sb = Sandbox([i.name for i in vc.interfaces], vc.mtu, vc.ipv6)
            values = {"dir": self.dir, "ns": sb.ns, "instance": self.name}
            env.update({k: expand(v, values) for k, v in vc.env})
            self._values = values
            self._env = env
            self._copy_files(confine, values)
            await sb.create()
            for argv in vc.setup:
                full = self._argv(argv)
                rc, out = await sb.run(full, cwd=self.dir, env=env)
                if rc != 0:
                    raise VPortError(f"{what}: setup command {' '.join(full)!r} failed (exit {rc}): "
                                     f"{out.strip()[-800:]}")
            await self._open_ports()
            if vc.command:
                self.log_path = os.path.join(self.dir, "program.log")
                self.proc = await sb.start(self._argv(vc.command), self.log_path, cwd=self.dir, env=env)
                self._tasks.append(asyncio.get_running_loop().create_task(self._watch(self.proc)))
            if vc.eve:
                self._eve = EveTail(os.path.join(self.dir, expand(vc.eve, values)))
            await self._await_ready()
            if vc.health:
                self._tasks.append(asyncio.get_running_loop().create_task(self._health()))
        except BaseException:
            await self._cleanup()
            raise
        self._running = True
        self.counters["program_starts"] += 1

    def _argv(self, argv: tuple[str, ...]) -> list[str]:
        """A configured command as it runs: tokens expanded, the program by its checked path."""
        out = [expand(a, self._values) for a in argv]
        out[0] = self._resolved.get(argv[0], out[0])
        return out

    def _make_dir(self, confine: Any) -> None:
        """The instance's own directory: ``data_dir/INSTANCE`` (kept after it stops; the one of the
        instance's previous run moved to ``INSTANCE.prev``), else a temporary one (removed)."""
        base = self.vc.data_dir
        if base is not None and confine is not None:
            base = confine.path(base, "data_dir")
        elif base is None and confine is not None and getattr(confine, "files", False):
            base = os.path.join(confine.data_dir, "vport")
        if base is None:
            self.dir = tempfile.mkdtemp(prefix="e2vport-")
            self._temp_dir = True
            return
        safe = re.sub(r"[^A-Za-z0-9_.#~-]", "_", self.name) or "instance"
        d = os.path.abspath(os.path.join(base, safe))
        if os.path.exists(d):
            shutil.rmtree(d + ".prev", ignore_errors=True)
            os.replace(d, d + ".prev")
        os.makedirs(d, mode=0o700)
        self.dir = d

    def _copy_files(self, confine: Any, values: dict[str, str]) -> None:
        for f in self.vc.files:
            src = confine.path(f, "files") if confine is not None else f
            try:
                with open(src, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise VPortConfigError("files", f"cannot read {f}: {exc.strerror}") from None
            try:  # text files get {dir}, {ns}, {instance}
                data = expand(data.decode(), values).encode()
            except UnicodeDecodeError:
                pass
            with open(os.path.join(self.dir, os.path.basename(f.rstrip("/"))), "wb") as out:
                out.write(data)

    async def _open_ports(self) -> None:
        from e2actors.switch.afpacket import AfPacketPort

        async def gate() -> None:
            return None

        assert self.sandbox is not None
        frames = 512  # (a window's worth in each ring: what the program holds, plus what it made)
        while frames < self.vc.window:
            frames *= 2
        for i in self.vc.interfaces:
            port = AfPacketPort(i.name, self.sandbox.links[i.name], batch=256, ring_frames=frames)
            await port.open(self._from_program, gate)
            self._ports[i.name] = port
        self._max_frame = self.vc.mtu + 14  # (+4 for a VLAN tag: checked when a frame is larger)
        self._client = self._ports[self.vc.writer("client").name]
        self._server = self._ports[self.vc.writer("server").name]
        self._single = self._client if self._client is self._server else None

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if not self._stopping:
            self._fail(f"program {self.vc.program_name} exited (code {rc}){self._log_tail()}")

    async def _health(self) -> None:
        assert self.sandbox is not None and self.vc.health is not None
        argv = self._argv(self.vc.health)
        while not self._stopping and self._failed is None:
            await asyncio.sleep(self.vc.health_interval)
            rc, out = await self.sandbox.run(argv, timeout=max(5.0, 2 * self.vc.health_interval), cwd=self.dir,
                                             env=self._env)
            self.counters["health_checks"] += 1
            if rc != 0 and not self._stopping:
                self._fail(f"health check {' '.join(argv)!r} failed (exit {rc}): {out.strip()[-300:]}")

    def _fail(self, why: str) -> None:
        if self._failed is None:
            self._failed = why
        self._room.set()
        self.wake()  # the next tick raises: the instance crashes and is restarted

    def _check(self) -> None:
        if self._failed is not None:
            raise VPortError(f"vport NF {self.name}: {self._failed}")

    def _log_tail(self, n: int = 600) -> str:
        path = getattr(self, "log_path", None)
        if not path:
            return ""
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - n))
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f"; its last output: {text}" if text else ""

    async def _await_ready(self) -> None:
        vc = self.vc
        deadline = time.monotonic() + vc.ready_timeout
        for check in vc.ready:
            while True:
                self._check()
                if await self._ready_now(check, deadline):
                    break
                if time.monotonic() > deadline:
                    raise VPortError(f"vport NF {self.name}: not ready after {vc.ready_timeout:g} s "
                                     f"({check.kind}: {check.arg!r}){self._log_tail()}")
                await asyncio.sleep(0.05)
        self._check()

    async def _ready_now(self, check: ReadyCheck, deadline: float) -> bool:
        if check.kind == "log":
            path = getattr(self, "log_path", None)
            if not path:
                raise VPortConfigError("ready", "a log check needs a command (its output is what is read)")
            try:
                with open(path, "rb") as f:
                    text = f.read(4 << 20).decode(errors="replace")
            except OSError:
                return False
            return re.search(check.arg, text) is not None
        if check.kind == "file":
            return os.path.exists(os.path.join(self.dir, expand(check.arg, self._values)))
        if check.kind == "command":
            assert self.sandbox is not None
            left = max(1.0, deadline - time.monotonic())
            rc, _out = await self.sandbox.run(self._argv(check.arg), timeout=min(10.0, left), cwd=self.dir,
                                              env=self._env)
            return rc == 0
        # probe: a frame through the program and back
        if self._probe_seen.is_set():
            return True
        if self._probe is None:
            self._probe = _PROBE_HEAD + os.urandom(8).hex().encode()
        self._client.send([Packet(self._probe, 0.0, "probe")])
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._probe_seen.wait(), 0.2)
        return self._probe_seen.is_set()

    # --- packets ---------------------------------------------------------------------------------------
    async def process(self, batch: Batch) -> None:
        self._check()
        pkts = batch.packets
        if not pkts:
            return
        self._in_process = True
        try:
            await self._process(pkts)
        finally:
            self._in_process = False

    async def _process(self, pkts: list[Packet]) -> None:
        inflight = self._inflight
        window = self.vc.window
        while inflight.held and inflight.held + len(pkts) > window:
            # Backpressure: the program holds a window's worth. Wait for it to send some back (or
            # for them to time out); meanwhile this instance takes no batch, and the switch's
            # window to it fills.
            self._expire(time.monotonic())
            if inflight.held + len(pkts) <= window:
                break
            self._room.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._room.wait(), 0.02)
            self._check()
        limit = self._max_frame
        if any(len(p.data) > limit for p in pkts):
            pkts = self._drop_oversized(pkts)
        t = time.monotonic()
        add = inflight.add
        single = self._single
        if single is not None:
            for pkt in pkts:
                add(pkt, t)  # (before the write: a kernel NF answers within the send)
            self._write(single, pkts)
        else:
            # Two lists, one per interface, each written in one go; only a flow's own order
            # matters, so a packet whose flow has packets waiting in the other list sends that list
            # first. A kernel NF handles each write within the send: it sees every flow's packets
            # in their order, as does a program in user space, with ``ordered`` (see _until_back).
            client, server = self._client, self._server
            # (a kernel NF answered within the write: what is not back was dropped, no waiting)
            ordered = self.vc.ordered and self.vc.command is not None
            flows = self.flows
            now = self.now
            lists: dict[Any, list[Packet]] = {client: [], server: []}
            pend: dict[Any, set] = {client: set(), server: set()}
            other_of = {client: server, server: client}
            for pkt in pkts:
                key = pkt.flow_key
                d = pkt.direction
                st = flows.touch(key, now)
                if st is None:
                    st = [d if _from_client(pkt) else 1 - d, None, None, False]
                    flows.set(key, st, now)
                port = client if d == st[0] else server
                other = other_of[port]
                if key in pend[other]:
                    self._write(other, lists[other])
                    lists[other] = []
                    pend[other] = set()
                if ordered and st[1] is other and not st[3] and inflight.waiting(st[2]):
                    # The other direction's latest packet of this flow is still inside the program:
                    # this one must not overtake it.
                    if not await self._until_back(st[2]):
                        st[3] = True  # the program dropped it: no more waiting for this flow
                add(pkt, t)
                lists[port].append(pkt)
                pend[port].add(key)
                st[1] = port
                st[2] = pkt
            for port, lst in lists.items():
                if lst:
                    self._write(port, lst)
        await asyncio.sleep(0)  # what a program in user space answered already

    def _write(self, port: Any, pkts: list[Packet]) -> None:
        port.send(pkts)
        # A kernel NF forwarded them within the send: read them now, so what comes back of a
        # flow's two directions keeps the order it went in.
        for back in self._ports.values():
            while back.poll():
                pass

    async def _until_back(self, pkt: Packet) -> bool:
        """Wait until ``pkt`` came back out of the program: False when ``order_wait`` passed first."""
        inflight = self._inflight
        deadline = time.monotonic() + self.vc.order_wait
        self.counters["order_waits"] += 1
        while inflight.waiting(pkt):
            left = deadline - time.monotonic()
            if left <= 0:
                self.counters["order_waits_expired"] += 1
                return False
            self._back.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._back.wait(), left)
            self._check()
        return True

    def _drop_oversized(self, pkts: list[Packet]) -> list[Packet]:
        """Frames the interfaces' MTU cannot carry are dropped here (the kernel would refuse them)."""
        keep = []
        mtu = self.vc.mtu
        for p in pkts:
            n = len(p.data) - 14
            if p.data[12:14] in (b"\x81\x00", b"\x88\xa8"):
                n -= 4  # (one VLAN tag rides on top of the MTU, as on Linux)
            if n > mtu:
                self.drop(p, f"larger than the vport MTU ({mtu})")
            else:
                keep.append(p)
        return keep

    def _from_program(self, name: str, pkts: list[Packet]) -> None:
        """Frames the program sent out of interface ``name`` (the ports' reader callback)."""
        if not self._running:
            if self._probe is not None and any(p.data == self._probe for p in pkts):
                self._probe_seen.set()
            self.counters["frames_before_ready"] += len(pkts)
            return
        port, meta = self._out_map[name]
        match = self._inflight.match
        out = self._out[port] if port is not None else None
        matched = new = 0
        for p in pkts:
            orig = match(p.data)
            if orig is not None:
                matched += 1
                if out is not None:
                    out.append(orig)  # the original packet: its metadata and credit go on
                else:
                    self._consume(orig)
            elif out is not None:
                if meta:
                    p.meta.update(meta)
                out.append(p)
                new += 1
        c = self.counters
        if matched:
            c["frames_back"] += matched
            self._room.set()
            self._back.set()
        if new:
            c["frames_new"] += new
        ignored = len(pkts) - matched - new
        if ignored and out is None:
            c["frames_ignored"] += ignored
        if (matched or new) and not self._in_process:
            self.wake()  # (inside process() the runner collects them when it returns)

    def _consume(self, pkt: Packet) -> None:
        """The program is done with ``pkt`` without it leaving or being dropped: its credit goes back."""
        o = pkt.origin
        if o:
            self._fin[o] = self._fin.get(o, 0) + 1
        self.counters["consumed"] += 1

    def _expire(self, now: float) -> None:
        gone = self._inflight.expire(now - self.vc.return_timeout)
        if not gone:
            return
        self._room.set()
        self.counters["not_returned"] += len(gone)
        mode = self.vc.unreturned
        if mode == "drop":
            reason = self._drop_reason
            for p in gone:
                self.drop(p, reason)
        elif mode == "consume":
            for p in gone:
                self._consume(p)
        else:
            self._out[mode].extend(gone)

    def on_timer(self) -> None:
        self._check()
        self._read_eve()  # (before expiry: a drop's alert is counted by the time its packet is)
        self._expire(time.monotonic())
        for name, port in self._ports.items():
            for reason, n in port.drops.items():
                self.counters[f"veth {name}: {reason}"] = n

    def export_state(self) -> dict[str, Any]:
        """Which side of each flow is its client, and the counters (what the program holds stays
        with it: a new instance starts a new program)."""
        return {"flows": [(k, v[0], t) for k, v, t in self.flows.export()], "counters": dict(self.counters)}

    def import_state(self, data: dict[str, Any]) -> None:
        self.flows.load([(k, [d, None, None, False], t) for k, d, t in data.get("flows", ())])
        self.counters.update(data.get("counters", {}))

    def pending(self) -> int:
        return self._inflight.held

    def _read_eve(self) -> None:
        if self._eve is None:
            return
        for ev in self._eve.read():
            a = count_event(ev, self.counters)
            if a is not None:
                self.alert_log.append(a)
        if self._eve.bad_lines:
            self.counters["eve_bad_lines"] = self._eve.bad_lines

    async def flush(self) -> None:
        """End of input: wait until the program sent back (or, after ``return_timeout``, did not
        send back) everything it holds."""
        deadline = time.monotonic() + self.vc.return_timeout + 0.5
        while self._inflight.held and time.monotonic() < deadline:
            self._check()
            for port in self._ports.values():
                port.poll()
            await asyncio.sleep(0.005)
        self._read_eve()
        self._expire(float("inf") if time.monotonic() >= deadline else time.monotonic())

    # --- stop ------------------------------------------------------------------------------------------
    async def teardown(self) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Stop the program, close the sockets, delete the namespace (safe to call twice)."""
        self._stopping = True
        self._running = False
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        for port in self._ports.values():
            with contextlib.suppress(Exception):
                await port.close()
        self._ports = {}
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.vc.stop_timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self._read_eve()  # what the program wrote as it stopped
        if self.sandbox is not None:
            await self.sandbox.destroy()
        if self._temp_dir and self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._temp_dir = False
