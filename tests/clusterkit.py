"""Helpers for the cluster tests: agents as real processes, ``e2actors run`` as a real process,
Prometheus text scraped from an agent, test certificates.

An agent is ``python -m e2actors agent ...`` (optionally inside a network namespace); it prints
``METRICS <url>`` (with ``--metrics-port``) and ``READY <address>``. Its stderr (the log: auth
failures, refused spawns) goes to a file the test can read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def env_with_tests() -> dict[str, str]:
    """The environment for child processes: ``tests/`` importable (test pipelets), unbuffered."""
    return dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]))


@dataclass
class Agent:
    name: str
    proc: subprocess.Popen
    address: str
    metrics_url: str | None
    log: Path
    netns: str | None = None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        """The agent's Prometheus text (fetched inside its namespace when it has one)."""
        assert self.metrics_url is not None
        if self.netns is None:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
                return r.read().decode()
        r = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-sS", "--max-time", "5", self.metrics_url],
                           capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"scraping {self.name}: {r.stderr}")
        return r.stdout

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_agent(tmp: Path, name: str, listen: str, secret_file: Path, *, cores: int = 2,
                extra: list[str] | None = None, netns: str | None = None, metrics: bool = True,
                procs: list | None = None) -> Agent:
    """Start ``e2actors agent`` and wait for its READY line. Unless ``extra`` says otherwise, its
    data directory is ``tmp/data-NAME`` holding a copy of the seed example's rules (an agent reads
    the files NF configs name from its own data directory)."""
    log = tmp / f"agent-{name}.log"
    extra = list(extra or [])
    if "--data-dir" not in extra and "--unconfined" not in extra:
        data = tmp / f"data-{name}"
        if not (data / "rules").exists():
            shutil.copytree(ROOT / "examples" / "seed" / "rules", data / "rules")
        extra += ["--data-dir", str(data)]
    cmd = [sys.executable, "-m", "e2actors", "agent", "--listen", listen, "--secret-file", str(secret_file),
           "--name", name, "--cores", str(cores), "--heartbeat-timeout", "1.5", *extra]
    if metrics:
        cmd += ["--metrics-port", "0"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    with open(log, "wb") as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, text=True,
                                env=env_with_tests(), start_new_session=True, cwd=str(tmp))
    if procs is not None:
        procs.append(proc)
    found: dict[str, str] = {}

    def read() -> None:  # in a thread: the lines arrive together, select() on a buffered pipe misses them
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("METRICS "):
                found["metrics"] = line.split()[1]
            elif line.startswith("READY "):
                found["address"] = line.split()[1]
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(20)
    if "address" in found:
        return Agent(name, proc, found["address"], found.get("metrics"), log, netns)
    proc.kill()
    raise RuntimeError(f"agent {name} did not start (exit {proc.poll()}): {log.read_text(errors='replace')}")


def run_cli(args: list[str], cwd: Path, timeout: float = 60, netns: str | None = None) -> subprocess.CompletedProcess:
    """``e2actors ARGS`` as a real process."""
    cmd = [sys.executable, "-m", "e2actors", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(cwd), env=env_with_tests())


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def make_certs(d: Path) -> tuple[str, str, str]:
    """A CA and one node certificate it signs (every node uses it: the CA is what is checked)."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=e2-test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=node", "-keyout", str(d / "node.key"),
        "-out", str(d / "node.csr"))
    run("x509", "-req", "-in", str(d / "node.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-days", "1", "-out", str(d / "node.pem"))
    return str(d / "node.pem"), str(d / "node.key"), str(d / "ca.pem")
