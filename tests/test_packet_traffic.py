"""The traffic generator: reproducible, realistic (as tshark dissects it), and covering every case
the NFs and the switch need (IPv6, VLANs, signatures split across segments, malformed frames)."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import need_tool
from test_packet_real import compare_with_tshark

from e2actors.packet.checksum import verify_checksums
from e2actors.packet.pcap import read_records
from e2actors.packet.traffic import PROFILES, SIGNATURES, WEB_HOSTS, frames, generate, write_pcap


@pytest.fixture(scope="module")
def trace() -> list:
    return generate(300, seed=11)


def _digest(fr) -> str:
    h = hashlib.sha256()
    for ts, f in fr:
        h.update(repr(ts).encode() + f)
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert _digest(frames(80, seed=5)) == _digest(frames(80, seed=5))
    assert _digest(frames(80, seed=5)) != _digest(frames(80, seed=6))
    assert _digest(frames(80, seed=5, profile="web")) != _digest(frames(80, seed=5))


def test_sorted_by_time_and_interleaved(trace) -> None:
    ts = [p.ts for p in trace]
    assert ts == sorted(ts)
    # flows overlap: some flow's packets come between another flow's first and last packets
    first, last = {}, {}
    for i, p in enumerate(trace):
        if p.proto == 6 and not p.malformed:
            first.setdefault(p.flow_key, i)
            last[p.flow_key] = i
    spans = sorted((first[k], last[k]) for k in first)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_mix_of_everything(trace) -> None:
    kinds = Counter()
    for p in trace:
        if p.malformed:
            kinds["malformed"] += 1
            continue
        kinds[(p.proto, p.ip_version)] += 1
        if p.vlans:
            kinds["vlan"] += 1
        if len(p.vlans) == 2:
            kinds["qinq"] += 1
        if p.dport == 53 or p.sport == 53:
            kinds["dns"] += 1
    for k in [(6, 4), (6, 6), (17, 4), (17, 6), (1, 4), (58, 6), "vlan", "qinq", "dns", "malformed"]:
        assert kinds[k] > 0, k
    assert all(all(verify_checksums(p).values()) for p in trace if not p.malformed)


def test_tcp_connections_are_complete(trace) -> None:
    flags = {}
    for p in trace:
        if p.proto == 6 and not p.malformed:
            flags.setdefault(p.flow_key, set()).add(p.tcp_flags)
    assert len(flags) > 100
    for f in flags.values():
        assert 0x02 in f and 0x12 in f  # SYN, SYN-ACK
        assert any(x & 0x01 for x in f) or any(x & 0x04 for x in f)  # FIN or RST


def test_heavy_tailed_flow_sizes(trace) -> None:
    size = Counter()
    for p in trace:
        if p.proto == 6 and not p.malformed:
            size[p.flow_key] += p.payload_len
    s = sorted(size.values())
    # the largest flow carries far more than the median one
    assert s[-1] > 20 * s[len(s) // 2]


def test_signatures_present_and_some_split(trace) -> None:
    whole = Counter()
    streams = {}
    for p in trace:
        if p.proto == 6 and not p.malformed and p.payload_len:
            for sig in SIGNATURES:
                if sig in p.payload:
                    whole[sig] += 1
            streams.setdefault((p.flow_key, p.direction), {})[p.tcp_seq] = p.payload
    split = 0
    for segs in streams.values():
        data = b"".join(segs[k] for k in sorted(segs))  # enough for these short streams
        for sig in SIGNATURES:
            if sig in data and not any(sig in s for s in segs.values()):
                split += 1
    assert sum(whole.values()) > 0 and split > 0


def test_out_of_order_and_retransmissions(trace) -> None:
    seen: dict = {}
    retrans = reordered = 0
    for p in trace:
        if p.proto == 6 and not p.malformed and p.payload_len:
            k = (p.flow_key, p.direction)
            prev = seen.setdefault(k, [])
            if p.tcp_seq in prev:
                retrans += 1
            elif prev and (p.tcp_seq - max(prev)) % 2**32 > 2**31:
                reordered += 1
            prev.append(p.tcp_seq)
    assert retrans > 0 and reordered > 0


def test_profiles_and_errors() -> None:
    for name in PROFILES:
        assert generate(20, seed=1, profile=name)
    assert all(p.ip_version == 6 for p in generate(30, 1, "ipv6"))
    assert all(p.sport == 53 or p.dport == 53 for p in generate(30, 1, "dns"))
    with pytest.raises(ValueError, match="unknown traffic profile"):
        frames(1, 1, "nope")
    assert generate(0, 1) == []


def test_tshark_agrees_on_fields_hosts_and_sni(tmp_path: Path) -> None:
    path = tmp_path / "gen.pcap"
    n = write_pcap(path, flows=150, seed=3)
    assert n == len(list(read_records(path)))
    assert compare_with_tshark(path) > n * 0.9
    tshark = need_tool("tshark")
    ours = [p for p in generate(150, seed=3)]
    sni = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(path),
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = sni.stdout.split()
    client_hellos = [p for p in ours if p.dport == 443 and p.payload[:1] == b"\x16" and p.payload[5:6] == b"\x01"]
    assert len(names) == len(client_hellos) > 0
    assert "www.youtube.com" in names or "youtube.com" in names
    hosts = subprocess.run(
        [tshark, "-n", "-r", str(path), "-Y", "http.request", "-T", "fields", "-e", "http.host"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert hosts and set(hosts) <= set(WEB_HOSTS)
    dns = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(path),
            "-Y",
            "dns.flags.response == 1 and dns.count.answers == 1",
            "-T",
            "fields",
            "-e",
            "dns.qry.name",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(dns) == sum(1 for p in ours if p.sport == 53 and not p.malformed)
    # malformed frames are exactly the ones tshark calls malformed or bogus
    expert = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(path),
            "-Y",
            "_ws.malformed or _ws.expert.severity == error",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    bad_theirs = {int(x) for x in expert.stdout.split()}
    bad_ours = {i for i, p in enumerate(ours, 1) if p.malformed}
    assert bad_ours and bad_ours <= bad_theirs | {i for i, p in enumerate(ours, 1) if p.reason and "ipv6" in p.reason}


def test_gen_traffic_cli(tmp_path: Path, capsys) -> None:
    from e2actors.packet import gencli

    out = tmp_path / "t.pcap"
    ns = argparse.Namespace(out=str(out), flows=25, seed=9, profile="web")
    assert gencli.run(ns) == 0
    assert "wrote" in capsys.readouterr().out
    assert [r[1] for r in read_records(out)] == [f for _t, f in frames(25, 9, "web")]
    assert gencli.run(argparse.Namespace(out=str(tmp_path / "no/such/dir.pcap"), flows=1, seed=0, profile="web")) == 2


def test_gen_traffic_through_main(tmp_path: Path) -> None:
    from e2actors.cli import main

    out = tmp_path / "m.pcap"
    assert main(["gen-traffic", str(out), "--flows", "10", "--seed", "2", "--profile", "mixed"]) == 0
    assert len(list(read_records(out))) == len(frames(10, 2))


def test_same_bytes_across_processes() -> None:
    """No dependence on hash randomization or anything else per process."""
    import os
    import sys

    code = (
        "import hashlib\nfrom e2actors.packet.traffic import frames\nh = hashlib.sha256()\n"
        "for t, f in frames(60, seed=42):\n    h.update(repr(t).encode() + f)\nprint(h.hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(s)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        for s in (1, 2)
    }
    assert digests == {_digest(frames(60, seed=42))}
