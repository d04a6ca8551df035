"""Network namespaces and veth pairs for end-to-end tests, always cleaned up.

Names carry a per-run prefix so parallel or aborted runs never collide, and ``Lab.close`` (also
run by the fixture when a test fails) deletes every namespace and link it made and kills every
process it started. Test hosts get addresses from 198.18.0.0/15 (the benchmarking range).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(shlex.split(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Lab:
    """A set of namespaces and links. ``prefix`` keeps names unique (<= 15 chars for links)."""

    def __init__(self, tag: str = "e2") -> None:
        self.prefix = f"{tag}{os.getpid() % 10000}"
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        sh(f"ip netns add {full}")
        self.namespaces.append(full)
        sh(f"ip -n {full} link set lo up")
        return full

    def veth(self, a: str, b: str, ns_a: str | None = None, ns_b: str | None = None) -> tuple[str, str]:
        """A veth pair ``a``<->``b`` (names get the prefix), moved into the given namespaces."""
        la, lb = f"{self.prefix}{a}"[:15], f"{self.prefix}{b}"[:15]
        sh(f"ip link add {la} type veth peer name {lb}")
        self.links.append(la)
        for link, ns in ((la, ns_a), (lb, ns_b)):
            if ns:
                sh(f"ip link set {link} netns {ns}")
            pre = f"ip -n {ns} " if ns else "ip "
            sh(pre + f"link set {link} up")
            ex = f"ip netns exec {ns} " if ns else ""
            # Wire-sized frames with complete checksums: no segmentation or checksum offload.
            sh(ex + f"ethtool -K {link} tx off rx off tso off gso off gro off", check=False)
            sh(ex + f"sysctl -qw net.ipv6.conf.{link}.disable_ipv6=1", check=False)
        return la, lb

    def addr(self, ns: str, link: str, cidr: str) -> None:
        sh(f"ip -n {ns} addr add {cidr} dev {link}")

    def run(self, ns: str | None, cmd: list[str], **kw) -> subprocess.Popen:
        full = (["ip", "netns", "exec", ns] if ns else []) + cmd
        p = subprocess.Popen(full, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def exec(self, ns: str, cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *shlex.split(cmd)], capture_output=True,
                              timeout=timeout)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for link in self.links:
            sh(f"ip link del {link}", check=False)
        for ns in self.namespaces:
            sh(f"ip netns del {ns}", check=False)
        self.procs.clear()
        self.links.clear()
        self.namespaces.clear()


def wait_port(ns: str, host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port inside ``ns``."""
    deadline = time.time() + timeout
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"
    while time.time() < deadline:
        r = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} in {ns}")
