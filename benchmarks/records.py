"""Record layer benchmark: what authenticating every frame between nodes costs, per message.

The transport gathers the frames of one event-loop turn into one write; each write is one sealed
record (:mod:`e2actors.runtime.records`: AES-256-GCM, sequence number as nonce). This measures,
for the frames of ``benchmarks/actors.py`` (a small message, ~12-byte frames), the cost of seal +
open per message for:

* ``none``: no protection (joining the frames and splitting them again; the baseline);
* ``aesgcm_record``: what the transport does (:class:`Sealer` / :class:`Opener`);
* ``hmac_record``: HMAC-SHA256 over each record (integrity only) with its sequence number;
* ``hmac_frame`` / ``aesgcm_frame``: one HMAC / one AES-GCM operation per frame;
* ``chacha_record``: ChaCha20-Poly1305 per record;

at four write sizes: 1 frame (an ask and its reply), 64 frames, 256 KiB of frames (a bulk tell
that fills the transport's flush threshold), and 64 frames of 1.5 KB (packets between switches).
Last line: one JSON object with microseconds per message and each mode's ratio to ``none``. The
remote-tell figure itself is ``benchmarks/actors.py``.
"""

from __future__ import annotations

import hmac
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from e2actors.runtime.codec import FrameDecoder, encode_frame  # noqa: E402
from e2actors.runtime.records import Opener, Sealer  # noqa: E402

KEY = os.urandom(32)
FRAME = encode_frame(0, "sink", None, (1100, [123456]))   # a TELL of a small message, as on the wire
BIG = encode_frame(0, "switch", None, os.urandom(1500))  # a frame carrying a packet's bytes
SIZES = {"1 frame": (FRAME, 1), "64 frames": (FRAME, 64), "256 KiB": (FRAME, (256 * 1024) // len(FRAME)),
         "64 packets": (BIG, 64)}
_Q = struct.Struct(">Q")


def bench(fn, frames: list[bytes], budget: float = 0.4) -> float:
    """Microseconds per message of ``fn(frames)`` (one write's worth of frames)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn(frames)
        n += 1
        el = time.perf_counter() - t0
        if el > budget:
            return el / (n * len(frames)) * 1e6


def none(frames: list[bytes]) -> None:
    FrameDecoder().feed(b"".join(frames))


def aesgcm_record(frames: list[bytes], _s=Sealer(KEY), _o=Opener(KEY, 1 << 26)) -> None:
    for pt in _o.feed(_s.seal(b"".join(frames))):
        FrameDecoder().feed(pt)


_seq = [0]


def hmac_record(frames: list[bytes]) -> None:
    data = b"".join(frames)
    _seq[0] += 1
    tag = hmac.digest(KEY, _Q.pack(_seq[0]) + data, "sha256")[:16]
    rec = data + tag
    body, got = rec[:-16], rec[-16:]
    if not hmac.compare_digest(hmac.digest(KEY, _Q.pack(_seq[0]) + body, "sha256")[:16], got):
        raise AssertionError
    FrameDecoder().feed(body)


def hmac_frame(frames: list[bytes]) -> None:
    out = []
    for f in frames:
        _seq[0] += 1
        out.append(f + hmac.digest(KEY, _Q.pack(_seq[0]) + f, "sha256")[:16])
    data = b"".join(out)
    pos = 0
    seq = _seq[0] - len(frames)
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        end = pos + 4 + n
        seq += 1
        mac = hmac.digest(KEY, _Q.pack(seq) + data[pos:end], "sha256")[:16]
        if not hmac.compare_digest(mac, data[end:end + 16]):
            raise AssertionError
        pos = end + 16


def aesgcm_frame(frames: list[bytes], _s=Sealer(KEY), _o=Opener(KEY, 1 << 26)) -> None:
    """The same record layer with one record per frame (what authenticating each frame costs)."""
    dec = FrameDecoder()
    for pt in _o.feed(b"".join([_s.seal(f) for f in frames])):
        dec.feed(pt)


_chacha = ChaCha20Poly1305(KEY)


def chacha_record(frames: list[bytes]) -> None:
    _seq[0] += 1
    nonce = _seq[0].to_bytes(12, "big")
    FrameDecoder().feed(_chacha.decrypt(nonce, _chacha.encrypt(nonce, b"".join(frames), None), None))


MODES = {"none": none, "aesgcm_record": aesgcm_record, "hmac_record": hmac_record, "hmac_frame": hmac_frame,
         "aesgcm_frame": aesgcm_frame, "chacha_record": chacha_record}


def main() -> None:
    out: dict[str, float] = {}
    print(f"{'write of':>10} " + " ".join(f"{m:>14}" for m in MODES) + "   (us per message, seal + open)")
    for label, (f, n) in SIZES.items():
        frames = [f] * n
        row = {m: min(bench(fn, frames) for _ in range(3)) for m, fn in MODES.items()}
        print(f"{label:>10} " + " ".join(f"{row[m]:>14.3f}" for m in MODES))
        key = label.replace(" ", "_").lower()
        for m, v in row.items():
            out[f"{key}_{m}_us"] = v
            if m != "none":
                out[f"{key}_{m}_vs_none"] = v / row["none"]
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))


if __name__ == "__main__":
    main()
