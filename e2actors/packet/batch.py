"""A batch of packets: the unit that moves between actors.

Moving packets one by one through mailboxes would pay the per-message cost (a queue operation, a
task wake-up, metrics) for every packet; like BESS and DPDK, the dataplane moves them in batches of
up to :data:`MAX_BATCH` and amortizes that cost. A :class:`Batch` is a plain list wrapper with slots:
no copying, no validation in the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from e2actors.packet.packet import Packet

__all__ = ["DEFAULT_BATCH", "MAX_BATCH", "Batch", "batched"]

DEFAULT_BATCH = 32  # BESS's default; big enough to amortize per-message costs, small for latency
MAX_BATCH = 256


class Batch:
    """Up to :data:`MAX_BATCH` packets travelling together (the list is owned, not copied)."""

    __slots__ = ("packets",)

    def __init__(self, packets: list[Packet] | None = None) -> None:
        self.packets: list[Packet] = [] if packets is None else packets

    def __len__(self) -> int:
        return len(self.packets)

    def __iter__(self) -> Iterator[Packet]:
        return iter(self.packets)

    def __getitem__(self, i: int) -> Packet:
        return self.packets[i]

    def __bool__(self) -> bool:
        return bool(self.packets)

    def __repr__(self) -> str:
        return f"<Batch {len(self.packets)} packets, {self.nbytes} bytes>"

    def append(self, pkt: Packet) -> None:
        """Add one packet (the caller keeps batches within :data:`MAX_BATCH`)."""
        self.packets.append(pkt)

    @property
    def full(self) -> bool:
        """True when the batch holds :data:`MAX_BATCH` packets or more."""
        return len(self.packets) >= MAX_BATCH

    @property
    def nbytes(self) -> int:
        """Captured bytes in the batch (for byte counters)."""
        return sum(len(p.data) for p in self.packets)

    @property
    def wire_bytes(self) -> int:
        """Bytes on the wire (for rate limiting: a snap-length cut does not shrink a packet)."""
        return sum(p.wirelen for p in self.packets)

    def split(self, pred) -> tuple[Batch, Batch]:
        """Two batches: the packets for which ``pred(packet)`` is true, and the others (order kept)."""
        yes: list[Packet] = []
        no: list[Packet] = []
        for p in self.packets:
            (yes if pred(p) else no).append(p)
        return Batch(yes), Batch(no)

    def good(self) -> tuple[Batch, int]:
        """The well-formed packets and the number of malformed ones dropped (the switch's counter)."""
        ok = [p for p in self.packets if p.reason is None]
        return Batch(ok), len(self.packets) - len(ok)


def batched(packets: Iterable[Packet], size: int = DEFAULT_BATCH) -> Iterator[Batch]:
    """Group a packet stream into batches of ``size`` (the last one may be smaller)."""
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"batch size must be within 1..{MAX_BATCH}, got {size}")
    cur: list[Packet] = []
    for p in packets:
        cur.append(p)
        if len(cur) == size:
            yield Batch(cur)
            cur = []
    if cur:
        yield Batch(cur)
