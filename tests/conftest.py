"""Shared test helpers: tools and privileges that some tests need.

On a laptop a test that needs root, network namespaces or an external tool skips with a reason.
In CI (``E2_REQUIRE_ROOT=1``) the same test fails instead, so nothing silently goes untested.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("E2_REQUIRE_ROOT") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"E2_REQUIRE_ROOT=1 but {reason}")
    pytest.skip(reason)


def need_root() -> None:
    """Skip (or fail in CI) unless running as root."""
    if os.geteuid() != 0:
        _missing("needs root")


def need_tool(name: str) -> str:
    """Return the path of executable ``name``; skip (or fail in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        _missing(f"needs the {name!r} program (installed by ./dev.sh test as root)")
    return path  # type: ignore[return-value]


def need_path(path: str, what: str) -> str:
    """Return ``path`` if it exists; skip (or fail in CI) otherwise."""
    if not os.path.exists(path):
        _missing(f"needs {what} at {path} (installed by ./dev.sh test as root)")
    return path


# --- waiting on conditions --------------------------------------------------------------------------
import asyncio  # noqa: E402
import inspect  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


async def eventually(condition: Callable[[], Any], timeout: float = 10.0, *, what: str = "",
                     poll: float = 0.01, blocking: bool = False) -> Any:
    """Wait until ``condition()`` is true and return its value; fail the test (AssertionError
    naming ``what`` and the last value) if it is not within ``timeout`` seconds. ``condition``
    may be a coroutine function (an ask, say); ``blocking``: it does I/O of its own (scraping an
    agent's metrics), so it runs in a thread. Tests wait on conditions, never on the clock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if blocking:
            value = await loop.run_in_executor(None, condition)
        else:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {what or _describe(condition)} (last: {value!r:.200})")
        await asyncio.sleep(poll)


def eventually_blocking(condition: Callable[[], Any], timeout: float = 10.0, *, what: str = "",
                        poll: float = 0.05) -> Any:
    """:func:`eventually` for a test without an event loop (a subprocess, an HTTP endpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {what or _describe(condition)} (last: {value!r:.200})")
        time.sleep(poll)


def _describe(condition: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


# --- peer processes ---------------------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

TESTS = Path(__file__).resolve().parent
SECRET = b"test-secret-0123456789"


class PeerProcess:
    """A node in another OS process (tests/peer_node.py), with its address."""

    def __init__(self, proc: subprocess.Popen, address: str) -> None:
        self.proc = proc
        self.address = address

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(SECRET)
    return p


@pytest.fixture
def agents(tmp_path: Path, secret_file: Path) -> Iterator:
    """Factory: ``agents(name, extra=[...])`` starts an ``e2actors agent`` process on loopback
    with the test secret (its options ``extra``); all are stopped after the test."""
    from clusterkit import start_agent

    started: list = []

    def start(name: str, extra: list[str] | None = None):
        a = start_agent(tmp_path, name, "tcp://127.0.0.1:0", secret_file, extra=extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


@pytest.fixture
def peer_process(tmp_path: Path, secret_file: Path) -> Iterator:
    """Factory: ``peer_process(listen, name=..., secret=..., extra=[...])`` starts a peer node."""
    procs: list[PeerProcess] = []

    def start(listen: str, name: str = "peer", secret: bytes | None = None, extra: list[str] | None = None) -> PeerProcess:
        sf = secret_file
        if secret is not None:
            sf = tmp_path / f"secret-{name}"
            sf.write_bytes(secret)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-c", "import peer_node; peer_node.main()", "--listen", listen,
               "--secret-file", str(sf), "--name", name, *(extra or [])]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            proc.kill()
            raise RuntimeError(f"peer node did not start: {line!r}")
        pp = PeerProcess(proc, line.split()[1])
        procs.append(pp)
        return pp

    yield start
    for p in procs:
        p.kill()
