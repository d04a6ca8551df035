"""Packets and batches on the wire between nodes (codec tags 100-199).

A batch crossing to another node becomes one array of per-packet arrays
``[data, ts, wirelen, port, meta, linktype, origin]`` (``origin``: the ingress credit the packet
holds, see :mod:`e2actors.switch.credits`): the frame bytes travel as msgpack binary, the
metadata as a map, and the receiving node parses each frame again (parsing is cheaper than
shipping the parsed fields, and it keeps a hostile peer from handing us inconsistent ones).
Local delivery never comes here: in-process batches are passed as objects.
"""

from __future__ import annotations

from typing import Any

from e2actors.errors import CodecError
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet
from e2actors.runtime.codec import register

__all__ = ["decode_packet", "encode_packet"]


def encode_packet(p: Packet) -> tuple:
    return (p.data, p.ts, p.wirelen, p.port, p.meta_if_any or None, p.linktype, p.origin)


def decode_packet(f: Any) -> Packet:
    if len(f) != 7 or type(f[0]) is not bytes or type(f[6]) is not int:
        raise CodecError("malformed packet on the wire")
    data, ts, wirelen, port, meta, linktype, origin = f
    if meta is not None:
        if type(meta) is not dict:
            raise CodecError("malformed packet metadata on the wire")
        meta = _lists(meta)  # metadata is the NFs' own data: lists stay lists (the codec gives tuples)
    return Packet(data, ts, port, wirelen, linktype, meta, origin)


def _lists(x: Any) -> Any:
    t = type(x)
    if t is tuple or t is list:
        return [_lists(i) for i in x]
    if t is dict:
        return {k: _lists(v) for k, v in x.items()}
    return x


def _encode_batch(b: Batch) -> tuple:
    return tuple(encode_packet(p) for p in b.packets)


def _decode_batch(fields: Any) -> Batch:
    return Batch([decode_packet(f) for f in fields])


register(Packet, 100, encode=encode_packet, decode=decode_packet)
register(Batch, 101, encode=_encode_batch, decode=_decode_batch)
