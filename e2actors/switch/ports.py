"""Switch ports: where packets enter and leave a switch.

* ``pcap-in``: replays a capture, as fast as the switch takes it (lossless: it waits on the
  switch's gate, so a replay is reproducible) or timed by the capture's timestamps with a speed
  factor. ``pcap-out``: writes what leaves.
* ``memory``: packets injected by code, and what leaves collected in a list (tests, generators).
* ``afpacket``: a live Linux interface (see :mod:`e2actors.switch.afpacket`).

:func:`e2actors.switch.portkinds.make_port` builds any of them from a table's ``PortSpec``.

An input port hands each batch to the switch's ingress callback; an output port takes batches
with ``send``. Every port counts packets and bytes each way and drops by reason.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from e2actors.errors import E2Error, PcapError
from e2actors.packet.batch import DEFAULT_BATCH
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import PcapWriter, open_capture

__all__ = ["Gate", "Ingress", "MemoryPort", "NullPort", "PcapInPort", "PcapOutPort", "Port"]

Ingress = Callable[[str, list[Packet]], None]
Gate = Callable[[], Awaitable[None]]


class Port:
    """Base of every port: counters and the open/send/close life cycle."""

    kind = "port"
    is_input = False
    is_output = False
    #: A live input that can stop reading when the deployment has no room (see pause/resume).
    pausable = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.rx_packets = self.rx_bytes = 0
        self.tx_packets = self.tx_bytes = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.done = not self.is_input  # an input port is done when it has nothing more to give

    async def open(self, ingress: Ingress, gate: Gate) -> None:
        """Start delivering input to ``ingress`` (input ports); ``gate()`` waits for room."""

    def send(self, pkts: list[Packet]) -> None:
        """Take packets leaving the switch (output ports)."""
        self.drops["not an output port"] += len(pkts)

    async def close(self) -> None:
        """Stop and release resources."""

    def retune(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """A new table gives this port the parameters ``new`` (it was opened with ``old``): True
        when the port takes them as it runs (kept, not reopened); False: reopen it."""
        return False

    def stop_input(self) -> None:
        """Read no more (the end of a run): the port is done as an input; it still sends."""
        self.pause()
        self.done = True

    def pause(self) -> None:
        """Stop reading (live ports): the input's own buffer fills and drops, counted there."""

    def resume(self) -> None:
        """Read again after :meth:`pause`."""

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes, "drops": dict(self.drops),
                "done": self.done, "input": self.is_input, "output": self.is_output}

    def _count_tx(self, pkts: list[Packet]) -> None:
        self.tx_packets += len(pkts)
        self.tx_bytes += sum([len(p.data) for p in pkts])


class PcapInPort(Port):
    """Replays a pcap/pcapng capture. ``speed=0``: as fast as the switch takes it; ``speed=s``:
    timed by the capture's timestamps, ``s`` times real time. ``loop``: replay it this many times.
    Packets get the replay time as their timestamp when timed, the capture's otherwise.

    Sharded (``shard: [k, n]``): every shard reads the whole capture and keeps the flows of shard
    ``k``; it counts how many packets of each shard it has seen (``shard_seen``). ``adopt: [[j,
    from], ...]`` (a later table; taken while replaying) also keeps the packets of shard ``j``
    from that shard's packet number ``from`` on — how a surviving shard takes over the flows of a
    lost one (:mod:`e2actors.manager.recovery`). When this port has already read past ``from``:
    a replay as fast as possible reads the capture a second time for shard ``j``'s packets from
    ``from`` on, so nothing of the lost shard's share is skipped: they come as late as the
    takeover, their timestamps shifted by that lateness (each flow keeps its own timing), following
    the first read in time order; a timed replay keeps them from now on (what went by meanwhile is
    lost, as on a live link). ``from`` -1: from now."""

    kind = "pcap-in"
    is_input = True

    def __init__(self, name: str, path: str, speed: float = 0.0, loop: int = 1, batch: int = DEFAULT_BATCH,
                 shard: tuple[int, int] | list[int] | None = None) -> None:
        super().__init__(name)
        self.path, self.speed, self.loops, self.batch = path, float(speed), int(loop), int(batch)
        #: (k, n): keep only the flows of shard k of n (see e2actors.manager.shards).
        self.shard = (int(shard[0]), int(shard[1])) if shard else None
        self.skipped = 0
        n = self.shard[1] if self.shard else 0
        #: Packets of each shard seen so far (all loops), this shard's own included.
        self.shard_seen = [0] * n
        #: Shard -> the packet number of that shard from which the main replay keeps its packets too.
        self.adopt: dict[int, int] = {}
        #: Shard -> packets of that shard kept (taken over from a lost shard).
        self.adopted: dict[int, int] = {}
        #: Why the replay stopped before the capture's end (a corrupt or truncated file), if it did.
        self.error: str | None = None
        self._t0 = 0.0
        self._task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []  # the main replay, and second reads for adopted shards
        self._io: tuple[Ingress, Gate] | None = None
        self._stopped = False
        #: The main read's packet time (its last batch's), which a second read follows.
        self._t_main = 0.0
        self._main_done = False
        self._main_moved = asyncio.Event()
        self.finished = asyncio.Event()

    async def open(self, ingress: Ingress, gate: Gate) -> None:
        open_capture(self.path).close()  # fail now, with the path in the error, if unreadable
        self._io = (ingress, gate)
        self._task = self._start(self._replay(ingress, gate), f"port:{self.name}")

    def _start(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def _replay(self, ingress: Ingress, gate: Gate, only: int | None = None, frm: int = 0) -> None:
        """Read the capture (every loop). ``only``: a second read that keeps shard ``only``'s
        packets from its number ``frm`` on (a lost shard's, taken over), counting nothing else."""
        name, size = self.name, self.batch
        sharded = self.shard is not None and self.shard[1] > 1
        if sharded:
            from e2actors.switch.balancer import shard_of, shard_of_frame

            k, n = self.shard  # type: ignore[misc]
            if only is not None:
                k = only
        else:
            k = n = 0
        seen = self.shard_seen if only is None else [0] * n
        adopting = only is None
        shift: float | None = None
        push = self._push if only is None else self._push_behind
        offset = 0.0  # later loops of a capture replayed in packet time come after the earlier ones
        t_max = 0.0
        t0 = self._t0
        cur: list[Packet] = []
        try:
            for loop in range(self.loops):
                t_first = None
                wall0 = time.monotonic()
                if loop and self.speed <= 0:
                    offset = t_max + 1.0 - t0
                with open_capture(self.path) as reader:
                    cur = []
                    for ts, data, wirelen, lt, _if in reader:
                        if not t0:
                            t0 = self._t0 = ts
                        if offset:
                            ts += offset
                        if ts > t_max:
                            t_max = ts
                        if self.speed > 0:
                            if t_first is None:
                                t_first = ts
                            due = wall0 + (ts - t_first) / self.speed
                            delay = due - time.monotonic()
                            if delay > 0.0005:
                                if cur:
                                    await push(ingress, gate, cur)
                                    cur = []
                                await asyncio.sleep(delay)
                            ts = time.time()
                        if sharded:
                            # Most frames are decided from their bytes (no parse for other
                            # shards' packets); the rest are parsed first.
                            sh = shard_of_frame(data, lt, n)
                            if sh < 0:
                                pkt = Packet(data, ts, name, wirelen, lt)
                                sh = shard_of(pkt, n)
                            elif sh == k:
                                pkt = Packet(data, ts, name, wirelen, lt)
                            seen[sh] += 1
                            if sh != k:
                                adopt = self.adopt
                                if not adopting or not adopt or sh not in adopt or seen[sh] <= adopt[sh]:
                                    if adopting:
                                        self.skipped += 1
                                    continue
                                self.adopted[sh] = self.adopted.get(sh, 0) + 1
                                pkt = Packet(data, ts, name, wirelen, lt)
                            elif only is not None:
                                if seen[sh] <= frm:
                                    continue
                                self.adopted[sh] = self.adopted.get(sh, 0) + 1
                                if shift is None:
                                    # The lost shard's packets come as late as the takeover: shifted
                                    # by the outage in the capture's time (each flow keeps its own
                                    # timing, the deployment's packet clock never goes back).
                                    shift = max(0.0, self._t_main - ts)
                                if shift:
                                    pkt = Packet(data, ts + shift, name, wirelen, lt)
                        else:
                            pkt = Packet(data, ts, name, wirelen, lt)
                        cur.append(pkt)
                        if len(cur) >= size:
                            await push(ingress, gate, cur)
                            cur = []
                    if cur:
                        await push(ingress, gate, cur)
                    if reader.truncated:
                        # (tcpdump fails on it too: packets are missing, the run must say so)
                        self.error = f"{self.path}: truncated capture: {reader.truncated}"
                        break
        except (PcapError, OSError) as exc:  # corrupt or unreadable past the start: loud, not a crash
            self.error = f"{self.path}: {exc}"
            if cur:  # the good records read before the corrupt one still go through
                await push(ingress, gate, cur)
        finally:
            if only is None:
                self._main_done = True
                self._main_moved.set()
            me = asyncio.current_task()
            if all(t.done() or t is me for t in self._tasks):
                self.done = True
                self.finished.set()

    async def _push(self, ingress: Ingress, gate: Gate, pkts: list[Packet]) -> None:
        await gate()
        self.rx_packets += len(pkts)
        self.rx_bytes += sum([len(p.data) for p in pkts])
        ingress(self.name, pkts)
        if pkts[-1].ts > self._t_main:
            self._t_main = pkts[-1].ts
            self._main_moved.set()
        await asyncio.sleep(0)  # let the rest of the switch run between batches

    async def _push_behind(self, ingress: Ingress, gate: Gate, pkts: list[Packet]) -> None:
        """A second read's batch goes once the main read's packet time has passed it: the two
        interleave in time order (the main read's pace; alone once it is over)."""
        while not self._main_done and self._t_main < pkts[-1].ts:
            self._main_moved.clear()
            await self._main_moved.wait()
        await self._push(ingress, gate, pkts)

    def stop_input(self) -> None:
        self._stopped = True
        for t in self._tasks:
            if not t.done():
                t.cancel()
        self.done = True

    async def close(self) -> None:
        for t in self._tasks:
            if not t.done():
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass

    def retune(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Only ``adopt`` changed: take the shards over (see the class docstring) without reopening."""
        if {k: v for k, v in old.items() if k != "adopt"} != {k: v for k, v in new.items() if k != "adopt"}:
            return False
        if self.shard is None or self.shard[1] < 2:
            return not new.get("adopt")
        n = self.shard[1]
        for j, frm in new.get("adopt") or ():
            j, frm = int(j), int(frm)
            if not 0 <= j < n or j == self.shard[0] or j in self.adopt or j in self.adopted:
                continue  # (taken over already: once is enough)
            if frm < 0 or frm >= self.shard_seen[j] or self.speed > 0 or self._stopped or self._io is None:
                # From ``frm`` on if the replay has not got there yet, else from now.
                self.adopt[j] = self.shard_seen[j] if frm < 0 else frm
            else:
                self.adopted[j] = 0  # (read a second time, from ``frm`` on)
                self.done = False  # (even when the first read is over)
                self.finished.clear()
                self._start(self._replay(*self._io, only=j, frm=frm), f"port:{self.name}:shard{j}")
        return True

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        if self.error:
            st["error"] = self.error
        if self.skipped:
            st["other_shards"] = self.skipped
        if self.shard_seen:
            st["shard_seen"] = list(self.shard_seen)
        if self.adopted:
            st["adopted"] = {str(j): n for j, n in self.adopted.items()}
        return st


class PcapOutPort(Port):
    """Writes every packet that leaves through it to a pcap file."""

    kind = "pcap-out"
    is_output = True

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        #: The first write error (``PATH: reason``): the output failed; what it refused is dropped
        #: and counted, and the run fails with this message.
        self.error: str | None = None
        try:
            self.writer: PcapWriter | None = PcapWriter(path)
        except OSError as exc:
            raise E2Error(f"port {name}: cannot write {path}: {exc.strerror or exc}") from None

    def send(self, pkts: list[Packet]) -> None:
        w = self.writer
        if w is None:
            self.drops["output failed"] += len(pkts)
            return
        try:
            for p in pkts:
                w.write(p.data, p.ts, p.wirelen)
        except OSError as exc:  # a full disk, a file system gone read-only: loud, counted, never a crash
            self._failed(exc, len(pkts))
            return
        self._count_tx(pkts)

    def _failed(self, exc: OSError, n: int) -> None:
        self.error = f"{self.path}: {exc.strerror or exc}"
        self.drops["output failed"] += n
        w, self.writer = self.writer, None
        try:
            if w is not None:
                w.close()
        except OSError:
            pass

    async def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                self._failed(exc, 0)

    def stats(self) -> dict[str, Any]:
        st = super().stats()
        if self.error:
            st["error"] = self.error
        return st


class MemoryPort(Port):
    """Input injected by code (``inject``); output kept in ``received`` (bounded: ``keep``)."""

    kind = "memory"
    is_input = True
    is_output = True

    def __init__(self, name: str, keep: int = 1_000_000) -> None:
        super().__init__(name)
        self.keep = keep
        self.received: list[Packet] = []
        self._ingress: Ingress | None = None
        self.done = True

    async def open(self, ingress: Ingress, gate: Gate) -> None:
        self._ingress = ingress

    def inject(self, pkts: Iterable[Packet]) -> None:
        """Hand packets to the switch as if they had arrived on this port."""
        if self._ingress is None:
            raise E2Error(f"port {self.name} is not open")
        lst = [p if p.port == self.name else _with_port(p, self.name) for p in pkts]
        self.rx_packets += len(lst)
        self.rx_bytes += sum([len(p.data) for p in lst])
        self._ingress(self.name, lst)

    def send(self, pkts: list[Packet]) -> None:
        self._count_tx(pkts)
        room = self.keep - len(self.received)
        if room < len(pkts):
            self.drops["memory port full"] += len(pkts) - max(room, 0)
            pkts = pkts[: max(room, 0)]
        self.received.extend(pkts)


class NullPort(Port):
    """An output that counts what leaves and keeps nothing (when nobody needs the packets)."""

    kind = "null"
    is_output = True

    def send(self, pkts: list[Packet]) -> None:
        self._count_tx(pkts)


def _with_port(p: Packet, port: str) -> Packet:
    p.port = port
    return p
