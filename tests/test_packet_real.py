"""Captures nobody here wrote: every frame parses or is marked malformed with a reason, every
pcapng test file reads (or fails with a clear error where it is broken on purpose), and our fields
agree with tshark's, frame by frame."""

from __future__ import annotations

import glob
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import need_path, need_tool

from e2actors.errors import PcapError
from e2actors.packet.checksum import verify_checksums
from e2actors.packet.packet import Packet, format_addr
from e2actors.packet.pcap import PcapngReader, read_records

DPKT = "/usr/share/doc/python3-dpkt/examples/data"
GOPACKET = "/usr/share/gocode/src/github.com/google/gopacket"
SIPP = "/usr/share/sip-tester"
# test901 has a section with pcapng version 2.0: a deliberately broken file (gopacket expects
# ErrNgVersionMismatch after the first packet, tshark refuses it too).
BROKEN_PCAPNG = {"test901.pcapng": "unsupported pcapng version 2.0"}


def _files(pattern: str, what: str) -> list[str]:
    root = pattern.split("*")[0]
    need_path(root, what)
    files = sorted(glob.glob(pattern, recursive=True))
    assert files, f"no files match {pattern}"
    return files


def _parse_all(path: str) -> tuple[list[Packet], str | None]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pkts = [Packet(d, ts, "", wl, lt) for ts, d, wl, lt, _i in read_records(path)]
    return pkts, (str(w[0].message) if w else None)


def _check_all(pkts: list[Packet]) -> None:
    for p in pkts:
        assert p.reason is None or p.reason, p
        if p.reason is None and p.payload_offset >= 0:
            assert p.payload_offset + p.payload_len <= len(p.data)
        p.flow_key, p.direction, repr(p)  # noqa: B018


def test_dpkt_captures() -> None:
    files = {Path(f).name: f for f in _files(f"{DPKT}/*.pcap", "python3-dpkt's example captures")}
    counts = {}
    for name, f in files.items():
        pkts, warn = _parse_all(f)
        _check_all(pkts)
        counts[name] = (len(pkts), sum(p.malformed for p in pkts), warn is not None)
    assert counts["http.pcap"] == (43, 0, False)
    assert counts["dns_icmp.pcap"][:2] == (32, 0)
    assert counts["nb6-http.pcap"][:2] == (62, 0)  # PPPoE: parsed to layer 2, not malformed
    # Both truncated DNS captures hold a response cut at 200 bytes by the capture (wirelen >
    # caplen): truncated, not malformed. truncated_dns_2.pcap also ends inside the next record
    # header: a warning, not an error. Without the wire length the same bytes lie about their size.
    for name in ("truncated_dns.pcap", "truncated_dns_2.pcap"):
        cut, warn = _parse_all(files[name])
        assert len(cut) == 1 and cut[0].truncated and not cut[0].malformed and cut[0].sport == 53
        assert cut[0].wirelen > len(cut[0].data) == 200
        assert (warn is not None) == (name == "truncated_dns_2.pcap")
        assert Packet(cut[0].data).reason == "ipv4 total length beyond frame"
    assert "truncated capture" in _parse_all(files["truncated_dns_2.pcap"])[1]


def test_gopacket_pcaps() -> None:
    for f in _files(f"{GOPACKET}/pcap/*.pcap", "gopacket's test captures"):
        pkts, warn = _parse_all(f)
        assert pkts and warn is None
        _check_all(pkts)
        assert not any(p.malformed for p in pkts), [p.reason for p in pkts if p.malformed]
    loop = _parse_all(f"{GOPACKET}/pcap/test_loopback.pcap")[0]
    assert loop[0].linktype == 0 and all(p.ip_version in (4, 6) for p in loop)


def _tshark_frames(paths: list[str], tmp: Path) -> list[tuple[int, int, float]]:
    """(encapsulation, captured length, time) of the packet frames tshark sees in ``paths``, in order.

    One mergecap + one tshark run for all files (a tshark start costs a third of a second).
    Frames without an encapsulation are pcapng custom blocks that tshark shows as frames.
    """
    merged = tmp / "merged.pcapng"
    subprocess.run(
        [need_tool("mergecap"), "-a", "-w", str(merged), *paths], check=True, timeout=60, capture_output=True
    )
    out = subprocess.run(
        [
            need_tool("tshark"),
            "-n",
            "-r",
            str(merged),
            "-T",
            "fields",
            "-e",
            "frame.encap_type",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.time_epoch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [ln.split("\t") for ln in out.stdout.splitlines()]
    return [(int(e), int(c), float(t or 0)) for e, c, t in rows if e]


@pytest.mark.parametrize("order", ["le", "be"])
def test_gopacket_pcapng_suite(order: str, tmp_path: Path) -> None:
    files = _files(f"{GOPACKET}/pcapgo/tests/{order}/*.pcapng", "gopacket's pcapng test files")
    assert len(files) >= 25
    ours: list[tuple[int, int]] = []
    good: list[str] = []
    for f in files:
        name = Path(f).name
        if name in BROKEN_PCAPNG:
            r = PcapngReader(f)
            got = []
            with pytest.raises(PcapError, match=BROKEN_PCAPNG[name]):
                for rec in r:
                    got.append(rec)
            assert len(got) == 1  # the first section is fine, as gopacket expects
            r.close()
            # the option to skip sections of unknown versions reads the other two sections
            with PcapngReader(f, skip_unknown_versions=True) as r2:
                assert len(list(r2)) == 2
            continue
        pkts, warn = _parse_all(f)
        assert warn is None, (name, warn)
        _check_all(pkts)
        # wireshark's encapsulation numbers: 1 = Ethernet, 15 = null/loopback
        ours += [({1: 1, 0: 15}[p.linktype], len(p.data), p.ts) for p in pkts]
        good.append(f)
    assert len(ours) > 50
    theirs = _tshark_frames(good, tmp_path)
    assert [o[:2] for o in ours] == [t[:2] for t in theirs]
    # timestamps: per-interface if_tsresol (decimal and binary) and if_tsoffset, as tshark reads them
    assert all(abs(o[2] - t[2]) < 2e-6 for o, t in zip(ours, theirs))


def test_sip_tester_captures() -> None:
    files = _files(f"{SIPP}/*.pcap", "sip-tester's RTP captures")
    total = 0
    for f in files:
        pkts, warn = _parse_all(f)
        assert warn is None
        _check_all(pkts)
        for p in pkts:
            assert not p.malformed, (f, p.reason)
            assert p.proto == 17 and p.sport >= 0  # RTP over UDP
        total += len(pkts)
    assert total > 100


# --- field by field against tshark ---------------------------------------------------------------
FIELDS = [
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags",
    "tcp.seq_raw",
    "vlan.id",
    "ip.proto",
    "frame.len",
]


def tshark_fields(path: str | Path) -> list[dict[str, str]]:
    """Per frame, the outermost value of each of FIELDS as tshark dissects it."""
    args = [need_tool("tshark"), "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f"]
    for f in FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [dict(zip(FIELDS, ln.split("\t"))) for ln in out.stdout.splitlines()]


def compare_with_tshark(path: str | Path) -> int:
    """Assert our fields equal tshark's on every frame we parsed; return how many were compared."""
    ours = [Packet(d, ts, "", wl, lt) for ts, d, wl, lt, _i in read_records(path)]
    theirs = tshark_fields(path)
    assert len(ours) == len(theirs)
    n = 0
    for i, (p, t) in enumerate(zip(ours, theirs), 1):
        if p.malformed:
            continue
        where = f"{path} frame {i}"
        assert int(t["frame.len"]) == p.wirelen, where
        if p.ip_version == 4:
            assert (format_addr(p.src), format_addr(p.dst)) == (t["ip.src"], t["ip.dst"]), where
            assert int(t["ip.proto"]) == p.proto or p.proto not in (6, 17), where
        elif p.ip_version == 6:
            assert (format_addr(p.src), format_addr(p.dst)) == (t["ipv6.src"], t["ipv6.dst"]), where
        if p.proto == 6 and p.sport >= 0:
            assert (p.sport, p.dport) == (int(t["tcp.srcport"]), int(t["tcp.dstport"])), where
            assert p.tcp_flags == int(t["tcp.flags"], 16) & 0xFF, where
            assert p.tcp_seq == int(t["tcp.seq_raw"]), where
        elif p.proto == 17 and p.sport >= 0:
            assert (p.sport, p.dport) == (int(t["udp.srcport"]), int(t["udp.dstport"])), where
        if p.vlans:
            assert int(t["vlan.id"]) in p.vlans, where  # tshark names an 802.1ad outer tag differently
        n += 1
    return n


@pytest.mark.parametrize(
    "path",
    [
        f"{DPKT}/http.pcap",
        f"{DPKT}/dns_icmp.pcap",
        f"{GOPACKET}/pcap/test_ethernet.pcap",
        f"{GOPACKET}/pcap/test_dns.pcap",
        f"{GOPACKET}/pcap/test_loopback.pcap",
        f"{SIPP}/g711a.pcap",
    ],
)
def test_fields_match_tshark_on_real_captures(path: str) -> None:
    need_path(path, "a real capture")
    assert compare_with_tshark(path) > 0


def test_real_checksums_verify() -> None:
    # Captures taken on the wire carry right checksums (http.pcap is a classic Wireshark sample).
    pkts = _parse_all(f"{need_path(DPKT, 'dpkt examples')}/http.pcap")[0]
    results = [verify_checksums(p) for p in pkts]
    assert all(all(r.values()) for r in results)
    assert sum("tcp" in r for r in results) > 30
