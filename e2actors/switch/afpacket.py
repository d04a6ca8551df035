"""``AfPacketPort``: a live Linux interface through an AF_PACKET socket.

Two ways to move frames, chosen when the port opens:

* ``ring`` (the default): PACKET_MMAP rings, TPACKET_V2. The kernel writes received frames into
  a receive ring shared with this process; the event loop's reader callback (the socket polls
  readable while a frame waits) walks the ring from where it stopped, up to a batch of frames per
  wake-up, copying each frame out and handing the slot back — no system call per frame. Frames
  to send are written into a transmit ring and the whole batch goes out with one ``send`` call
  (the kernel walks the ring: a ``sendmmsg`` for packet sockets). Measured on veths it forwards
  faster than the ``recv`` path below (see benchmarks/afpacket.py and the README).
* ``recv``: ``recvfrom`` per frame, drained up to a batch per wake-up, and ``send`` per frame.
  Used when the rings cannot be set up (old kernels, some sandboxes) or when asked for
  (``PortSpec(..., "afpacket", {"iface": ..., "mode": "recv"})``).

An ETH_P_ALL socket also sees frames leaving its interface that other sockets or the kernel sent
(as ``PACKET_OUTGOING``): those are skipped, or the switch would forward output again. The port
asks the kernel not to queue them at all (``PACKET_IGNORE_OUTGOING``, Linux 4.20) and still
checks each frame's packet type (``sll_pkttype`` in the ring slot, ``addr[2]`` from recvfrom).

VLAN tags: the kernel's receive path moves an 802.1Q/802.1ad tag out of the frame into packet
metadata before packet sockets see it. The ring reports it in the slot header and the port puts
the tag back where it was, so frames leave as they came; the ``recv`` path cannot see it (its
frames arrive untagged).

On veth pairs turn the offloads off (``ethtool -K DEV tx off rx off tso off gso off gro off``) so
frames are wire-sized with complete checksums; :func:`disable_offloads` does it. A frame larger
than a ring slot (sized from the interface's MTU; it happens with GRO on) is dropped with the
reason ``truncated in ring``. Needs root (CAP_NET_RAW).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import mmap
import socket
import struct
import subprocess
import sys
import time

from e2actors.errors import ConfigError, E2Error
from e2actors.packet.packet import Packet
from e2actors.switch.ports import Gate, Ingress, Port

__all__ = ["AfPacketPort", "disable_offloads"]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT = 18
PACKET_LOSS = 14
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
TPACKET_V2 = 1
SIOCGIFMTU = 0x8921

# tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid (+4 padding) = 32
# bytes, then (receive ring) the sockaddr_ll, whose sll_pkttype is at byte 10.
_RX_HDR = struct.Struct("=IIIH")  # status, len, snaplen, mac
_TX_LEN = struct.Struct("=II")  # tp_len, tp_snaplen at offset 4 of a transmit slot
_STATUS_BYTE = 0 if sys.byteorder == "little" else 3
_VLAN = struct.Struct("=HH")  # vlan_tci, vlan_tpid at offset 24
_PKTTYPE_OFF = 32 + 10
_TX_DATA_OFF = 32  # TPACKET2_HDRLEN (52) - sizeof(sockaddr_ll) (20)
TP_STATUS_USER = 0x1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4
_ZERO4 = b"\0\0\0\0"
_SEND_REQUEST4 = struct.pack("=I", TP_STATUS_SEND_REQUEST)


def disable_offloads(iface: str, netns: str | None = None) -> None:
    """Turn off segmentation/checksum offloads so frames are what the wire would carry."""
    cmd = ["ethtool", "-K", iface, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    subprocess.run(cmd, check=False, capture_output=True)


def _mtu(s: socket.socket, iface: str) -> int:
    try:
        res = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16sI20x", iface.encode()[:15], 0))
        return struct.unpack_from("I", res, 16)[0]
    except OSError:
        return 1500


class AfPacketPort(Port):
    """Reads and writes raw frames on ``iface``. ``mode``: ``ring`` (PACKET_MMAP, falls back to
    ``recv`` when the kernel refuses the rings) or ``recv``. ``ring_frames``: slots per ring."""

    kind = "afpacket"
    is_input = True
    is_output = True
    pausable = True

    def __init__(self, name: str, iface: str, batch: int = 256, mode: str = "ring", ring_frames: int = 4096,
                 fanout: int | None = None) -> None:
        super().__init__(name)
        #: A PACKET_FANOUT group id: several sockets (switch processes) on this interface share
        #: its traffic by flow hash (the kernel's symmetric hash, after defragmentation).
        self.fanout = fanout
        self._paused = False
        self._max_frame = 65535 + 18
        if mode not in ("ring", "recv"):
            raise ConfigError(f"port {name}", "mode", f"ring or recv, not {mode!r}")
        self.iface = iface
        self.batch = batch
        self.mode = mode
        self.ring_frames = ring_frames
        self.sock: socket.socket | None = None
        self.done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mm: mmap.mmap | None = None
        self._retry = False
        self.fallback = ""  # why the rings were refused, when they were
        self.tx_retries: collections.Counter[str] = collections.Counter()

    # --- setup ----------------------------------------------------------------------------------
    async def open(self, ingress: Ingress, gate: Gate) -> None:
        try:
            # Protocol 0: no frame is queued before bind() names the interface and ETH_P_ALL.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise E2Error(f"port {self.name}: AF_PACKET on {self.iface} needs root (CAP_NET_RAW)") from exc
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # before Linux 4.20: the per-frame packet type check below does it alone
        if self.mode == "ring":
            try:
                self._setup_rings(s)
            except OSError as exc:
                self._unmap()
                self.fallback = f"{type(exc).__name__}: {exc}"
                self.mode = "recv"
                s.close()
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                try:
                    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                except OSError:
                    pass
        try:
            s.bind((self.iface, ETH_P_ALL))
        except OSError as exc:
            self._unmap()
            s.close()
            raise E2Error(f"port {self.name}: cannot bind to interface {self.iface!r}: {exc}") from None
        if self.fanout is not None:
            try:
                # (the flags' top bit makes it an unsigned int: passed as bytes)
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack(
                    "=I", (int(self.fanout) & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)))
            except OSError as exc:
                self._unmap()
                s.close()
                raise E2Error(f"port {self.name}: cannot join fanout group {self.fanout} on {self.iface!r}: "
                              f"{exc}") from None
        # The largest frame the interface sends: its MTU, an Ethernet header and one VLAN tag.
        self._max_frame = _mtu(s, self.iface) + 18
        s.setblocking(False)
        if self.mode == "recv":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # frames in flight (ring too)
        self.sock = s
        self._ingress = ingress
        self._loop = asyncio.get_running_loop()
        if not self._paused:
            self._loop.add_reader(s.fileno(), self._readable_ring if self.mode == "ring" else self._readable)

    def pause(self) -> None:
        """Stop reading: frames wait in the kernel's ring, which drops (counted) when full."""
        if not self._paused:
            self._paused = True
            if self.sock is not None and self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.sock is not None and self._loop is not None:
                self._loop.add_reader(self.sock.fileno(), self._readable_ring if self.mode == "ring" else self._readable)

    def _setup_rings(self, s: socket.socket) -> None:
        need = _TX_DATA_OFF + 64 + 18 + _mtu(s, self.iface)  # slot header, sockaddr_ll, ether + vlan
        fsize = 2048
        while fsize < need:
            fsize *= 2
        bsize = max(fsize, mmap.PAGESIZE, 1 << 16)
        per_block = bsize // fsize
        frames = max(per_block, min(self.ring_frames, (16 << 20) // fsize))  # at most 16 MB a ring
        nblocks = -(-frames // per_block)
        nframes = nblocks * per_block
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        # A frame the kernel refuses (larger than the MTU) is skipped, not left in the transmit ring
        # where it would hold back every frame after it (set before the ring is made).
        s.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
        req = struct.pack("=IIII", bsize, nblocks, fsize, nframes)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
        size = 2 * bsize * nblocks
        self._mm = mmap.mmap(s.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._fsize = fsize
        self._nframes = nframes
        self._rx_i = 0  # next receive slot to look at
        self._tx_base = bsize * nblocks
        self._tx_i = 0  # next transmit slot to fill
        self._tx_max = fsize - _TX_DATA_OFF

    def _unmap(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    # --- receive --------------------------------------------------------------------------------
    def _readable(self) -> None:
        s = self.sock
        if s is None:
            return
        name = self.name
        recv = s.recvfrom
        pkts: list[Packet] = []
        now = time.time()
        nbytes = 0
        for _ in range(self.batch):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.drops[f"recv error: {exc.strerror}"] += 1
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            nbytes += len(data)
            pkts.append(Packet(data, now, name))
        if pkts:
            self.rx_packets += len(pkts)
            self.rx_bytes += nbytes
            self._ingress(name, pkts)

    def _readable_ring(self) -> None:
        mm = self._mm
        if mm is None:
            return
        name = self.name
        fsize, nframes = self._fsize, self._nframes
        unpack = _RX_HDR.unpack_from
        i = self._rx_i
        off = i * fsize
        pkts: list[Packet] = []
        append = pkts.append
        now = time.time()
        nbytes = 0
        truncated = 0
        for _ in range(self.batch):
            status, wlen, snap, mac = unpack(mm, off)
            if not status & TP_STATUS_USER:
                break
            if mm[off + _PKTTYPE_OFF] != PACKET_OUTGOING:
                if snap < wlen:
                    truncated += 1
                else:
                    start = off + mac
                    data = mm[start:start + snap]
                    if status & TP_STATUS_VLAN_VALID:
                        data = _with_vlan(data, mm, off, status)
                    nbytes += len(data)
                    append(Packet(data, now, name))
            mm[off:off + 4] = _ZERO4  # hand the slot back to the kernel
            i += 1
            if i == nframes:
                i = 0
                off = 0
            else:
                off += fsize
        self._rx_i = i
        if truncated:
            self.drops["truncated in ring"] += truncated
        if pkts:
            self.rx_packets += len(pkts)
            self.rx_bytes += nbytes
            self._ingress(name, pkts)

    def poll(self) -> int:
        """Read what waits now, as the reader callback does; returns the frames handed over. For an
        owner that just sent frames into a veth and expects the answers already there."""
        before = self.rx_packets
        if self._paused:
            return 0
        if self.mode == "ring":
            self._readable_ring()
        else:
            self._readable()
        return self.rx_packets - before

    # --- send -----------------------------------------------------------------------------------
    def send(self, pkts: list[Packet]) -> None:
        s = self.sock
        if s is None:
            self.drops["port closed"] += len(pkts)
            return
        limit = self._max_frame
        if any(len(p.data) > limit for p in pkts):
            # (a reassembled datagram, a frame from a bigger link: the kernel would refuse it)
            big = sum(1 for p in pkts if len(p.data) > limit)
            self.drops["larger than the interface's MTU"] += big
            pkts = [p for p in pkts if len(p.data) <= limit]
        if self._mm is not None:
            self._send_ring(s, pkts)
            return
        sent = 0
        nbytes = 0
        for p in pkts:
            try:
                s.send(p.data)
                sent += 1
                nbytes += len(p.data)
            except (BlockingIOError, InterruptedError):
                self.drops["tx ring full"] += 1
            except OSError as exc:
                self.drops[f"send error: {exc.strerror}"] += 1
        self.tx_packets += sent
        self.tx_bytes += nbytes

    def _send_ring(self, s: socket.socket, pkts: list[Packet]) -> None:
        """Fill transmit slots, then one ``send`` makes the kernel send them all."""
        mm = self._mm
        assert mm is not None
        fsize, nframes, base, room = self._fsize, self._nframes, self._tx_base, self._tx_max
        sb = _STATUS_BYTE
        i = self._tx_i
        last = -1
        sent = nbytes = full = 0
        pack_len = _TX_LEN.pack_into
        for p in pkts:
            data = p.data
            n = len(data)
            if n > room:  # larger than a slot: out on its own, after what is queued
                if last >= 0:
                    self._flush(s, last)
                    last = -1
                try:
                    s.send(data)
                    sent += 1
                    nbytes += n
                except OSError as exc:
                    self.drops[f"send error: {exc.strerror}"] += 1
                continue
            off = base + i * fsize
            status = mm[off + sb]  # every transmit status bit is in the status word's low byte
            if status != TP_STATUS_AVAILABLE:
                if status != TP_STATUS_WRONG_FORMAT and last >= 0:
                    self._flush(s, last)  # the kernel is behind: push what is queued, look again
                    last = -1
                    status = mm[off + sb]
                if status == TP_STATUS_WRONG_FORMAT:
                    self.drops["tx wrong format"] += 1  # the kernel refused that slot's frame
                elif status != TP_STATUS_AVAILABLE:
                    full += 1
                    continue
            start = off + _TX_DATA_OFF
            mm[start:start + n] = data
            pack_len(mm, off + 4, n, n)
            mm[off:off + 4] = _SEND_REQUEST4
            last = off
            sent += 1
            nbytes += n
            i += 1
            if i == nframes:
                i = 0
        self._tx_i = i
        if last >= 0:
            self._flush(s, last)
        if full:
            self.drops["tx ring full"] += full
        self.tx_packets += sent
        self.tx_bytes += nbytes

    def _flush(self, s: socket.socket, last: int) -> None:
        """One system call sends every slot marked SEND_REQUEST (``last``: the newest one).

        When the kernel could not take them all (no socket buffer, the device refused one: the
        frame is then kept for the next try, not lost) the rest stay requested; a retry is
        scheduled so they do not wait for the next batch."""
        try:
            s.send(b"")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.tx_retries[exc.strerror or str(exc.errno)] += 1
        if self._mm is not None and self._mm[last + _STATUS_BYTE] == TP_STATUS_SEND_REQUEST \
                and not self._retry and self._loop is not None:
            self._retry = True
            self._loop.call_later(0.0005, self._retry_flush, last)

    def _retry_flush(self, last: int) -> None:
        self._retry = False
        if self.sock is not None and self._mm is not None:
            self._flush(self.sock, last)

    def _kernel_drops(self) -> None:
        """Frames the kernel dropped because the ring (or socket queue) was full."""
        if self.sock is None:
            return
        try:
            _packets, drops = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        if drops:  # reading the statistics resets them
            self.drops["ring full" if self.mode == "ring" else "socket queue full"] += drops

    async def close(self) -> None:
        if self.sock is not None:
            if self._loop is not None and not self._paused:
                self._loop.remove_reader(self.sock.fileno())
            self._kernel_drops()
            self._unmap()
            self.sock.close()
            self.sock = None
        self.done = True

    def stats(self) -> dict:
        self._kernel_drops()
        st = super().stats()
        st["mode"] = self.mode
        if self.fallback:
            st["ring_refused"] = self.fallback
        if self.tx_retries:
            st["tx_retries"] = dict(self.tx_retries)
        return st



def _with_vlan(data: bytes, mm: mmap.mmap, off: int, status: int) -> bytes:
    """Put back the VLAN tag the kernel took out of the frame."""
    tci, tpid = _VLAN.unpack_from(mm, off + 24)
    if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
        tpid = 0x8100
    return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
