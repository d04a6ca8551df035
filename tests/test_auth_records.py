"""The handshake, the sealed records and the rate-limited log, tested without an event loop or
sockets: keys bound to nonces, names, roles and the TLS channel; injected, modified, replayed,
reordered, dropped and reflected records refused; hostile bytes never raise anything but the
module's own errors."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.errors import AuthError, TransportError
from e2actors.runtime import auth
from e2actors.runtime.ratelog import RateLimitedLog
from e2actors.runtime.records import Opener, RecordError, Sealer

S = b"a shared secret of some length"


def pair(secret_c: bytes = S, secret_s: bytes = S, binding_c: bytes = b"", binding_s: bytes = b"",
         names: tuple[str, str] = ("mgr", "agent")) -> tuple[auth.Handshake, auth.Handshake]:
    """Run a client and a server handshake against each other, in memory."""
    c = auth.Handshake(secret_c, True, names[0], binding_c)
    s = auth.Handshake(secret_s, False, names[1], binding_s)
    to_s, to_c = c.start(), s.start()
    for _ in range(3):
        out_s = s.feed(to_s) if not s.done else b""
        out_c = c.feed(to_c) if not c.done else b""
        to_s, to_c = out_c, out_s
    return c, s


def test_rfc5869_hkdf_vector() -> None:
    # RFC 5869 appendix A.1 (SHA-256).
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = auth.hkdf_extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = auth.hkdf_expand(prk, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_handshake_agrees_on_keys_and_names() -> None:
    c, s = pair()
    assert c.done and s.done
    assert c.peer_name == "agent" and s.peer_name == "mgr"
    assert c.send_key == s.recv_key and c.recv_key == s.send_key
    assert c.send_key != c.recv_key  # one key per direction: a record cannot be reflected
    c2, s2 = pair()
    assert c2.send_key != c.send_key  # fresh nonces, fresh keys


def test_wrong_secret_fails_on_both_sides_and_our_proof_still_goes_out() -> None:
    c = auth.Handshake(S, True, "mgr")
    s = auth.Handshake(b"another secret entirely", False, "agent")
    proof_s = s.feed(c.start())
    with pytest.raises(AuthError, match="challenge") as e:
        c.feed(s.start() + proof_s)
    assert len(e.value.reply) == auth.PROOF_SIZE  # type: ignore[attr-defined]
    with pytest.raises(AuthError, match="challenge"):
        s.feed(e.value.reply)  # type: ignore[attr-defined]


def test_a_changed_name_nonce_or_binding_fails_the_proofs() -> None:
    # A relay that rewrites the client's name in its hello: the two ends' transcripts differ.
    c = auth.Handshake(S, True, "mgr")
    s = auth.Handshake(S, False, "agent")
    forged = auth.hello(c.nonce, "evil")
    proof_s = s.feed(forged)
    with pytest.raises(AuthError):
        c.feed(s.start() + proof_s)
    # Different TLS channels on the two ends (a relay terminating TLS itself).
    with pytest.raises(AuthError):
        pair(binding_c=b"\x01" * 64, binding_s=b"\x02" * 64)
    c, s = pair(binding_c=b"\x01" * 64, binding_s=b"\x01" * 64)
    assert c.done and s.done


def test_reflection_fails() -> None:
    # Our own hello sent back to us.
    c = auth.Handshake(S, True, "mgr")
    with pytest.raises(AuthError, match="reflection"):
        c.feed(c.start())
    # Another handshake of ours in progress (a relay joining a node to itself).
    mine = auth.Handshake(S, False, "mgr")
    c = auth.Handshake(S, True, "mgr", own_nonces={mine.nonce})
    with pytest.raises(AuthError, match="reflection"):
        c.feed(mine.start())
    # Our own proof sent back as the server's: checked against the server's key, it fails.
    c = auth.Handshake(S, True, "mgr")
    s = auth.Handshake(S, False, "agent")
    my_proof = c.feed(s.start())
    with pytest.raises(AuthError, match="challenge"):
        c.feed(my_proof)


def test_hello_parsing() -> None:
    n = auth.new_nonce()
    h = auth.hello(n, "s1")
    assert auth.parse_hello(h) == (n, "s1", len(h))
    assert auth.parse_hello(h[:10]) is None
    assert auth.parse_hello(b"E2") is None
    with pytest.raises(AuthError):
        auth.parse_hello(b"GET / HTTP/1.1\r\n")
    with pytest.raises(AuthError):
        auth.parse_hello(b"\x16\x03\x01")  # a TLS ClientHello to a plain listener
    with pytest.raises(AuthError, match="UTF-8"):
        auth.parse_hello(auth.MAGIC + n + b"\x02\xff\xfe")
    assert len(auth.hello(n, "x" * 1000)) == len(auth.MAGIC) + auth.NONCE_SIZE + 1 + auth.MAX_NAME


def test_tls_binding_covers_both_certificates() -> None:
    a = auth.tls_binding(b"client cert", b"server cert", b"finished")
    assert a != auth.tls_binding(b"other cert", b"server cert", b"finished")
    assert a != auth.tls_binding(b"server cert", b"client cert", b"finished")
    assert a[:32] == hashlib.sha256(b"client cert").digest()


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_hypothesis_any_bytes_to_a_handshake(data: bytes) -> None:
    """Hostile bytes in place of a peer's hello and proof: an AuthError or nothing, never done."""
    s = auth.Handshake(S, False, "agent")
    try:
        for i in range(0, len(data), 37):
            s.feed(data[i:i + 37])
    except AuthError:
        return
    assert not s.done


def test_records_round_trip_and_split_anywhere() -> None:
    c, s = pair()
    tx, rx = Sealer(c.send_key), Opener(s.recv_key, 1 << 20)
    stream = b"".join(tx.seal(bytes([i]) * i) for i in range(50))
    got: list[bytes] = []
    for i in range(0, len(stream), 7):
        got += rx.feed(stream[i:i + 7])
    assert got == [bytes([i]) * i for i in range(50)]
    assert rx.buffered == 0


def test_injected_modified_replayed_reordered_dropped_reflected_records_fail() -> None:
    c, s = pair()
    tx = Sealer(c.send_key)
    r1, r2, r3 = tx.seal(b"one"), tx.seal(b"two"), tx.seal(b"three")

    def opener() -> Opener:
        return Opener(s.recv_key, 1 << 20)

    cases = {
        "replayed": r1 + r1,
        "reordered": r2 + r1,
        "dropped": r1 + r3,
        "modified": r1[:-1] + bytes([r1[-1] ^ 1]),
        "modified length": (int.from_bytes(r1[:4], "big") + 1).to_bytes(4, "big") + r1[4:] + b"\x00",
        "injected": r1 + Sealer(b"\x00" * 32).seal(b"spawn something"),
    }
    for what, data in cases.items():
        rx = opener()
        with pytest.raises(RecordError):
            rx.feed(data)
        assert rx.failed, what
        with pytest.raises(RecordError):  # nothing after a failure is ever opened
            rx.feed(r1)
    # Reflection: a record sealed by the server, sent back to the server.
    back = Sealer(s.send_key).seal(b"reflected")
    with pytest.raises(RecordError):
        opener().feed(back)
    # Oversized and undersized lengths are refused before anything is buffered.
    with pytest.raises(RecordError, match="limit"):
        Opener(s.recv_key, 100).feed((1 << 30).to_bytes(4, "big"))
    with pytest.raises(RecordError):
        opener().feed((3).to_bytes(4, "big") + b"abc")
    assert issubclass(RecordError, TransportError)


def test_keys_step_after_rekey_bytes_on_both_ends() -> None:
    c, s = pair()
    tx, rx = Sealer(c.send_key, rekey_bytes=100), Opener(s.recv_key, 1 << 20, rekey_bytes=100)
    k0 = tx._key
    out = []
    for i in range(40):
        out += rx.feed(tx.seal(b"x" * 30))
    assert tx._key != k0 and out == [b"x" * 30] * 40


@given(st.lists(st.binary(max_size=80), max_size=6), st.integers(0, 5), st.integers(0, 255))
@settings(max_examples=200, deadline=None)
def test_hypothesis_any_flipped_byte_is_caught(chunks: list[bytes], which: int, flip: int) -> None:
    c, s = pair()
    tx, rx = Sealer(c.send_key), Opener(s.recv_key, 1 << 20)
    stream = bytearray(b"".join(tx.seal(ch) for ch in chunks))
    if not stream:
        return
    pos = (which * 7919 + flip) % len(stream)
    stream[pos] ^= (flip or 1)
    try:
        got = rx.feed(bytes(stream))
    except RecordError:
        return
    # Only a change inside a record's length that leaves the stream incomplete can go unseen
    # yet: then nothing past it was opened.
    assert got == chunks[:len(got)] and len(got) < len(chunks)


def test_ratelog_bounds_the_lines_and_reports_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, period=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.ratelog"):
        written = [rl.warning("auth_failures", "failure %d", i) for i in range(1000)]
        assert sum(written) == 3 and rl.suppressed() == 997
        assert rl.warning("other", "another kind")  # its own budget
        now[0] = 10.5
        assert rl.warning("auth_failures", "failure again")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert "997 similar messages suppressed" in lines[-1]


def test_proof_is_an_hmac_of_the_transcript() -> None:
    c, s = pair()
    keys = c.keys
    assert keys is not None
    assert auth.proof(keys, auth.ROLE_CLIENT) == hmac.digest(keys.client_proof, b"client finished" + keys.transcript,
                                                             "sha256")


def test_long_and_multibyte_names_are_cut_on_a_character_boundary() -> None:
    name = "é" * 200   # 400 bytes of UTF-8
    c, s = pair(names=(name, "agent"))
    assert s.peer_name == auth.wire_name(name) and len(s.peer_name.encode()) <= auth.MAX_NAME
    assert name.startswith(s.peer_name)
