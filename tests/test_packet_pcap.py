"""pcap/pcapng reading and pcap writing, checked against hand-made files and tcpdump/tshark."""

from __future__ import annotations

import io
import struct
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import need_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2actors.errors import PcapError
from e2actors.packet.build import ether, ipv4, ipv6, tcp, udp
from e2actors.packet.packet import Packet
from e2actors.packet.pcap import (
    PcapngReader,
    PcapReader,
    PcapWriter,
    open_capture,
    read_packets,
    read_records,
    write_pcap,
)

A, B = "198.18.0.1", "198.19.0.2"
FRAMES = [
    ether(ipv4(A, B, 6, tcp(A, B, 1000 + i, 80, flags="PA", payload=b"x" * (i * 37 % 300)))) for i in range(20)
] + [ether(ipv6("2001:db8::1", "2001:db8::2", 17, udp("2001:db8::1", "2001:db8::2", 5, 6, b"u" * 50)))]


def _pcap(records, bo="<", ns=False, snaplen=65535, linktype=1) -> bytes:
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for sec, frac, data, wirelen in records:
        out += struct.pack(bo + "IIII", sec, frac, len(data), wirelen) + data
    return out


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("ns", [False, True])
def test_pcap_byte_orders_and_resolutions(bo: str, ns: bool) -> None:
    frac = 123456789 if ns else 123456
    blob = _pcap([(10, frac, FRAMES[0], len(FRAMES[0])), (11, 0, FRAMES[1][:60], len(FRAMES[1]))], bo, ns)
    r = PcapReader(io.BytesIO(blob))
    recs = list(r)
    assert r.nanosecond == ns and r.byteorder == bo and r.linktype == 1 and r.snaplen == 65535
    assert recs[0][0] == pytest.approx(10.123456789 if ns else 10.123456, abs=1e-9)
    assert recs[0][1] == FRAMES[0] and recs[0][2] == len(FRAMES[0])
    assert recs[1][1] == FRAMES[1][:60] and recs[1][2] == len(FRAMES[1])
    p = Packet(recs[1][1], wirelen=recs[1][2])
    assert p.truncated and not p.malformed


def test_pcap_errors_are_clear() -> None:
    with pytest.raises(PcapError, match="bad magic"):
        PcapReader(io.BytesIO(b"\0" * 24))
    with pytest.raises(PcapError, match="need 24"):
        PcapReader(io.BytesIO(b"\xd4\xc3\xb2\xa1"))
    huge = _pcap([]) + struct.pack("<IIII", 0, 0, 10_000_000, 10_000_000)
    with pytest.raises(PcapError, match="at offset 24: captured length 10000000 exceeds the 262144-byte cap"):
        list(PcapReader(io.BytesIO(huge)))
    with pytest.raises(PcapError, match="not a pcapng"):
        PcapngReader(io.BytesIO(_pcap([])))


def test_pcap_truncated_last_record_warns_and_counts() -> None:
    blob = _pcap([(1, 0, FRAMES[0], len(FRAMES[0])), (2, 0, FRAMES[1], len(FRAMES[1]))])
    r = PcapReader(io.BytesIO(blob[:-5]))
    with pytest.warns(RuntimeWarning, match="truncated capture"):
        recs = list(r)
    assert len(recs) == 1 and r.truncated and "captured bytes" in r.truncated
    r2 = PcapReader(io.BytesIO(blob[: 24 + 16 + len(FRAMES[0]) + 7]))
    with pytest.warns(RuntimeWarning):
        assert len(list(r2)) == 1
    assert "header" in r2.truncated


# --- pcapng ------------------------------------------------------------------------------------
def _block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def _opt(bo: str, code: int, val: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _pcapng(bo: str) -> bytes:
    shb = _block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb0 = _block(
        bo, 1, struct.pack(bo + "HHI", 1, 0, 0) + _opt(bo, 2, b"eth0") + _opt(bo, 9, b"\x09") + _opt(bo, 0, b"")
    )
    idb1 = _block(
        bo, 1, struct.pack(bo + "HHI", 101, 0, 64) + _opt(bo, 9, b"\x83") + _opt(bo, 14, struct.pack(bo + "q", 100))
    )
    t0 = 1_500_000_000_123_456_789  # nanoseconds on interface 0
    epb0 = _block(
        bo, 6, struct.pack(bo + "IIIII", 0, t0 >> 32, t0 & 0xFFFFFFFF, len(FRAMES[0]), len(FRAMES[0])) + FRAMES[0]
    )
    raw = FRAMES[2][14:]
    t1 = 8 * 5 + 3  # 2^-3 s units on interface 1: 5.375 s, plus the 100 s offset
    epb1 = _block(bo, 6, struct.pack(bo + "IIIII", 1, 0, t1, len(raw), len(raw) + 10) + raw)
    nrb = _block(bo, 4, b"\0\0\0\0")
    custom = _block(bo, 0x40000BAD, b"ignored")
    spb = _block(bo, 3, struct.pack(bo + "I", len(FRAMES[3])) + FRAMES[3])
    pb = _block(bo, 2, struct.pack(bo + "HHIIII", 0, 0, 0, 1_000_000, len(FRAMES[4]), len(FRAMES[4])) + FRAMES[4])
    return shb + idb0 + idb1 + epb0 + nrb + epb1 + custom + spb + pb


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_interfaces_resolutions_and_block_kinds(bo: str) -> None:
    r = open_capture(io.BytesIO(_pcapng(bo)))
    assert isinstance(r, PcapngReader)
    recs = list(r)
    assert [x[4] for x in recs] == [0, 1, 0, 0]
    assert [x[3] for x in recs] == [1, 101, 1, 1]
    assert recs[0][0] == pytest.approx(1_500_000_000.123456789, abs=1e-6) and recs[0][1] == FRAMES[0]
    assert recs[1][0] == pytest.approx(105.375) and recs[1][2] == len(FRAMES[2]) - 14 + 10
    assert recs[2][1] == FRAMES[3] and recs[2][0] == 0.0  # simple packet block: no timestamp
    assert recs[3][1] == FRAMES[4] and recs[3][0] == pytest.approx(
        0.001
    )  # obsolete packet block, interface 0 counts in ns
    assert r.interfaces == [(1, 0, "eth0"), (101, 64, "")]
    pk = Packet(recs[1][1], linktype=recs[1][3])
    assert pk.sport == 1002 and pk.l3_offset == 0


def test_pcapng_errors_are_clear() -> None:
    good = _pcapng("<")
    bad_trailer = good[:-4] + struct.pack("<I", 12)
    with pytest.raises(PcapError, match="does not match its trailer"):
        list(PcapngReader(io.BytesIO(bad_trailer)))
    bad_bom = good[:8] + b"\x11\x22\x33\x44" + good[12:]
    with pytest.raises(PcapError, match="byte-order magic"):
        list(PcapngReader(io.BytesIO(bad_bom)))
    # an EPB naming interface 5
    epb = _block("<", 6, struct.pack("<IIIII", 5, 0, 0, 4, 4) + b"abcd")
    with pytest.raises(PcapError, match="unknown interface 5"):
        list(PcapngReader(io.BytesIO(good + epb)))
    with pytest.raises(PcapError, match="bad block length"):
        list(PcapngReader(io.BytesIO(good + struct.pack("<II", 6, 13) + b"\0" * 8)))
    r = PcapngReader(io.BytesIO(good[:-10]))
    with pytest.warns(RuntimeWarning):
        assert len(list(r)) == 3
    assert r.truncated


# --- writing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ns", [False, True])
def test_write_read_roundtrip(tmp_path: Path, ns: bool) -> None:
    path = tmp_path / "out.pcap"
    with PcapWriter(path, nanosecond=ns) as w:
        for i, f in enumerate(FRAMES):
            w.write(f, ts=1_700_000_000 + i * 0.001001, wirelen=len(f) + (100 if i == 3 else 0))
    recs = list(read_records(path))
    assert [r[1] for r in recs] == FRAMES
    assert recs[3][2] == len(FRAMES[3]) + 100
    assert all(r[0] == pytest.approx(1_700_000_000 + i * 0.001001, abs=1e-6) for i, r in enumerate(recs))
    pk = list(read_packets(path, port="p0"))
    assert pk[0].port == "p0" and pk[0].dport == 80
    buf = io.BytesIO()
    assert write_pcap(buf, pk) == len(FRAMES)
    assert list(read_records(io.BytesIO(buf.getvalue())))[5][1] == FRAMES[5]


def test_writer_cuts_at_snaplen(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    with PcapWriter(path, snaplen=64) as w:
        w.write(FRAMES[10], 1.0)
    ((_ts, data, wirelen, _lt, _i),) = read_records(path)
    assert data == FRAMES[10][:64] and wirelen == len(FRAMES[10])


def _tshark(path: Path, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    exe = need_tool("tshark")
    args = [exe, "-n", "-r", str(path), *extra, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


@pytest.mark.parametrize("ns", [False, True])
def test_tcpdump_and_tshark_read_our_files(tmp_path: Path, ns: bool) -> None:
    tcpdump = need_tool("tcpdump")
    path = tmp_path / "ours.pcap"
    with PcapWriter(path, nanosecond=ns) as w:
        for i, f in enumerate(FRAMES):
            w.write(f, ts=1_700_000_000.25 + i, wirelen=len(f))
        w.write(FRAMES[7][:60], ts=1_700_000_100.5, wirelen=len(FRAMES[7]))
    out = subprocess.run([tcpdump, "-n", "-r", str(path), "-xx"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "truncated" not in out.stderr.lower() and "warning" not in out.stderr.lower()
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("\t")]
    assert len(lines) == len(FRAMES) + 1 and all(" IP " in ln or " IP6 " in ln for ln in lines)
    # bytes as tshark sees them
    rows = _tshark(path, "frame.len", "frame.cap_len", "frame.time_epoch")
    expect = [(len(f), len(f)) for f in FRAMES] + [(len(FRAMES[7]), 60)]
    assert [(int(r[0]), int(r[1])) for r in rows] == expect
    assert float(rows[1][2]) == pytest.approx(1_700_000_001.25)
    hexes = subprocess.run(
        [need_tool("tshark"), "-r", str(path), "-x"], capture_output=True, text=True, timeout=60
    ).stdout
    # the hex dump of the first frame contains its bytes
    first_row = " ".join(f"{b:02x}" for b in FRAMES[0][:16])
    assert first_row in hexes


def test_open_capture_reads_pipes() -> None:
    import os

    for blob in (_pcap([(1, 0, FRAMES[0], len(FRAMES[0]))]), _pcapng("<")):
        r, w = os.pipe()
        os.write(w, blob)
        os.close(w)
        with open(r, "rb") as f:
            assert not f.seekable()
            recs = list(read_records(f))
        assert recs[0][1] == FRAMES[0]


_BLOBS = [_pcapng("<"), _pcapng(">"), _pcap([(1, 0, f, len(f)) for f in FRAMES[:4]], ">", True)]


@settings(derandomize=True, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_BLOBS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 2000),
)
def test_corrupt_files_raise_pcap_error_or_warn(blob: bytes, flips, cut: int) -> None:
    """Whatever the damage, a reader yields records, warns about a truncated end, or raises PcapError."""
    buf = bytearray(blob)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    data = bytes(buf[: max(0, len(buf) - cut)]) if cut % 3 == 0 else bytes(buf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            for ts, frame, wirelen, lt, _if in open_capture(io.BytesIO(data)):
                assert isinstance(frame, bytes) and wirelen >= len(frame)
                Packet(frame, ts, "", wirelen, lt).flow_key  # noqa: B018
        except PcapError as e:
            assert str(e)
