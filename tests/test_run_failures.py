"""Runs that go wrong say so: the exit status and the summary tell the truth (real processes,
a real full file system)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clusterkit import env_with_tests
from conftest import TESTS, need_root, need_tool

ROOT = TESTS.parent
POLICY = ROOT / "examples" / "seed" / "policy.yaml"
TRAFFIC = ROOT / "examples" / "seed" / "traffic.pcap"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2actors", "run", str(POLICY), *args], cwd=cwd,
                          env=env_with_tests(), capture_output=True, text=True, timeout=120)


def test_a_truncated_capture_fails_the_run(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(TRAFFIC.read_bytes()[:500_000])  # a record cut in the middle
    r = run(["--traffic", str(cut), "--json"], tmp_path)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert any("truncated capture" in f for f in s["failures"]), s["failures"]
    # One line for the operator, no traceback, no Python warning.
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert err and all(x.startswith("e2actors run: failed: ") for x in err), r.stderr
    # What was read before the cut went through the policy and is accounted for.
    assert s["packets_in"] > 0 and s["lost"] == 0


def test_a_full_disk_under_out_pcap_fails_the_run_with_the_path(tmp_path: Path) -> None:
    need_root()
    need_tool("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "out.pcap"
        r = run(["--traffic", str(TRAFFIC), "--out-pcap", str(out), "--json"], tmp_path)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert any(str(out) in f and "No space left on device" in f for f in s["failures"]), s["failures"]
    # What could not be written is counted, not lost: every packet is still accounted for.
    assert s["drops"].get("port out: output failed", 0) > 0
    assert s["lost"] == 0
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values())
