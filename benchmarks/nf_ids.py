"""IDS matching rate: the prefilter's two engines (Hyperscan, ahocorasick-rs) and a plain ``bytes.find``
loop, same patterns, same stream, same run.

The stream is the TCP payload of a generated trace (HTTP requests and responses, TLS records: text
and random bytes), cut into MSS-sized chunks as the StreamDriver hands them to ``IDS.on_stream``.
Patterns: ``--patterns`` signature-like strings (6..24 bytes, a fifth of them ``nocase``), none of
which occurs in the stream, so nothing stops early: every byte is scanned against every pattern.

- ours: :class:`e2actors.nf.rules.Matcher` with each backend, ``feed`` per chunk with the tail of
  ``longest - 1`` bytes carried over, exactly as the IDS calls it: ``hyperscan`` (Intel's engine, as
  Suricata uses it: one block-mode literal database, caseless flags for ``nocase``) and
  ``ahocorasick`` (``ahocorasick_rs.BytesAhoCorasick`` DFA, one automaton for case-sensitive
  patterns, one over a lowercased copy for ``nocase``);
- Hyperscan in streaming mode, for reference: one stream per direction, each chunk scanned as it
  comes (no tail copy; the engine keeps the state that finds patterns across chunks);
- naive: per chunk, ``window.find(p)`` for every pattern over the same ``tail + chunk`` window (and a
  lowercased copy for the ``nocase`` ones): the same answer, found one pattern at a time;
- pyahocorasick, for reference: its automaton is built for ``str`` here, so the window is decoded as
  latin-1 (one byte per character) and that decode is counted;
- also the whole stream in one call (no chunking), for ours and the naive loop.

Each contender runs ``--rounds`` times; the best round counts.

    python benchmarks/nf_ids.py [--patterns 1000] [--mb 4] [--rounds 3]

Last line: one JSON object with ``ids_mb_per_s`` (the default backend), ``ids_hyperscan_mb_per_s``,
``ids_ahocorasick_mb_per_s``, ``ids_hyperscan_stream_mb_per_s``, ``ids_naive_mb_per_s`` (per-chunk
figures) and ``ids_hyperscan_vs_ahocorasick`` (the ratio that chose the default).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import ahocorasick

from e2actors.nf.rules import DEFAULT_BACKEND, Content, Matcher, Rule, hyperscan_available
from e2actors.packet.traffic import generate

MSS = 1400
ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-=?&%:"


def stream_bytes(mb: float) -> bytes:
    out = bytearray()
    seed = 0
    while len(out) < mb * 1e6:
        for p in generate(flows=300, seed=seed, profile="web"):
            if p.proto == 6 and p.payload_len:
                out += p.payload
        seed += 1
    return bytes(out[: int(mb * 1e6)])


def make_patterns(n: int, stream: bytes, seed: int = 7) -> list[tuple[bytes, bool]]:
    r = random.Random(seed)
    low = stream.lower()
    pats: list[tuple[bytes, bool]] = []
    seen: set[bytes] = set()
    while len(pats) < n:
        p = bytes(r.choice(ALPHABET) for _ in range(r.randint(6, 24)))
        nocase = r.random() < 0.2
        key = p.lower() if nocase else p
        if key in seen or (key in low if nocase else p in stream):
            continue
        seen.add(key)
        pats.append((p, nocase))
    return pats


def ours(m: Matcher, chunks: list[bytes]) -> int:
    st = m.new_state()
    n = 0
    feed = m.feed
    for c in chunks:
        n += len(feed(st, c))
    return n


def hs_stream(db, chunks: list[bytes]) -> int:
    n = [0]

    def on(*_a) -> None:
        n[0] += 1

    with db.stream(match_event_handler=on) as st:
        for c in chunks:
            st.scan(c)
    return n[0]


def naive(cs: list[bytes], ci: list[bytes], keep: int, chunks: list[bytes]) -> int:
    tail = b""
    n = 0
    for c in chunks:
        w = tail + c
        for p in cs:
            if w.find(p) >= 0:
                n += 1
        if ci:
            lw = w.lower()
            for p in ci:
                if lw.find(p) >= 0:
                    n += 1
        tail = w[-keep:]
    return n


def pyaho(a: ahocorasick.Automaton, ai: ahocorasick.Automaton, keep: int, chunks: list[bytes]) -> int:
    tail = b""
    n = 0
    for c in chunks:
        w = tail + c
        s = w.decode("latin-1")
        for _ in a.iter(s):
            n += 1
        for _ in ai.iter(s.lower()):
            n += 1
        tail = w[-keep:]
    return n


def best(fn, *args, rounds: int) -> float:
    t = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


def measure(patterns: int = 1000, mb_target: float = 4.0, rounds: int = 3, verbose: bool = True) -> dict:
    """Run the comparison; return the figures (see the module docstring)."""
    data = stream_bytes(mb_target)
    pats = make_patterns(patterns, data)
    rules = [Rule(sid=i + 1, contents=(Content(p, nocase=nc),)) for i, (p, nc) in enumerate(pats)]
    m = Matcher(rules, backend="ahocorasick")
    have_hs = hyperscan_available()
    mh = Matcher(rules, backend="hyperscan") if have_hs else None
    chunks = [data[i:i + MSS] for i in range(0, len(data), MSS)]
    cs = [p for p, nc in pats if not nc]
    ci = [p.lower() for p, nc in pats if nc]
    a, ai = ahocorasick.Automaton(), ahocorasick.Automaton()
    for p in cs:
        a.add_word(p.decode("latin-1"), p)
    for p in ci:
        ai.add_word(p.decode("latin-1"), p)
    a.make_automaton()
    ai.make_automaton()
    mb = len(data) / 1e6

    assert ours(m, chunks) == 0 == naive(cs, ci, m.keep, chunks)  # same answer: nothing occurs
    # ... and the same answer when the patterns do occur (a copy of each, split across chunks)
    probe = [data[:500] + b"".join(p for p, _ in pats[:50]) + data[500:1800]]
    probe = [probe[0][i:i + 97] for i in range(0, len(probe[0]), 97)]
    want = ours(m, probe)
    assert want >= 50 and (mh is None or ours(mh, probe) == want)
    if have_hs:
        import hyperscan

        sdb = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
        sdb.compile(expressions=[p for p, _ in pats], ids=list(range(len(pats))),
                    flags=[hyperscan.HS_FLAG_CASELESS if nc else 0 for _, nc in pats], literal=True)
        assert hs_stream(sdb, chunks) == 0

    t_ours = best(ours, m, chunks, rounds=rounds)
    t_hs = best(ours, mh, chunks, rounds=rounds) if have_hs else float("nan")
    t_hss = best(hs_stream, sdb, chunks, rounds=rounds) if have_hs else float("nan")
    t_naive = best(naive, cs, ci, m.keep, chunks, rounds=rounds)
    t_pyaho = best(pyaho, a, ai, m.keep, chunks, rounds=rounds)
    t_ours_whole = best(ours, m, [data], rounds=rounds)
    t_naive_whole = best(naive, cs, ci, m.keep, [data], rounds=rounds)

    r_ours, r_naive, r_pyaho = mb / t_ours, mb / t_naive, mb / t_pyaho
    r_hs, r_hss = mb / t_hs, mb / t_hss
    r_default = r_hs if DEFAULT_BACKEND == "hyperscan" else r_ours
    if verbose:
        print(f"stream: {mb:.1f} MB of generated TCP payload in {len(chunks)} chunks of {MSS} bytes; "
              f"{len(pats)} patterns ({len(ci)} nocase), longest {m.longest}")
        print(f"ours (hyperscan, per chunk):       {r_hs:8.1f} MB/s" if have_hs else "hyperscan: not installed")
        print(f"hyperscan streaming mode:          {r_hss:8.1f} MB/s" if have_hs else "")
        print(f"ours (ahocorasick_rs, per chunk):  {r_ours:8.1f} MB/s")
        print(f"naive bytes.find loop (per chunk): {r_naive:8.1f} MB/s")
        print(f"pyahocorasick (per chunk, latin-1): {r_pyaho:7.1f} MB/s")
        print(f"ours, whole stream in one call:    {mb / t_ours_whole:8.1f} MB/s")
        print(f"naive, whole stream in one call:   {mb / t_naive_whole:8.1f} MB/s")
        print(f"default ({DEFAULT_BACKEND}) / naive: {r_default / r_naive:.1f}x (target >= 20x); "
              f"hyperscan / ahocorasick_rs: {r_hs / r_ours:.2f}x; ahocorasick_rs / pyahocorasick: {r_ours / r_pyaho:.1f}x")
    return {"ids_mb_per_s": round(r_default, 1), "ids_backend": DEFAULT_BACKEND,
            "ids_hyperscan_mb_per_s": round(r_hs, 1), "ids_hyperscan_stream_mb_per_s": round(r_hss, 1),
            "ids_ahocorasick_mb_per_s": round(r_ours, 1), "ids_naive_mb_per_s": round(r_naive, 2),
            "ids_pyahocorasick_mb_per_s": round(r_pyaho, 1), "ids_patterns": len(pats),
            "ids_ratio": round(r_default / r_naive, 1), "ids_hyperscan_vs_ahocorasick": round(r_hs / r_ours, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patterns", type=int, default=1000)
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(measure(args.patterns, args.mb, args.rounds)))


if __name__ == "__main__":
    main()
