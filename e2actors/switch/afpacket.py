"""``AfPacketPort``: a live Linux interface through an AF_PACKET socket.

The socket is non-blocking and read from the event loop's reader callback, draining up to a
batch of frames per wake-up (one wake-up for many frames under load). An ETH_P_ALL socket also
sees the frames it sent itself (as ``PACKET_OUTGOING``): those are skipped, or the switch would
forward its own output again. On veth pairs turn the offloads off (``ethtool -K DEV tx off rx off
tso off gso off gro off``) so frames are wire-sized with complete checksums; :func:`disable_offloads`
does it. Needs root (CAP_NET_RAW).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

from e2actors.errors import E2Error
from e2actors.packet.packet import Packet
from e2actors.switch.ports import Gate, Ingress, Port

__all__ = ["AfPacketPort", "disable_offloads"]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def disable_offloads(iface: str, netns: str | None = None) -> None:
    """Turn off segmentation/checksum offloads so frames are what the wire would carry."""
    cmd = ["ethtool", "-K", iface, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    subprocess.run(cmd, check=False, capture_output=True)


class AfPacketPort(Port):
    """Reads and writes raw frames on ``iface``."""

    kind = "afpacket"
    is_input = True
    is_output = True

    def __init__(self, name: str, iface: str, batch: int = 256) -> None:
        super().__init__(name)
        self.iface = iface
        self.batch = batch
        self.sock: socket.socket | None = None
        self.done = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, ingress: Ingress, gate: Gate) -> None:
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as exc:
            raise E2Error(f"port {self.name}: AF_PACKET on {self.iface} needs root (CAP_NET_RAW)") from exc
        try:
            s.bind((self.iface, 0))
        except OSError as exc:
            s.close()
            raise E2Error(f"port {self.name}: cannot bind to interface {self.iface!r}: {exc}") from None
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock = s
        self._ingress = ingress
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(s.fileno(), self._readable)

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

    def send(self, pkts: list[Packet]) -> None:
        s = self.sock
        if s is None:
            self.drops["port closed"] += len(pkts)
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

    async def close(self) -> None:
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.done = True
