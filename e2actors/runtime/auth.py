"""The handshake between two nodes: shared-secret proof and per-connection keys. Pure code.

Both sides send a hello at once: ``MAGIC || nonce (32 random bytes) || len || node name``. From the
shared secret, both hellos (in client, server order: the roles are bound) and the TLS channel
binding when there is one (:func:`tls_binding`), each side derives with HKDF-SHA256 (RFC 5869,
built on :mod:`hmac`) four keys: one proof key per role and one record key per direction. Each
side then sends ``HMAC(its role's proof key, label || transcript hash)`` and checks the other's
against the *other* role's key, so:

* nothing secret travels, and a proof is only good for this pair of nonces (a replayed handshake
  fails: the other side's nonce is fresh);
* a proof sent back to the node that made it (reflection) fails: it is checked against the other
  role's key; a hello sent back to its sender is refused outright (:meth:`Handshake.feed`);
* a relay that changes a name, a nonce or (with TLS) terminates TLS itself makes the two ends
  derive different keys, so the proofs fail;
* a relay that passes the handshake through unchanged learns nothing it can use: every frame after
  it travels in records sealed with the direction's key (:mod:`e2actors.runtime.records`), which
  only the two ends hold.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from e2actors.errors import AuthError

__all__ = ["AuthError", "Handshake", "SessionKeys", "derive", "hello", "parse_hello", "tls_binding", "wire_name"]

MAGIC = b"E2A2"
NONCE_SIZE = 32
MAX_NAME = 255
PROOF_SIZE = 32
KEY_SIZE = 32
ROLE_CLIENT = b"client"
ROLE_SERVER = b"server"
_PROTOCOL = b"e2actors handshake v2"


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def wire_name(name: str) -> str:
    """``name`` as a hello carries it: at most 255 bytes of UTF-8, cut on a character boundary."""
    return name.encode()[:MAX_NAME].decode(errors="ignore")


def hello(nonce: bytes, name: str) -> bytes:
    """The hello a node sends first: magic, its nonce, its name (:func:`wire_name`)."""
    raw = wire_name(name).encode()
    return MAGIC + nonce + bytes([len(raw)]) + raw


def parse_hello(data: bytes | bytearray) -> tuple[bytes, str, int] | None:
    """``(nonce, name, size)`` of the hello at the start of ``data``; None while incomplete.
    Raises :class:`AuthError` as soon as the bytes cannot be a hello."""
    n = len(MAGIC)
    if bytes(data[:n]) != MAGIC[: min(n, len(data))]:
        raise AuthError("peer did not start the e2actors handshake")
    head = n + NONCE_SIZE + 1
    if len(data) < head:
        return None
    size = head + data[head - 1]
    if len(data) < size:
        return None
    try:
        name = bytes(data[head:size]).decode()
    except UnicodeDecodeError:
        raise AuthError("peer's hello carries a name that is not UTF-8") from None
    return bytes(data[n:n + NONCE_SIZE]), name, size


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
        i += 1
    return out[:length]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What one handshake yields: the transcript hash and the keys derived from it."""

    transcript: bytes
    client_proof: bytes
    server_proof: bytes
    client_to_server: bytes
    server_to_client: bytes


def derive(secret: bytes, client_hello: bytes, server_hello: bytes, binding: bytes = b"") -> SessionKeys:
    """Keys for one connection from the secret, both hellos (client's first) and the channel
    binding (b"" without TLS)."""
    th = hashlib.sha256(_PROTOCOL + _lp(client_hello) + _lp(server_hello) + _lp(binding)).digest()
    c_nonce = client_hello[len(MAGIC):len(MAGIC) + NONCE_SIZE]
    s_nonce = server_hello[len(MAGIC):len(MAGIC) + NONCE_SIZE]
    prk = hkdf_extract(c_nonce + s_nonce, secret)
    return SessionKeys(th, hkdf_expand(prk, b"client proof" + th), hkdf_expand(prk, b"server proof" + th),
                       hkdf_expand(prk, b"client to server" + th), hkdf_expand(prk, b"server to client" + th))


def _lp(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def proof(keys: SessionKeys, role: bytes) -> bytes:
    """The proof that the side playing ``role`` sends."""
    key = keys.client_proof if role == ROLE_CLIENT else keys.server_proof
    return hmac.digest(key, role + b" finished" + keys.transcript, "sha256")


def check(keys: SessionKeys, role: bytes, their_proof: bytes) -> bool:
    """Check, in constant time, the proof the peer playing ``role`` sent."""
    return hmac.compare_digest(proof(keys, role), their_proof)


def tls_binding(client_cert: bytes, server_cert: bytes, tls_unique: bytes | None) -> bytes:
    """The TLS channel binding both ends compute: the SHA-256 of the client's and the server's
    certificates (DER) and ``tls-unique`` (RFC 5929) when the TLS library gives it. A relay that
    terminates TLS with a certificate of its own (even one the CA signed) changes it."""
    return hashlib.sha256(client_cert).digest() + hashlib.sha256(server_cert).digest() + (tls_unique or b"")


class Handshake:
    """One side's handshake as a state machine over bytes (no I/O, so it is tested without sockets).

    ``start()`` gives the hello to send; ``feed(data)`` takes what arrived and returns the bytes to
    send (our proof, once the peer's hello is in); when :attr:`done`, :attr:`rest` holds what came
    after the peer's proof (the first records), and :attr:`send_key` / :attr:`recv_key` the record
    keys. A failure raises :class:`AuthError` with the reason.
    """

    def __init__(self, secret: bytes, client: bool, name: str, binding: bytes = b"",
                 nonce: bytes | None = None, own_nonces: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        self.secret = secret
        self.client = client
        self.role = ROLE_CLIENT if client else ROLE_SERVER
        self.peer_role = ROLE_SERVER if client else ROLE_CLIENT
        self.nonce = nonce if nonce is not None else new_nonce()
        self.hello = hello(self.nonce, name)
        self.binding = binding
        #: Nonces of this node's other handshakes in progress: a hello carrying one of them is our
        #: own, sent back (a relay joining a node to itself).
        self.own_nonces = own_nonces
        self.peer_name: str | None = None
        self.peer_nonce: bytes | None = None
        self.keys: SessionKeys | None = None
        self.done = False
        self.rest = b""
        self._buf = bytearray()

    def start(self) -> bytes:
        return self.hello

    def feed(self, data: bytes) -> bytes:
        """Consume received bytes; return the bytes to send now (possibly empty). On a failure
        the :class:`AuthError` carries in ``reply`` what should still be sent (our proof)."""
        if self.done:
            raise AuthError("handshake already complete")
        self._buf += data
        out = b""
        if self.keys is None:
            parsed = parse_hello(self._buf)
            if parsed is None:
                return b""
            nonce, name, size = parsed
            if nonce == self.nonce or nonce in self.own_nonces:
                raise AuthError("peer sent back our own hello (reflection)")
            peer_hello = bytes(self._buf[:size])
            del self._buf[:size]
            self.peer_nonce, self.peer_name = nonce, name
            ch, sh = (self.hello, peer_hello) if self.client else (peer_hello, self.hello)
            self.keys = derive(self.secret, ch, sh, self.binding)
            out = proof(self.keys, self.role)
        if len(self._buf) < PROOF_SIZE:
            return out
        if not check(self.keys, self.peer_role, bytes(self._buf[:PROOF_SIZE])):
            err = AuthError("peer failed the shared-secret challenge")
            # Our proof still goes out (the caller sends ``err.reply``), so the peer learns it
            # was refused by the secret and counts it, rather than seeing a bare close.
            err.reply = out  # type: ignore[attr-defined]
            raise err
        self.rest = bytes(self._buf[PROOF_SIZE:])
        self._buf = bytearray()
        self.done = True
        return out

    @property
    def send_key(self) -> bytes:
        assert self.keys is not None
        return self.keys.client_to_server if self.client else self.keys.server_to_client

    @property
    def recv_key(self) -> bytes:
        assert self.keys is not None
        return self.keys.server_to_client if self.client else self.keys.client_to_server
