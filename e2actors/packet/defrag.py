"""IPv4 and IPv6 reassembly of fragmented datagrams, bounded and timed out. Pure code.

:class:`Defragmenter` takes packets in arrival order and hands back whole datagrams::

    d = Defragmenter()
    for pkt in packets:
        out = d.feed(pkt)            # None: a fragment was held (or dropped, see take_dropped)
        if out is None:
            continue
        inspect(out)                 # `pkt` itself, or a new Packet for the reassembled datagram
        originals = d.last_fragments # the packets `out` stands for, in fragment-offset order
    for frag, reason in d.take_dropped():   # fragments given up on: account for them
        ...
    d.expire(now)                    # timeouts; call regularly (e.g. once per batch)

What comes back:

- a packet that is not an IP fragment (and any malformed packet, any fragment cut by the capture's
  snap length, which cannot be reassembled) comes back **unchanged**: ``feed`` returns it, and
  :attr:`~Defragmenter.last_fragments` is ``[pkt]``;
- a fragment is held; when it completes its datagram, ``feed`` returns a **new** :class:`Packet`
  whose frame is the first fragment's link-layer header, the first fragment's IP header (IPv4: with
  its options, total length set, fragment fields cleared and the header checksum recomputed; IPv6:
  the unfragmentable part, the fragment header removed, payload length set) and the reassembled
  payload. It parses like any unfragmented packet (ports, payload, ``frag == 0``). Its metadata:
  ``ts`` and ``port`` of the fragment that completed it (when the datagram became whole, where the
  Linux stack delivers it and tshark shows it), ``linktype`` of the first fragment, ``wirelen`` its
  length, and ``meta`` a new dict merging every fragment's ``meta``, where a key set on several
  fragments keeps the value of the lowest offset (the first fragment's word wins).
  :attr:`~Defragmenter.last_fragments` lists the fragments it was made of, by offset, so a pipelet
  can inspect the datagram but forward (or drop) the original packets;
- a fragment that is given up on (a whole datagram dropped, a duplicate, a timeout...) is never
  returned by ``feed``: it is listed once in :meth:`~Defragmenter.take_dropped` with a reason
  (``"defrag overlap"``, ``"defrag timeout"``...), so a pipelet can ``drop(pkt, reason)`` it and
  every packet stays accounted for.

The rules are those of current Linux kernels (``net/ipv4/ip_fragment.c``, ``net/ipv6/reassembly.c``,
``inet_frag_queue_insert`` in ``inet_fragment.c``), for IPv4 and IPv6 alike, and
``tests/test_fragments_netns.py`` checks them against the kernel of the machine running the tests
(crafted fragments sent into a network namespace: what its UDP socket receives must be what we
reassemble, byte for byte):

- **Key.** IPv4: source, destination, identification, protocol (and VLAN tags); IPv6: source,
  destination, the fragment header's identification (and VLAN tags).
- **Overlaps (RFC 5722 and its erratum 3089, which Linux applies to IPv4 too).** A fragment that
  overlaps data already held drops the *whole* datagram (every fragment held, and it): reason
  ``"defrag overlap"``. A fragment lying entirely within data already held is a duplicate: it is
  dropped alone (``"defrag duplicate"``; its bytes are not compared: the first copy wins) and the
  datagram carries on. "Data already held" is a *run* as Linux keeps it: fragments appended one
  after the other at the end of the datagram form one run, a fragment that arrives before the end
  starts a run of its own; a fragment spanning two runs is an overlap even when the runs touch
  (Linux behaves so: the test covers it).
- **Lengths.** The last fragment (no MF/M flag) fixes the datagram's length: a second last fragment
  with another end, or one ending before data already held, or a fragment beyond the known end,
  drops the datagram (``"defrag bad length"``). A fragment with MF set whose length is not a
  multiple of 8: IPv4 cuts it down to the multiple of 8 (Linux does), IPv6 drops that fragment alone
  (``"defrag unaligned"``; RFC 8200 asks for a parameter problem). An empty fragment drops the
  datagram (``"defrag empty fragment"``). A fragment reaching past 65,535 bytes of payload (the
  ping of death) drops its datagram (IPv4) or itself alone (IPv6, a parameter problem in RFC 8200),
  reason ``"defrag too big"``; so does a reassembled IPv4 datagram longer than 65,535 bytes with
  its header.
- **Time.** A datagram not complete ``timeout`` seconds (IPv4, Linux's ``ipfrag_time`` 30 s) or
  ``timeout6`` seconds (IPv6, 60 s) after its first fragment arrived is dropped (``"defrag
  timeout"``); the timer does not restart when more fragments come. Time is what the caller says
  (``now`` defaults to the packet's timestamp); :meth:`~Defragmenter.expire` applies it.
- **Bounds.** At most ``max_datagrams`` incomplete datagrams, ``max_bytes`` held fragment bytes and
  ``max_fragments`` fragments per datagram. Past the first two the *oldest* incomplete datagrams are
  dropped to make room (``"defrag bound"``), so a flood of junk fragments cannot stall new traffic
  for a whole timeout; Linux instead refuses every new fragment while its memory is over
  ``ipfrag_high_thresh`` (4 MiB, the default of ``max_bytes`` here). A datagram with more than
  ``max_fragments`` fragments is dropped (``"defrag too many fragments"``); Linux has no such
  count, only its memory bound.
- **Not done:** Linux's ``ipfrag_max_dist`` (an IPv4 queue re-initialised when 64 other fragments
  from its source arrived in between) and the ECN consistency check; the IPv6 rule that a first
  fragment must hold the whole header chain is left to the parser (such a fragment is malformed
  and comes back unchanged).
"""

from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from e2actors.packet.checksum import internet_checksum
from e2actors.packet.packet import Packet

__all__ = ["Defragmenter"]

_IP6_EXT = frozenset((0, 43, 60, 51))  # extension headers that may precede the fragment header
_MAX_LEN = 65535
_STATS = ("fragments", "reassembled", "passed", "dropped", "duplicates", "overlaps", "bad_length",
          "unaligned", "empty", "too_big", "too_many", "timeouts", "evicted", "truncated")


class _Datagram:
    """Fragments of one datagram being reassembled."""

    __slots__ = ("key", "version", "created", "deadline", "frags", "runs", "tail", "length", "last_in",
                 "first", "bytes")

    def __init__(self, key: Hashable, version: int, now: float, timeout: float) -> None:
        self.key = key
        self.version = version
        self.created = now
        self.deadline = now + timeout
        self.frags: list[tuple[int, bytes, Packet]] = []  # (offset, data, packet), by offset
        self.runs: list[list[int]] = []  # [start, end] of Linux's fragment runs, by start
        self.tail = 0  # end of the fragment furthest right (Linux's fragments_tail)
        self.length = 0  # the datagram's payload length as known so far (Linux's q.len)
        self.last_in = False  # the fragment without MF/M has arrived: `length` is final
        self.first: Packet | None = None  # the fragment at offset 0
        self.bytes = 0  # fragment data held


class Defragmenter:
    """Reassembles IPv4 and IPv6 fragments (see the module docstring for the API and the rules).

    ``stats`` counts: ``fragments`` taken, ``reassembled`` datagrams, ``passed`` packets returned
    unchanged, ``dropped`` fragments given up on (by any reason below), ``duplicates``, ``overlaps``,
    ``bad_length``, ``unaligned``, ``empty``, ``too_big``, ``too_many``, ``timeouts`` and
    ``evicted`` (datagrams dropped for a bound), ``truncated`` (fragments cut by the snap length,
    returned unchanged). :attr:`held_bytes` and ``len(d)`` tell what is held now.
    """

    __slots__ = ("max_datagrams", "max_bytes", "max_fragments", "timeout", "timeout6", "stats",
                 "held_bytes", "_q4", "_q6", "_dropped", "_last", "_last_frags")

    def __init__(self, max_datagrams: int = 4096, max_bytes: int = 4 * 1024 * 1024, max_fragments: int = 256,
                 timeout: float = 30.0, timeout6: float = 60.0) -> None:
        if max_datagrams < 1 or max_bytes < 1 or max_fragments < 1:
            raise ValueError("max_datagrams, max_bytes and max_fragments must be >= 1")
        if timeout <= 0 or timeout6 <= 0:
            raise ValueError("timeout and timeout6 must be > 0")
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.timeout = timeout
        self.timeout6 = timeout6
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.held_bytes = 0
        # Incomplete datagrams per IP version, oldest first: one timeout per version, so deadlines
        # follow insertion order and timeouts and bounds only ever look at the fronts.
        self._q4: OrderedDict[Hashable, _Datagram] = OrderedDict()
        self._q6: OrderedDict[Hashable, _Datagram] = OrderedDict()
        self._dropped: list[tuple[Packet, str]] = []
        self._last: Packet | None = None
        self._last_frags: list[Packet] | None = None

    def __len__(self) -> int:
        """Incomplete datagrams held."""
        return len(self._q4) + len(self._q6)

    @property
    def held_fragments(self) -> int:
        """Fragments (packets) held in incomplete datagrams."""
        return sum(len(d.frags) for q in (self._q4, self._q6) for d in q.values())

    @property
    def last_fragments(self) -> list[Packet]:
        """The packets the last non-None result of :meth:`feed` stands for: ``[pkt]`` when it came
        back unchanged, the fragments it was reassembled from (by offset) otherwise."""
        if self._last_frags is not None:
            return self._last_frags
        return [self._last] if self._last is not None else []

    def take_dropped(self) -> list[tuple[Packet, str]]:
        """The fragments given up on since the last call, with their reasons (each listed once)."""
        out = self._dropped
        self._dropped = []
        return out

    # --- input -----------------------------------------------------------------------------------
    def feed(self, pkt: Packet, now: float | None = None) -> Packet | None:
        """Take one packet; returns it (not a fragment), None (held or dropped) or the datagram it
        completed. ``now`` defaults to ``pkt.ts``."""
        if not pkt.frag or pkt.reason is not None or pkt.proto < 0:
            self.stats["passed"] += 1
            self._last = pkt
            self._last_frags = None
            return pkt
        return self._fragment(pkt, pkt.ts if now is None else now)

    def _pass(self, pkt: Packet) -> Packet:
        self.stats["passed"] += 1
        self._last = pkt
        self._last_frags = None
        return pkt

    def _fragment(self, pkt: Packet, now: float) -> Packet | None:
        st = self.stats
        data = pkt.data
        l3 = pkt.l3_offset
        if pkt.wirelen > len(data):  # the capture kept only part of it: nothing to reassemble with
            st["truncated"] += 1
            return self._pass(pkt)
        if self._q4 or self._q6:
            self.expire(now)
        if pkt.ethertype == 0x0800:
            start = l3 + (data[l3] & 15) * 4
            end = l3 + (data[l3 + 2] << 8 | data[l3 + 3])
            key: Hashable = (4, pkt.src, pkt.dst, data[l3 + 4] << 8 | data[l3 + 5], pkt.proto, pkt.vlans)
            q = self._q4
        else:
            fh = _frag_header(data, l3)[0]
            if fh < 0:  # the parser found a fragment header, so this cannot happen; stay safe
                return self._pass(pkt)
            start = fh + 8
            end = l3 + 40 + (data[l3 + 4] << 8 | data[l3 + 5])
            key = (6, pkt.src, pkt.dst, data[fh + 4: fh + 8], pkt.vlans)
            q = self._q6
        st["fragments"] += 1
        offset = pkt.frag & ~7
        more = pkt.frag & 1
        flen = end - start
        fend = offset + flen
        dg = q.get(key)
        if dg is None:
            dg = _Datagram(key, key[0], now, self.timeout if q is self._q4 else self.timeout6)
            q[key] = dg
            while len(self._q4) + len(self._q6) > self.max_datagrams:
                st["evicted"] += 1
                self._discard(self._oldest(dg), "defrag bound")  # type: ignore[arg-type]
        # Linux's checks, in its order (ip_frag_queue / ip6_frag_queue).
        if fend > _MAX_LEN:  # IPv6 drops this fragment alone (a parameter problem), IPv4 all
            if dg.version == 6:
                st["too_big"] += 1
                return self._drop_one(dg, pkt, "defrag too big")
            return self._kill(dg, pkt, "defrag too big", "too_big")
        if not more:
            if fend < dg.length or (dg.last_in and fend != dg.length):
                return self._kill(dg, pkt, "defrag bad length", "bad_length")
            dg.last_in = True
            dg.length = fend
        else:
            if fend & 7:
                if dg.version == 6:
                    st["unaligned"] += 1
                    return self._drop_one(dg, pkt, "defrag unaligned")
                fend &= ~7  # IPv4: the odd tail is cut off
                flen = fend - offset
            if fend > dg.length:
                if dg.last_in:
                    return self._kill(dg, pkt, "defrag bad length", "bad_length")
                dg.length = fend
        if fend <= offset:
            return self._kill(dg, pkt, "defrag empty fragment", "empty")
        # Linux's inet_frag_queue_insert: runs, duplicates and overlaps.
        runs = dg.runs
        if not runs:
            runs.append([offset, fend])
            dg.tail = fend
        elif dg.tail < fend:  # the common case: the fragment goes to the end
            if offset < dg.tail:
                return self._kill(dg, pkt, "defrag overlap", "overlaps")
            if offset == dg.tail:
                runs[-1][1] = fend
            else:
                runs.append([offset, fend])
            dg.tail = fend
        else:
            i = bisect.bisect_right(runs, offset, key=_run_start) - 1
            hit = None
            if i >= 0 and runs[i][1] > offset:
                hit = runs[i]
            elif i + 1 < len(runs) and runs[i + 1][0] < fend:
                hit = runs[i + 1]
            if hit is not None:
                if hit[0] <= offset and fend <= hit[1]:
                    st["duplicates"] += 1
                    return self._drop_one(dg, pkt, "defrag duplicate")
                return self._kill(dg, pkt, "defrag overlap", "overlaps")
            runs.insert(i + 1, [offset, fend])
        if len(dg.frags) >= self.max_fragments:
            return self._kill(dg, pkt, "defrag too many fragments", "too_many")
        bisect.insort(dg.frags, (offset, data[start: start + flen], pkt), key=_frag_offset)
        dg.bytes += flen
        self.held_bytes += flen
        if offset == 0:
            dg.first = pkt
        while self.held_bytes > self.max_bytes:
            st["evicted"] += 1
            victim = self._oldest(dg)
            self._discard(victim if victim is not None else dg, "defrag bound")
            if victim is None:
                return None  # it alone is over the bound
        if dg.last_in and dg.first is not None and _complete(dg):
            return self._reassemble(dg, pkt)
        return None

    # --- time ------------------------------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Drop the datagrams whose time is up (their fragments go to :meth:`take_dropped`);
        returns how many."""
        n = 0
        for q in (self._q4, self._q6):
            while q:
                dg = next(iter(q.values()))
                if dg.deadline > now:
                    break
                self._discard(dg, "defrag timeout")
                self.stats["timeouts"] += 1
                n += 1
        return n

    def flush(self) -> int:
        """Give up on every incomplete datagram (the input is over); returns how many."""
        n = 0
        for q in (self._q4, self._q6):
            for dg in list(q.values()):
                self._discard(dg, "defrag flush")
                n += 1
        return n

    # --- internals -------------------------------------------------------------------------------
    def _oldest(self, keep: _Datagram) -> _Datagram | None:
        """The datagram that arrived first, other than ``keep`` (None if there is none)."""
        best = None
        for q in (self._q4, self._q6):
            for dg in q.values():  # at most two steps: the front, or the one after `keep`
                if dg is not keep:
                    if best is None or dg.created < best.created:
                        best = dg
                    break
        return best

    def _drop_one(self, dg: _Datagram, pkt: Packet, reason: str) -> None:
        self.stats["dropped"] += 1
        self._dropped.append((pkt, reason))
        if not dg.frags:  # a datagram that never held anything leaves no trace
            self._queue(dg).pop(dg.key, None)
        return None

    def _kill(self, dg: _Datagram, pkt: Packet, reason: str, counter: str) -> None:
        """Drop the whole datagram and the fragment that condemned it."""
        self.stats[counter] += 1
        self._discard(dg, reason)
        self.stats["dropped"] += 1
        self._dropped.append((pkt, reason))
        return None

    def _queue(self, dg: _Datagram) -> OrderedDict[Hashable, _Datagram]:
        return self._q4 if dg.version == 4 else self._q6

    def _discard(self, dg: _Datagram, reason: str) -> None:
        if self._queue(dg).pop(dg.key, None) is None:
            return
        self.held_bytes -= dg.bytes
        self.stats["dropped"] += len(dg.frags)
        self._dropped.extend((p, reason) for _o, _d, p in dg.frags)
        dg.frags = []

    def _reassemble(self, dg: _Datagram, last: Packet) -> Packet | None:
        first = dg.first
        assert first is not None
        del self._queue(dg)[dg.key]
        self.held_bytes -= dg.bytes
        fdata = first.data
        l3 = first.l3_offset
        payload = b"".join([d for _o, d, _p in dg.frags])
        if dg.version == 4:
            ihl = (fdata[l3] & 15) * 4
            hdr = bytearray(fdata[l3: l3 + ihl])
            size = ihl + len(payload)
            hdr[2:4] = struct.pack("!H", size)
            hdr[6:8] = b"\0\0"  # flags and fragment offset: a whole datagram
            hdr[10:12] = b"\0\0"
            hdr[10:12] = struct.pack("!H", internet_checksum(bytes(hdr)))
        else:
            fh, nh_at = _frag_header(fdata, l3)
            hdr = bytearray(fdata[l3:fh])  # the unfragmentable part, without the fragment header
            hdr[nh_at - l3] = fdata[fh]  # the fragment header's next header takes its place
            size = len(hdr) - 40 + len(payload)
            hdr[4:6] = struct.pack("!H", size & 0xFFFF)
        frags = [p for _o, _d, p in dg.frags]
        if size > _MAX_LEN:  # IPv4 options or IPv6 extension headers pushed it over (ping of death)
            self.stats["too_big"] += 1
            self.stats["dropped"] += len(frags)
            self._dropped.extend((p, "defrag too big") for p in frags)
            return None
        meta: dict[str, Any] | None = None
        for p in reversed(frags):  # highest offset first, so the first fragment's values win
            if p.has_meta:
                if meta is None:
                    meta = {}
                meta.update(p.meta)
        frame = fdata[:l3] + bytes(hdr) + payload
        out = Packet(frame, last.ts, last.port, len(frame), first.linktype, meta)
        self.stats["reassembled"] += 1
        self._last = out
        self._last_frags = frags
        return out


def _complete(dg: _Datagram) -> bool:
    """All bytes from 0 to the known length are held (the runs touch end to start)."""
    runs = dg.runs
    if runs[0][0] != 0 or runs[-1][1] != dg.length:
        return False
    for i in range(1, len(runs)):
        if runs[i][0] != runs[i - 1][1]:
            return False
    return True


def _frag_header(data: bytes, l3: int) -> tuple[int, int]:
    """``(offset of the IPv6 fragment header, offset of the next-header byte that names it)``,
    walking the extension headers before it; ``(-1, -1)`` when there is none."""
    at = l3 + 6
    nh = data[at]
    off = l3 + 40
    n = len(data)
    while off + 8 <= n:
        if nh == 44:
            return off, at
        if nh not in _IP6_EXT:
            break
        at = off  # an extension header starts with its next-header byte
        hlen = (data[off + 1] + 2) * 4 if nh == 51 else (data[off + 1] + 1) * 8
        nh = data[off]
        off += hlen
    return -1, -1


def _run_start(run: list[int]) -> int:
    return run[0]


def _frag_offset(f: tuple[int, bytes, Packet]) -> int:
    return f[0]
