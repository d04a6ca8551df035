"""The port registry: a table's ``PortSpec`` kind -> the port that serves it.

One place lists every kind (:data:`KINDS`), above both modules that implement ports
(:mod:`e2actors.switch.ports`, :mod:`e2actors.switch.afpacket`), so neither imports the other's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2actors.errors import E2Error
from e2actors.packet.batch import MAX_BATCH
from e2actors.switch.afpacket import AfPacketPort
from e2actors.switch.ports import MemoryPort, NullPort, PcapInPort, PcapOutPort, Port

__all__ = ["KINDS", "make_port"]

#: Port kind -> a factory ``(name, params) -> Port``.
KINDS: dict[str, Callable[[str, dict[str, Any]], Port]] = {
    "pcap-in": lambda name, params: PcapInPort(name, params["path"], params.get("speed", 0.0), params.get("loop", 1),
                                               params.get("batch", MAX_BATCH), params.get("shard")),
    "pcap-out": lambda name, params: PcapOutPort(name, params["path"]),
    "memory": lambda name, params: MemoryPort(name, params.get("keep", 1_000_000)),
    "null": lambda name, params: NullPort(name),
    "afpacket": lambda name, params: AfPacketPort(name, params["iface"], params.get("batch", 256),
                                                  params.get("mode", "ring"), params.get("ring_frames", 4096),
                                                  params.get("fanout")),
}


def make_port(name: str, kind: str, params: dict[str, Any]) -> Port:
    """Build a port from a table's ``PortSpec``."""
    factory = KINDS.get(kind)
    if factory is None:
        raise E2Error(f"port {name}: unknown kind {kind!r} ({', '.join(KINDS)})")
    return factory(name, params)
