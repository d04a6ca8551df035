"""TEMPORARY minimal classic-pcap reader/writer for the ``e2actors filter`` command.

Written while :mod:`e2actors.packet.pcap` is being built in parallel; on merge the filter CLI and
tests switch to that module and this file goes away. Classic pcap only (no pcapng): both byte
orders, microsecond and nanosecond timestamps.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from e2actors.errors import PcapError

__all__ = ["MiniPacket", "read_pcap", "write_pcap", "PcapHeader"]

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D


@dataclass(slots=True)
class MiniPacket:
    """One record: ``data`` (captured bytes), ``wirelen`` (original length), timestamp."""

    data: bytes
    wirelen: int
    ts_sec: int = 0
    ts_frac: int = 0  # microseconds, or nanoseconds when the file is nanosecond


@dataclass(slots=True)
class PcapHeader:
    endian: str  # "<" or ">"
    nanosecond: bool
    snaplen: int
    linktype: int


def _header(f: BinaryIO) -> PcapHeader:
    raw = f.read(24)
    if len(raw) < 24:
        raise PcapError("not a pcap file: too short for a header")
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", raw[:4])[0]
        if magic in (_MAGIC_US, _MAGIC_NS):
            _maj, _min, _tz, _sig, snaplen, linktype = struct.unpack(endian + "HHiIII", raw[4:])
            return PcapHeader(endian, magic == _MAGIC_NS, snaplen, linktype & 0x0FFFFFFF)
    raise PcapError(f"not a classic pcap file (magic {raw[:4].hex()}); pcapng is not supported here")


def read_pcap(path: str) -> tuple[PcapHeader, Iterator[MiniPacket]]:
    """Open ``path``; return its header and an iterator over its records."""
    f = open(path, "rb")
    try:
        hdr = _header(f)
    except BaseException:
        f.close()
        raise

    def records() -> Iterator[MiniPacket]:
        rec = struct.Struct(hdr.endian + "IIII")
        with f:
            while True:
                raw = f.read(16)
                if not raw:
                    return
                if len(raw) < 16:
                    raise PcapError("truncated record header")
                sec, frac, caplen, wirelen = rec.unpack(raw)
                data = f.read(caplen)
                if len(data) < caplen:
                    raise PcapError("truncated record data")
                yield MiniPacket(data, wirelen, sec, frac)

    return hdr, records()


def write_pcap(path: str, packets: Iterable[MiniPacket], linktype: int = 1,
               snaplen: int = 262144, nanosecond: bool = False) -> int:
    """Write ``packets`` to ``path`` (little-endian classic pcap); return how many."""
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", _MAGIC_NS if nanosecond else _MAGIC_US, 2, 4, 0, 0,
                            snaplen, linktype))
        for p in packets:
            f.write(struct.pack("<IIII", p.ts_sec, p.ts_frac, len(p.data), p.wirelen))
            f.write(p.data)
            n += 1
    return n
