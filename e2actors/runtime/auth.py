"""Shared-secret authentication between nodes: HMAC-SHA256 challenge and response. Pure code.

On connect both sides send ``MAGIC + nonce`` (32 random bytes). Each then proves it knows the
secret with ``HMAC(secret, role || their_nonce || my_nonce)``; the role label (client/server)
stops a reflected proof from passing. Nothing secret travels; a replayed proof fails because the
other side's nonce is fresh.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"E2A1"
NONCE_SIZE = 32
HELLO_SIZE = len(MAGIC) + NONCE_SIZE
PROOF_SIZE = 32


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def hello(nonce: bytes) -> bytes:
    return MAGIC + nonce


def parse_hello(data: bytes) -> bytes | None:
    """Return the peer's nonce, or None if ``data`` is not a hello."""
    if len(data) != HELLO_SIZE or data[: len(MAGIC)] != MAGIC:
        return None
    return data[len(MAGIC):]


def proof(secret: bytes, role: bytes, their_nonce: bytes, my_nonce: bytes) -> bytes:
    return hmac.new(secret, role + their_nonce + my_nonce, hashlib.sha256).digest()


def check(secret: bytes, role: bytes, my_nonce: bytes, their_nonce: bytes, their_proof: bytes) -> bool:
    """Check the proof the peer (playing ``role``) sent us, in constant time."""
    expected = proof(secret, role, my_nonce, their_nonce)
    return hmac.compare_digest(expected, their_proof)
