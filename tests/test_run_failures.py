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


def test_a_capture_corrupt_in_the_middle_fails_the_run_and_keeps_every_good_record(tmp_path: Path) -> None:
    # 1,000 good records, then a record header claiming 16 MB: the reader refuses it (PcapError);
    # every record before it still goes through the policy (none of the batch being read is lost).
    import struct

    from e2actors.packet.pcap import PcapWriter
    from e2actors.packet.traffic import generate

    bad = tmp_path / "bad.pcap"
    pkts = generate(flows=200, seed=4)[:1000]
    with PcapWriter(bad) as w:
        for p in pkts:
            w.write(p.data, p.ts, p.wirelen)
    with open(bad, "ab") as f:
        f.write(struct.pack("<IIII", 1, 0, 16 << 20, 16 << 20) + b"x" * 100)
    r = run(["--traffic", str(bad), "--json"], tmp_path)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert any("exceeds" in f and "bad.pcap" in f for f in s["failures"]), s["failures"]
    assert s["packets_in"] == 1000 and s["lost"] == 0
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values())


def run_on_a_small_disk(tmp_path: Path, mount: str, size: str, args: list[str]) -> subprocess.CompletedProcess:
    """``run(args)`` in ``tmp_path`` with a tmpfs of ``size`` mounted at ``tmp_path/mount``
    (unmounted afterwards, also when the run fails)."""
    need_root()
    need_tool("mount")
    disk = tmp_path / mount
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        return run(args, tmp_path)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_under_out_pcap_fails_the_run_with_the_path(tmp_path: Path) -> None:
    out = tmp_path / "disk" / "out.pcap"
    r = run_on_a_small_disk(tmp_path, "disk", "200k", ["--traffic", str(TRAFFIC), "--out-pcap", str(out), "--json"])
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert any(str(out) in f and "No space left on device" in f for f in s["failures"]), s["failures"]
    # What could not be written is counted, not lost: every packet is still accounted for.
    assert s["drops"].get("port out: output failed", 0) > 0
    assert s["lost"] == 0
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values())


def test_a_full_disk_under_a_logger_fails_the_run_with_the_path(tmp_path: Path) -> None:
    # The running example's Logger writes out/unsafe.pcap (and .jsonl) under the run's directory:
    # a 16 KiB tmpfs there fills up. The run fails naming the file; every packet is accounted for.
    r = run_on_a_small_disk(tmp_path, "out", "16k", ["--traffic", str(TRAFFIC), "--json"])
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert any("No space left on device" in f and "unsafe." in f for f in s["failures"]), s["failures"]
    assert any(e.get("type") == "OSError" and "unsafe." in e.get("message", "") for e in s["errors"]), s["errors"]
    assert s["lost"] == 0
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values())
    assert any(i["nf"] == "logger" for i in s["instances"].values())  # (shown, not gone)


def test_operator_mistakes_get_one_line(tmp_path: Path) -> None:
    import socket

    r = run(["--traffic", str(tmp_path / "missing.pcap")], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"e2actors run: --traffic {tmp_path / 'missing.pcap'}: No such file or directory", r.stderr
    r = run(["--traffic", str(POLICY)], tmp_path)  # not a capture
    assert r.returncode == 2 and "not a pcap file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run(["--traffic", str(TRAFFIC), "--out-pcap", str(tmp_path / "no" / "such" / "dir" / "o.pcap")], tmp_path)
    assert r.returncode == 2 and "no directory" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(["--traffic", str(TRAFFIC), "--metrics-port", str(port)], tmp_path)
    assert r.returncode == 2 and f"--metrics-port {port}" in r.stderr and "Traceback" not in r.stderr
    v = subprocess.run([sys.executable, "-m", "e2actors", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("e2actors ")


def test_an_agents_operator_mistakes_get_one_line(tmp_path: Path) -> None:
    import socket

    secret = tmp_path / "secret"
    secret.write_text("s" * 40)

    def agent(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "e2actors", "agent", "--data-dir", str(tmp_path / "data"), *args],
                              env=env_with_tests(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            "cannot read the secret file": ["--listen", "tcp://127.0.0.1:0", "--secret-file", str(tmp_path / "nope")],
            "cannot listen on bogus://x": ["--listen", "bogus://x", "--secret-file", str(secret)],
            f"cannot listen on tcp://127.0.0.1:{port}": ["--listen", f"tcp://127.0.0.1:{port}",
                                                         "--secret-file", str(secret)],
            "cannot serve metrics": ["--listen", "tcp://127.0.0.1:0", "--secret-file", str(secret),
                                     "--metrics-port", str(port)],
        }
        for what, args in cases.items():
            r = agent(*args)
            assert r.returncode == 1 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)


def test_runs_and_plans_leave_no_temporary_files(tmp_path: Path) -> None:
    # A run with workers (their sockets and secret file) over generated traffic (its capture), and
    # a Manager that only plans: nothing left in the temporary directory afterwards.
    from e2actors.manager.manager import Manager
    from e2actors.manager.policy import Policy

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", str(POLICY), "--gen", "40", "--workers", "2",
                        "--json"], cwd=tmp_path, env={**env_with_tests(), "TMPDIR": str(tmp)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert sorted(p.name for p in tmp.iterdir()) == []
    mgr = Manager()
    mgr.plan(Policy.load(POLICY))
    assert mgr.deployment._tmpdir is None  # (made only when a worker needs it)


def test_sigint_during_a_run_prints_the_summary_so_far_and_exits_130(tmp_path: Path) -> None:
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "e2actors", "run", str(POLICY), "--traffic", str(TRAFFIC),
                          "--speed", "0.2", "--json"], cwd=tmp_path, env=env_with_tests(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until it is under way (its logger has written something), then interrupt it.
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size for f in tmp_path.glob("out/unsafe.jsonl*")):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()[1]
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    s = json.loads(out)
    assert not s["completed"] and s["stopped_by"] == "SIGINT"
    assert 0 < s["packets_in"] < 2853 and s["lost"] == 0
    assert "Traceback" not in err


def test_a_pipelet_next_to_the_user_is_found(tmp_path: Path) -> None:
    (tmp_path / "mynf.py").write_text(
        "from e2actors import Pipelet\n\n"
        "class Tag(Pipelet):\n"
        "    async def process(self, batch):\n"
        "        for p in batch:\n"
        "            p.meta['tag'] = 1\n"
        "            self.emit(p)\n")
    (tmp_path / "pol.yaml").write_text(
        'name: own\nnfs:\n  tag: {class: "mynf:Tag", cost_pps: 100000}\n'
        'classes:\n  - {name: all, filter: "", load_pps: 1000}\n'
        "edges:\n  - {from: in, to: tag}\n  - {from: tag, to: out}\n")
    exe = Path(sys.executable).parent / "e2actors"  # the console script, as a user types it
    for cwd, pol in ((tmp_path, "pol.yaml"), (tmp_path.parent, str(tmp_path / "pol.yaml"))):
        r = subprocess.run([str(exe), "run", pol, "--traffic", str(TRAFFIC), "--json", "--workers", "2"], cwd=cwd,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["packets_out"] > 0


def test_a_pipelet_that_raises_is_in_the_account_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "from e2actors import Pipelet\n\n"
        "class Bad(Pipelet):\n"
        "    async def process(self, batch):\n"
        "        for p in batch:\n"
        "            if p.proto == 17:\n"
        "                raise ValueError('udp is not welcome')\n"
        "            self.emit(p)\n")
    (tmp_path / "pol.yaml").write_text(
        'name: bad\nnfs:\n  bad: {class: "bad:Bad", cost_pps: 100000}\n'
        'classes:\n  - {name: all, filter: "", load_pps: 1000}\n'
        "edges:\n  - {from: in, to: bad}\n  - {from: bad, to: out}\n")
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", "pol.yaml", "--traffic", str(TRAFFIC), "--json",
                        "--no-autoscale"], cwd=tmp_path, env=env_with_tests(), capture_output=True, text=True,
                       timeout=120)
    # It crashed on every batch with UDP in it, was restarted, and failed for good: the run fails.
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    errs = [e for e in s["errors"] if e.get("type") == "ValueError"]
    assert errs and errs[0]["where"] == f"{tmp_path / 'bad.py'}:7" and errs[0]["count"] >= 2, s["errors"]
    inst = s["instances"]["bad#1"]
    assert inst["state"] == "failed" and inst["restarts"] >= 1
    assert inst["in"] > 256  # (counters went on across restarts)
    assert any("bad#1 failed" in f for f in s["failures"])
    assert s["lost"] == 0 and s["congestion_drops"] == 0  # every packet is accounted for, by reason


def test_fail_on_drop_makes_chosen_drop_reasons_fail_the_run(tmp_path: Path) -> None:
    base = ["--traffic", str(TRAFFIC), "--json"]
    ok = run(base + ["--fail-on-drop", "*queue full*", "--fail-on-drop", "ids: *"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    s = json.loads(ok.stdout)
    blocked = {k: n for k, n in s["drops"].items() if k.startswith("parental: blocked host")}
    assert blocked, s["drops"]
    bad = run(base + ["--fail-on-drop", "parental: blocked host *"], tmp_path)
    assert bad.returncode == 1
    s = json.loads(bad.stdout)
    assert len(s["failures"]) == len(blocked)
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("e2actors run: failed:")]
    assert len(lines) == len(blocked) and all("--fail-on-drop" in ln for ln in lines)
    assert {ln.split(" packets dropped as ")[0].split()[-1] for ln in lines} == {f"{n:,}" for n in blocked.values()}
