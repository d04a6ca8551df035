"""Sealed records: every byte after the handshake travels in AES-256-GCM records. Pure code.

A record is a 4-byte big-endian length and the AES-GCM ciphertext of a run of frames with its
16-byte tag; the length is authenticated too (associated data). The nonce is the record's
sequence number in its direction (never sent: each end counts), and each direction has its own
key from the handshake (:mod:`e2actors.runtime.auth`). So a record that was injected, modified,
replayed, reordered, dropped, or reflected back to its sender fails authentication, and the
connection is closed before any frame in it is read. After ``REKEY_BYTES`` in one direction both
ends step that direction's key (HKDF-Expand over the old one), keeping far below AES-GCM's
per-key data limit.

Why records and not one MAC per frame: a record carries every frame queued in one event-loop turn
(one ``write``), so the cost is paid per write, not per message; measured in ``benchmarks/actors.py``
(remote tell) and in the README's dependency list (AES-GCM against HMAC-SHA256).
"""

from __future__ import annotations

import struct

from e2actors.errors import TransportError
from e2actors.runtime.auth import hkdf_expand

__all__ = ["Opener", "RecordError", "Sealer", "TAG_SIZE"]

TAG_SIZE = 16
HEADER_SIZE = 4
#: Bytes sealed under one key before both ends step to the next.
REKEY_BYTES = 1 << 32
_HDR = struct.Struct(">I")
_pack_hdr = _HDR.pack
_unpack_hdr = _HDR.unpack_from
_REKEY_INFO = b"e2actors record key update"


class RecordError(TransportError):
    """A record failed authentication or was malformed: the connection must close."""


class _Keyed:
    __slots__ = ("_key", "_encrypt", "_decrypt", "seq", "_bytes", "rekey_bytes")

    def __init__(self, key: bytes, rekey_bytes: int) -> None:
        self.seq = 0
        self._bytes = 0
        self.rekey_bytes = rekey_bytes
        self._set_key(key)

    def _set_key(self, key: bytes) -> None:
        # (imported on first use: a process that never links to another node — a plan, a filter
        # check, a capture read under a memory limit — does not load the crypto library)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._key = key
        aead = AESGCM(key)
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt

    def _rekey(self) -> None:
        self._set_key(hkdf_expand(self._key, _REKEY_INFO))
        self.seq = 0
        self._bytes = 0


class Sealer(_Keyed):
    """Seals outgoing records with one direction's key."""

    __slots__ = ()

    def __init__(self, key: bytes, rekey_bytes: int = REKEY_BYTES) -> None:
        super().__init__(key, rekey_bytes)

    def seal(self, plaintext: bytes) -> bytes:
        """The record (header and sealed bytes) carrying ``plaintext``."""
        n = len(plaintext)
        hdr = _pack_hdr(n + TAG_SIZE)
        seq = self.seq
        out = hdr + self._encrypt(seq.to_bytes(12, "big"), plaintext, hdr)
        self.seq = seq + 1
        self._bytes += n
        if self._bytes >= self.rekey_bytes:
            self._rekey()
        return out


class Opener(_Keyed):
    """Splits a byte stream into records and opens them, in order, with one direction's key.

    ``feed(data)`` returns the plaintexts of the complete records; a length over ``max_record``
    raises :class:`RecordError` before any of it is buffered, and so does a record that fails
    authentication (then nothing after it is opened either: the opener is dead)."""

    __slots__ = ("_buf", "max_record", "failed")

    def __init__(self, key: bytes, max_record: int, rekey_bytes: int = REKEY_BYTES) -> None:
        super().__init__(key, rekey_bytes)
        self._buf = bytearray()
        self.max_record = max_record
        self.failed = False

    def _open(self, view: memoryview, pos: int, end: int) -> bytes:
        seq = self.seq
        try:
            pt = self._decrypt(seq.to_bytes(12, "big"), view[pos + HEADER_SIZE:end], view[pos:pos + HEADER_SIZE])
        except Exception as exc:  # cryptography's InvalidTag (its module loads with the first key)
            if type(exc).__name__ != "InvalidTag":
                raise
            self.failed = True
            raise RecordError(f"record {seq} failed authentication (injected, modified, replayed or "
                              "reordered)") from None
        self.seq = seq + 1
        self._bytes += len(pt)
        if self._bytes >= self.rekey_bytes:
            self._rekey()
        return pt

    def _size(self, data: bytes, pos: int) -> int:
        (size,) = _unpack_hdr(data, pos)
        if size > self.max_record or size < TAG_SIZE:
            self.failed = True
            raise RecordError(f"record of {size} bytes (limit {self.max_record})")
        return size

    def feed(self, data: bytes) -> list[bytes]:
        if self.failed:
            raise RecordError("record stream already failed")
        buf = self._buf
        n = len(data)
        if not buf and n >= HEADER_SIZE and self._size(data, 0) + HEADER_SIZE == n:
            return [self._open(memoryview(data), 0, n)]  # the common case: exactly one record
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
            n = len(data)
        out = []
        pos = 0
        view = memoryview(data)
        while n - pos >= HEADER_SIZE:
            end = pos + HEADER_SIZE + self._size(data, pos)
            if end > n:
                break
            out.append(self._open(view, pos, end))
            pos = end
        if pos < n:
            buf += view[pos:]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
