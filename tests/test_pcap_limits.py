"""Hostile capture files: lengths that the header or a record claims are capped, whatever the snap
length says, and a length the file does not back costs no memory. Each reader runs in a child
process under an address-space limit (RLIMIT_AS), so an allocation of the claimed size would fail
the test; tcpdump reads the same crafted files for comparison."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from e2actors.packet.pcap import MAX_CAPLEN, max_caplen

sys.path.insert(0, os.path.dirname(__file__))
from conftest import need_tool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FRAME = bytes.fromhex("ffffffffffff0011223344550800") + bytes(46)  # 60 bytes, Ethernet


def pcap(snaplen: int, records: list[tuple[int, bytes]], linktype: int = 1) -> bytes:
    """A classic pcap: each record ``(caplen as claimed, the bytes really present)``."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
    for i, (caplen, data) in enumerate(records, 1):
        out += struct.pack("<IIII", i, 0, caplen, max(caplen, len(data))) + data
    return out


def _block(btype: int, body: bytes, length: int | None = None) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body) if length is None else length
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


SHB = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
IDB = _block(1, struct.pack("<HHI", 1, 0, 0))  # Ethernet, snap length 0 (none)


def epb(data: bytes, caplen: int | None = None) -> bytes:
    caplen = len(data) if caplen is None else caplen
    return _block(6, struct.pack("<IIIII", 0, 0, 1, caplen, len(data)) + data)


# name -> (file bytes, what our reader must do: a record count, or the start of the PcapError)
CASES = {
    # the file: a snap length of 0xFFFFFFFF and a record claiming almost 4 GB
    "giant-snaplen": (pcap(0xFFFFFFFF, [(60, FRAME), (0xFFFFFFF0, FRAME)]),
                      "record 2 at offset 100: captured length 4294967280 exceeds the 262144-byte cap"),
    "over-the-cap": (pcap(0xFFFFFFFF, [(60, FRAME), (MAX_CAPLEN + 1, bytes(MAX_CAPLEN + 1))]),
                     "record 2 at offset 100: captured length 262145 exceeds the 262144-byte cap"),
    "at-the-cap": (pcap(0xFFFFFFFF, [(60, FRAME), (MAX_CAPLEN, bytes(MAX_CAPLEN)), (60, FRAME)]), 3),
    "longer-than-snaplen": (pcap(100, [(60, FRAME), (200_000, bytes(200_000))]), 2),   # libpcap reads it
    "pcapng-over-the-cap": (SHB + IDB + epb(FRAME) + epb(bytes(MAX_CAPLEN + 4)),
                            "offset 140: captured length 262148 exceeds the 262144-byte cap"),
    "pcapng-at-the-cap": (SHB + IDB + epb(FRAME) + epb(bytes(MAX_CAPLEN)) + epb(FRAME), 3),
}

READ = """
import sys, warnings
from e2actors.errors import PcapError
from e2actors.packet.pcap import read_records
warnings.simplefilter("ignore")
try:
    print(sum(1 for _ in read_records(sys.argv[1])))
except PcapError as e:
    print("PcapError", e)
"""


def _limit(mb: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    return apply


def read_limited(path: Path, mb: int = 128) -> str:
    """Read ``path`` with our reader in a child limited to ``mb`` MB of address space (the reader
    alone needs about 30 MB; the timeout guards against a hang)."""
    r = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True,
                       preexec_fn=_limit(mb), timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-800:]
    return r.stdout.strip()


@pytest.mark.parametrize("name", list(CASES))
def test_lengths_capped_under_a_memory_limit(tmp_path, name):
    data, want = CASES[name]
    f = tmp_path / f"{name}.pcap"
    f.write_bytes(data)
    out = read_limited(f)
    if isinstance(want, int):
        assert out == str(want), out
    else:
        assert out.startswith(f"PcapError {f}: ") and want in out, out


@pytest.mark.parametrize("name", list(CASES))
def test_tcpdump_reads_the_same_records(tmp_path, name):
    """tcpdump (libpcap) reads the same number of records and refuses the same files."""
    tcpdump = need_tool("tcpdump")
    data, want = CASES[name]
    f = tmp_path / f"{name}.pcap"
    f.write_bytes(data)
    r = subprocess.run([tcpdump, "-n", "-r", str(f)], capture_output=True, text=True, timeout=60)
    printed = len(r.stdout.splitlines())
    if isinstance(want, int):
        assert r.returncode == 0 and printed == want, r.stderr
    else:
        assert "invalid packet capture length" in r.stderr and printed == 1, r.stderr


def test_claimed_length_the_file_does_not_back_costs_no_memory(tmp_path):
    """A D-Bus record may be 128 MiB (libpcap's cap for that link type); one claiming 120 MiB in a
    short file is a truncated capture, read without allocating the 120 MiB (96 MB limit)."""
    assert max_caplen(231) == 128 * 1024 * 1024
    f = tmp_path / "dbus.pcap"
    f.write_bytes(pcap(0xFFFFFFFF, [(100, bytes(100)), (120 << 20, bytes(5000))], linktype=231))
    assert read_limited(f, mb=96) == "1"
    # a pcapng block that claims 16 MiB (the block cap) but stops short: the same
    g = tmp_path / "short-block.pcapng"
    g.write_bytes(SHB + IDB + epb(FRAME) + struct.pack("<II", 6, 16 * 1024 * 1024 - 4) + bytes(1000))
    assert read_limited(g, mb=40) == "1"
    h = tmp_path / "huge-block.pcapng"
    h.write_bytes(SHB + IDB + struct.pack("<II", 6, 0xFFFFFFF0) + bytes(100))
    assert read_limited(h, mb=40).startswith("PcapError") and "exceeds 16777216" in read_limited(h, mb=40)


def test_filter_command_reports_the_corrupt_record(tmp_path):
    """``e2actors filter`` on the issue's file: exit 2 with the reason, under a memory limit."""
    f = tmp_path / "giant.pcap"
    f.write_bytes(CASES["giant-snaplen"][0])
    r = subprocess.run([sys.executable, "-m", "e2actors", "filter", "ip", str(f)], capture_output=True,
                       text=True, preexec_fn=_limit(512), timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "record 2 at offset 100: captured length 4294967280 exceeds the 262144-byte cap" in r.stderr
