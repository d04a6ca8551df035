"""Reading pcap and pcapng files, writing pcap files.

Readers yield records ``(ts, data, wirelen, linktype, interface)``: a plain tuple, cheap to build,
with ``ts`` in float seconds, ``data`` the captured bytes, ``wirelen`` the length on the wire,
``linktype`` the LINKTYPE_* of this record (pcapng files may mix interfaces of several link types)
and ``interface`` the pcapng interface index (0 for pcap). :func:`open_capture` tells the two
formats apart by their magic number; :func:`read_packets` yields parsed :class:`Packet` objects.

Faults: a file that is not a capture, or whose headers or blocks are inconsistent (an impossible
record length, a block length that does not match its trailer, an unknown interface, an unsupported
pcapng major version) raises :class:`~e2actors.errors.PcapError` naming the offset and the reason.

Lengths are never trusted further than a fixed cap, whatever the file header claims: a record's
captured length may be at most :data:`MAX_CAPLEN` (262,144 bytes, libpcap's ``MAXIMUM_SNAPLEN``;
:func:`max_caplen` gives libpcap's larger caps for D-Bus, EBHSCR and USBPcap) even when the header's
snap length says 0xFFFFFFFF, and a pcapng block at most 16 MiB; a longer one is a
:class:`~e2actors.errors.PcapError` naming the record and its offset, as tcpdump refuses it
("invalid packet capture length"). Big reads go in 1 MiB pieces, so a length that the file does not
back costs no more memory than the bytes actually present.

A truncated *last* record is not an error: a capture stopped mid-write (tcpdump killed, disk full)
is common and its complete records are worth reading. Like tcpdump, which prints a warning for it,
we stop there, emit a :class:`RuntimeWarning` and set the reader's ``truncated`` attribute to the
reason, so a caller can count it.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from typing import IO, BinaryIO

from e2actors.errors import PcapError
from e2actors.packet.packet import LINKTYPE_ETHERNET, Packet

__all__ = [
    "MAX_CAPLEN",
    "PCAPNG_MAGIC",
    "PCAP_MAGIC_NS",
    "PCAP_MAGIC_US",
    "PcapReader",
    "PcapWriter",
    "PcapngReader",
    "Record",
    "open_capture",
    "read_packets",
    "read_records",
    "max_caplen",
    "write_pcap",
]

Record = tuple  # (ts: float, data: bytes, wirelen: int, linktype: int, interface: int)

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A  # the section header block type; reads the same in both byte orders
_BOM = 0x1A2B3C4D
#: Largest captured length of one record (libpcap's MAXIMUM_SNAPLEN): a longer one is corruption.
MAX_CAPLEN = 262_144
# libpcap's max_snaplen_for_dlt: the link types whose records may be longer (D-Bus messages,
# EBHSCR, USBPcap), in bytes.
_MAX_CAPLEN_BY_LINKTYPE = {231: 128 * 1024 * 1024, 279: 8 * 1024 * 1024, 249: 1024 * 1024}
_MAX_BLOCK = 16 * 1024 * 1024  # a sanity bound on pcapng blocks: a corrupt length must not OOM us
_PIECE = 1 << 20  # reads beyond this go in pieces (see _read)


def max_caplen(linktype: int) -> int:
    """The longest captured length a record of ``linktype`` may have (as libpcap decides)."""
    return _MAX_CAPLEN_BY_LINKTYPE.get(linktype, MAX_CAPLEN)


def _read(read, n: int) -> bytes:
    """Up to ``n`` bytes. ``read(n)`` would allocate all ``n`` first, even at the end of a short
    file; past 1 MiB we read pieces, so memory follows the bytes that are really there."""
    if n <= _PIECE:
        return read(n)
    parts = []
    while n > 0:
        b = read(min(n, _PIECE))
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _open(src: str | os.PathLike | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(src, (str, bytes, os.PathLike)):
        return open(src, "rb"), True
    return src, False


def _warn_truncated(reader: PcapReader | PcapngReader, reason: str) -> None:
    reader.truncated = reason
    if reader.warn_truncated:
        warnings.warn(f"{reader.name}: truncated capture: {reason}", RuntimeWarning, stacklevel=3)


class PcapReader:
    """Iterate the records of a classic pcap file (either byte order, micro- or nanoseconds).

    Attributes after the header is read: ``linktype``, ``snaplen``, ``nanosecond`` (bool),
    ``byteorder`` ('<' or '>'), ``version`` ((major, minor)), ``truncated`` (None or the reason the
    last record was incomplete), ``count`` (records yielded so far).
    """

    def __init__(self, src: str | os.PathLike | BinaryIO) -> None:
        self._f, self._owned = _open(src)
        self.name = getattr(self._f, "name", "<pcap>")
        self.truncated: str | None = None
        #: False: a cut at the end is only recorded in :attr:`truncated` (no RuntimeWarning).
        self.warn_truncated = True
        self.count = 0
        hdr = self._f.read(24)
        if len(hdr) < 24:
            self.close()
            raise PcapError(f"{self.name}: not a pcap file: {len(hdr)}-byte file header, need 24")
        for bo in ("<", ">"):
            magic = struct.unpack(bo + "I", hdr[:4])[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            self.close()
            raise PcapError(f"{self.name}: not a pcap file: bad magic 0x{hdr[:4].hex()}")
        self.byteorder = bo
        self.nanosecond = magic == PCAP_MAGIC_NS
        major, minor, _tz, _sig, snaplen, lt = struct.unpack(bo + "HHiIII", hdr[4:24])
        if major != 2:
            self.close()
            raise PcapError(f"{self.name}: unsupported pcap version {major}.{minor}")
        self.version = (major, minor)
        self.snaplen = snaplen
        # The upper 6 bits may carry an FCS length (LINKTYPE_ETHERNET with FCS); the type is the rest.
        self.linktype = lt & 0x03FFFFFF
        self._rec = struct.Struct(bo + "IIII").unpack
        self._div = 1e9 if self.nanosecond else 1e6

    def __iter__(self) -> Iterator[Record]:
        f, rec, div, lt = self._f, self._rec, self._div, self.linktype
        # Not the header's snap length: a file may claim 0xFFFFFFFF there. libpcap accepts a record
        # longer than the snap length up to the link type's cap (and so do we).
        limit = max_caplen(lt)
        read = f.read
        offset = 24
        while True:
            hdr = read(16)
            if len(hdr) < 16:
                if hdr:
                    _warn_truncated(self, f"record {self.count + 1}: {len(hdr)}-byte header, need 16")
                return
            sec, frac, caplen, wirelen = rec(hdr)
            if caplen > limit:
                raise PcapError(
                    f"{self.name}: record {self.count + 1} at offset {offset}: captured length {caplen} "
                    f"exceeds the {limit}-byte cap (snap length {self.snaplen}; corrupt file?)"
                )
            data = _read(read, caplen) if caplen > _PIECE else read(caplen)
            if len(data) < caplen:
                _warn_truncated(self, f"record {self.count + 1}: {len(data)} of {caplen} captured bytes")
                return
            self.count += 1
            offset += 16 + caplen
            # A writer that put wirelen < caplen is wrong; the captured bytes were on the wire.
            yield (sec + frac / div, data, wirelen if wirelen >= caplen else caplen, lt, 0)

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owned:
            self._f.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Iface:
    __slots__ = ("linktype", "snaplen", "div", "shift", "offset", "name")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.div = 1_000_000  # default if_tsresol: microseconds
        self.shift = False
        self.offset = 0
        self.name = ""


class PcapngReader:
    """Iterate the packets of a pcapng file.

    Handles sections in either byte order, several interfaces (each with its link type, snap length,
    ``if_tsresol`` and ``if_tsoffset``), Enhanced, Simple and the obsolete Packet blocks; other
    blocks (name resolution, statistics, custom, decryption secrets, ...) are skipped.
    ``interfaces`` lists the current section's interfaces as ``(linktype, snaplen, name)``.
    A section whose major version is not 1 raises :class:`PcapError`, as libpcap and Wireshark do,
    unless ``skip_unknown_versions`` is true, in which case that whole section is skipped.
    """

    def __init__(self, src: str | os.PathLike | BinaryIO, skip_unknown_versions: bool = False) -> None:
        self._f, self._owned = _open(src)
        self.name = getattr(self._f, "name", "<pcapng>")
        self.truncated: str | None = None
        #: False: a cut at the end is only recorded in :attr:`truncated` (no RuntimeWarning).
        self.warn_truncated = True
        self.count = 0
        self.skip_unknown_versions = skip_unknown_versions
        self._ifaces: list[_Iface] = []
        self._bo = "<"
        self._pos = 0
        self._block = 0  # offset of the block being decoded
        head = self._f.read(12)
        if len(head) < 4 or struct.unpack("<I", head[:4])[0] != PCAPNG_MAGIC:
            self.close()
            raise PcapError(f"{self.name}: not a pcapng file: bad magic 0x{head[:4].hex()}")
        if len(head) < 12:
            self.close()
            raise PcapError(f"{self.name}: truncated pcapng section header ({len(head)} bytes)")
        self._pending = head  # the first SHB is parsed by the iterator like any other

    @property
    def interfaces(self) -> list[tuple[int, int, str]]:
        return [(i.linktype, i.snaplen, i.name) for i in self._ifaces]

    @property
    def linktype(self) -> int:
        """The first interface's link type (-1 before any interface is known)."""
        return self._ifaces[0].linktype if self._ifaces else -1

    def _fail(self, msg: str) -> PcapError:
        """An error at the block being read (``_read_block``) or decoded (the iterator)."""
        return PcapError(f"{self.name}: offset {self._block}: {msg}")

    def _read_block(self) -> tuple[int, bytes] | None:
        """Next block as (type, body without type/lengths), None at a clean end of file."""
        f = self._f
        head = self._pending if self._pending is not None else f.read(8)
        self._pending = None
        self._block = self._pos
        if not head:
            return None
        if len(head) < 8:
            _warn_truncated(self, f"offset {self._pos}: {len(head)}-byte block header")
            return None
        if struct.unpack("<I", head[:4])[0] == PCAPNG_MAGIC:
            # A section header: its byte-order magic decides how to read everything, its own length too.
            if len(head) < 12:
                head += f.read(12 - len(head))
            if len(head) < 12:
                _warn_truncated(self, f"offset {self._pos}: truncated section header")
                return None
            bom = head[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                self._bo = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                self._bo = ">"
            else:
                raise self._fail(f"bad byte-order magic 0x{bom.hex()} in section header")
            extra = head[8:]
            head = head[:8]
        else:
            extra = b""
        btype, blen = struct.unpack(self._bo + "II", head)
        if blen < 12 or blen % 4:
            raise self._fail(f"bad block length {blen} for block type 0x{btype:08x}")
        if blen > _MAX_BLOCK:
            raise self._fail(f"block length {blen} exceeds {_MAX_BLOCK} (corrupt file?)")
        rest = extra + _read(f.read, blen - 8 - len(extra))
        if len(rest) < blen - 8:
            _warn_truncated(self, f"offset {self._pos}: block of {blen} bytes, only {len(rest) + 8} present")
            return None
        trailer = struct.unpack(self._bo + "I", rest[-4:])[0]
        if trailer != blen:
            raise self._fail(f"block length {blen} does not match its trailer {trailer}")
        self._pos += blen
        return btype, rest[:-4]

    def _options(self, body: bytes, start: int) -> Iterator[tuple[int, bytes]]:
        bo = self._bo
        i, n = start, len(body)
        while i + 4 <= n:
            code, olen = struct.unpack_from(bo + "HH", body, i)
            if code == 0:
                return
            i += 4
            if i + olen > n:
                raise self._fail(f"option {code} of {olen} bytes runs past its block")
            yield code, body[i : i + olen]
            i += (olen + 3) & ~3

    def _section(self, body: bytes) -> bool:
        """Start a new section; False when it must be skipped (unknown version, skipping allowed)."""
        major, minor = struct.unpack_from(self._bo + "HH", body, 4)
        self._ifaces = []
        if major != 1:
            if self.skip_unknown_versions:
                return False
            raise self._fail(f"unsupported pcapng version {major}.{minor} (section header)")
        return True

    def _iface(self, body: bytes) -> None:
        if len(body) < 8:
            raise self._fail("interface description block too short")
        lt, _res, snap = struct.unpack_from(self._bo + "HHI", body, 0)
        ifc = _Iface(lt, snap)
        for code, val in self._options(body, 8):
            if code == 2:  # if_name
                ifc.name = val.rstrip(b"\0").decode("utf-8", "replace")
            elif code == 9 and val:  # if_tsresol: 10^-v, or 2^-v when the top bit is set
                v = val[0]
                if v & 0x80:
                    ifc.div, ifc.shift = 1 << (v & 0x7F), True
                else:
                    if v > 19:
                        raise self._fail(f"if_tsresol 10^-{v} out of range")
                    ifc.div = 10**v
            elif code == 14 and len(val) == 8:  # if_tsoffset: seconds added to every timestamp
                ifc.offset = struct.unpack(self._bo + "q", val)[0]
        self._ifaces.append(ifc)

    def __iter__(self) -> Iterator[Record]:
        bo = self._bo
        skipping = False
        while True:
            blk = self._read_block()
            if blk is None:
                return
            btype, body = blk
            bo = self._bo
            if btype == PCAPNG_MAGIC:
                if len(body) < 12:
                    raise self._fail("section header block too short")
                skipping = not self._section(body)
                continue
            if skipping:
                continue
            if btype == 1:
                self._iface(body)
            elif btype == 6 or btype == 2:  # enhanced packet / obsolete packet block
                if len(body) < 20:
                    raise self._fail(f"packet block too short ({len(body)} bytes)")
                if btype == 6:
                    ifid, hi, lo, caplen, wirelen = struct.unpack_from(bo + "IIIII", body, 0)
                else:
                    ifid, _drops, hi, lo, caplen, wirelen = struct.unpack_from(bo + "HHIIII", body, 0)
                if ifid >= len(self._ifaces):
                    raise self._fail(f"packet block for unknown interface {ifid}")
                if 20 + caplen > len(body):
                    raise self._fail(f"captured length {caplen} runs past its block")
                ifc = self._ifaces[ifid]
                if caplen > max_caplen(ifc.linktype):
                    raise self._fail(f"captured length {caplen} exceeds the {max_caplen(ifc.linktype)}-byte cap "
                                     "(corrupt file?)")
                t = (hi << 32) | lo
                ts = ifc.offset + t / ifc.div
                self.count += 1
                yield (ts, body[20 : 20 + caplen], max(wirelen, caplen), ifc.linktype, ifid)
            elif btype == 3:  # simple packet block: interface 0, no timestamp
                if not self._ifaces:
                    raise self._fail("simple packet block before any interface")
                if len(body) < 4:
                    raise self._fail("simple packet block too short")
                wirelen = struct.unpack_from(bo + "I", body, 0)[0]
                ifc = self._ifaces[0]
                caplen = min(wirelen, len(body) - 4)
                if ifc.snaplen:
                    caplen = min(caplen, ifc.snaplen)
                self.count += 1
                yield (0.0, body[4 : 4 + caplen], wirelen, ifc.linktype, 0)
            # anything else: name resolution, statistics, custom, secrets... not packets; skip.

    def close(self) -> None:
        """Close the file if this reader opened it."""
        if self._owned:
            self._f.close()

    def __enter__(self) -> PcapngReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_capture(src: str | os.PathLike | BinaryIO) -> PcapReader | PcapngReader:
    """Open a pcap or pcapng file, whichever it is (decided by the magic number)."""
    f, owned = _open(src)
    try:
        if f.seekable():
            magic = f.read(4)
            f.seek(-len(magic), 1)
        else:  # a pipe: look at the magic without consuming it
            if not hasattr(f, "peek"):
                f = io.BufferedReader(f)  # type: ignore[arg-type]
            magic = f.peek(4)[:4]  # type: ignore[attr-defined]
    except Exception:
        if owned:
            f.close()
        raise
    if len(magic) == 4 and struct.unpack("<I", magic)[0] == PCAPNG_MAGIC:
        r: PcapReader | PcapngReader = PcapngReader(f)
    else:
        r = PcapReader(f)
    r._owned = owned
    return r


def read_records(src: str | os.PathLike | BinaryIO) -> Iterator[Record]:
    """Yield ``(ts, data, wirelen, linktype, interface)`` of every record of a pcap or pcapng file."""
    with open_capture(src) as r:
        yield from r


def read_packets(src: str | os.PathLike | BinaryIO, port: str = "") -> Iterator[Packet]:
    """Yield a parsed :class:`Packet` for every record of a pcap or pcapng file."""
    with open_capture(src) as r:
        for ts, data, wirelen, lt, _if in r:
            yield Packet(data, ts, port, wirelen, lt)


class PcapWriter:
    """Write a classic pcap file (little-endian, version 2.4), readable by tcpdump and Wireshark.

    ``nanosecond=True`` writes the nanosecond magic (0xa1b23c4d). Use as a context manager::

        with PcapWriter("out.pcap") as w:
            w.write(frame, ts=1.5)          # or w.write_packet(pkt)
    """

    def __init__(
        self,
        dst: str | os.PathLike | IO[bytes],
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 262144,
        nanosecond: bool = False,
        append: bool = False,
    ) -> None:
        header = True
        if isinstance(dst, (str, bytes, os.PathLike)):
            # append: go on after the records of an existing file (written by this class with the
            # same settings); a new or empty file gets its header.
            if append and os.path.exists(dst) and os.path.getsize(dst) >= 24:
                header = False
                self._f: IO[bytes] = open(dst, "ab")
            else:
                self._f = open(dst, "wb")
            self._owned = True
        else:
            self._f, self._owned = dst, False
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.count = 0
        self._mul = 1_000_000_000 if nanosecond else 1_000_000
        self._rec = struct.Struct("<IIII").pack
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        if header:
            self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes, ts: float = 0.0, wirelen: int | None = None) -> None:
        """Append one record; frames longer than the snap length are cut (wirelen keeps the truth)."""
        if ts < 0:
            raise ValueError(f"pcap cannot hold a negative timestamp ({ts})")
        mul = self._mul
        # Round to the file's resolution in integers so 1.000001 does not become 1.000000.
        t = round(ts * mul)
        sec, frac = divmod(t, mul)
        cap = data if len(data) <= self.snaplen else data[: self.snaplen]
        orig = len(data) if wirelen is None else max(wirelen, len(data))
        self._f.write(self._rec(sec, frac, len(cap), orig))
        self._f.write(cap)
        self.count += 1

    def write_packet(self, pkt: Packet) -> None:
        """Append a :class:`Packet` (its data, timestamp and wire length)."""
        self.write(pkt.data, pkt.ts, pkt.wirelen)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        """Flush, and close the file if this writer opened it."""
        self._f.flush()
        if self._owned:
            self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(
    dst: str | os.PathLike | IO[bytes],
    packets: Iterable[Packet | tuple[float, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
) -> int:
    """Write packets (or ``(ts, data)`` pairs) to a pcap file; returns how many were written."""
    with PcapWriter(dst, linktype=linktype, nanosecond=nanosecond) as w:
        for p in packets:
            if isinstance(p, Packet):
                w.write_packet(p)
            else:
                w.write(p[1], p[0])
        return w.count
