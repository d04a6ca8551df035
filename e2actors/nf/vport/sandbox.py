"""A network namespace wired to ours by veth pairs, and the programs that run in it.

Made with the tools Linux ships (``ip netns``, ``ip link``, ``ethtool``), as root. One
:class:`Sandbox` per NF instance: a namespace named ``e2v-PID-TOKEN`` (the PID of the process that
made it, so a later process can remove what a killed one left behind: :func:`sweep_stale`), one
veth pair per program interface (the program's end is named as the program expects, e.g. ``in0``,
inside the namespace; our end gets a unique name here), offloads off on both ends (frames are
wire-sized, with complete checksums) and IPv6 off unless asked (no router solicitations or MLD
reports coming out of the program's interfaces as if they were traffic).

Programs run through ``ip netns exec`` in their own session (so a signal reaches the program and
its children), with ``PR_SET_PDEATHSIG`` so they die with the process that started them, their
output going to a log file. :meth:`Sandbox.destroy` kills whatever still runs in the namespace,
then deletes it (which deletes its veth pairs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
from collections.abc import Mapping, Sequence

from e2actors.nf.vport.config import VPortError

__all__ = ["NS_PREFIX", "Sandbox", "sweep_stale"]

NS_PREFIX = "e2v-"
_OFFLOADS = ("tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off")
_PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def run_cmd(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 30.0,
                  cwd: str | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` to its end: ``(exit code, stdout and stderr)``; a program that is missing
    gives 127, one past ``timeout`` is killed (-9)."""
    try:
        p = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=cwd,
            env=dict(env) if env is not None else None, start_new_session=True)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    try:
        out, _ = await asyncio.wait_for(p.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        await p.wait()
        return -9, f"{' '.join(argv)}: no answer in {timeout:g} s (killed)"
    return p.returncode or 0, out.decode(errors="replace")


async def _must(argv: Sequence[str], what: str, stdin: bytes | None = None) -> str:
    rc, out = await run_cmd(argv, stdin=stdin)
    if rc != 0:
        raise VPortError(f"{what} failed ({' '.join(argv[:6])}...: exit {rc}): {out.strip()[-500:]}")
    return out


class Sandbox:
    """A namespace with one veth pair per name in ``ifaces``. :attr:`links` maps each program
    interface to our end of its pair once :meth:`create` ran."""

    _made = 0

    def __init__(self, ifaces: Sequence[str], mtu: int = 1500, ipv6: bool = False) -> None:
        token = secrets.token_hex(4)
        self.ns = f"{NS_PREFIX}{os.getpid()}-{token}"
        self.ifaces = list(ifaces)
        self.mtu = mtu
        self.ipv6 = ipv6
        #: program interface -> our end of the pair (<= 15 characters).
        self.links = {name: f"e2v{token}{i}" for i, name in enumerate(self.ifaces)}
        self.created = False

    async def create(self) -> None:
        """Make the namespace and the pairs, up, offloads off. Raises :class:`VPortError`."""
        await _must(["ip", "netns", "add", self.ns], "making the network namespace")
        self.created = True
        if not self.ipv6:
            await run_cmd(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                           "net.ipv6.conf.default.disable_ipv6=1"])
        lines = [f"link add {ours} mtu {self.mtu} type veth peer name {name} mtu {self.mtu} netns {self.ns}"
                 for name, ours in self.links.items()]
        await _must(["ip", "-batch", "-"], "making the veth pairs", stdin="\n".join(lines).encode() + b"\n")
        for ours in self.links.values():
            # (before the link is up: no IPv6 link-local address, no solicitations into the program)
            with contextlib.suppress(OSError):
                with open(f"/proc/sys/net/ipv6/conf/{ours}/disable_ipv6", "w") as f:
                    f.write("1")
        up = "".join(f"link set {ours} up\n" for ours in self.links.values())
        await _must(["ip", "-batch", "-"], "bringing our ends up", stdin=up.encode())
        up_ns = "link set lo up\n" + "".join(f"link set {name} up\n" for name in self.links)
        await _must(["ip", "-n", self.ns, "-batch", "-"], "bringing the program's interfaces up", stdin=up_ns.encode())
        jobs = [run_cmd(["ethtool", "-K", ours, *_OFFLOADS]) for ours in self.links.values()]
        jobs += [run_cmd(["ip", "netns", "exec", self.ns, "ethtool", "-K", name, *_OFFLOADS]) for name in self.links]
        await asyncio.gather(*jobs)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    async def run(self, argv: Sequence[str], timeout: float = 30.0, cwd: str | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Run ``argv`` in the namespace to its end: ``(exit code, output)``."""
        return await run_cmd(self.exec_argv(argv), timeout=timeout, cwd=cwd, env=env)

    async def start(self, argv: Sequence[str], log_path: str, cwd: str | None = None,
                    env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
        """Start ``argv`` in the namespace, its output appended to ``log_path``; it dies with us."""
        global _libc
        if _libc is None:
            with contextlib.suppress(OSError):
                _libc = ctypes.CDLL(None, use_errno=True)
        with open(log_path, "ab") as log:
            return await asyncio.create_subprocess_exec(
                *self.exec_argv(argv), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True,
                preexec_fn=_die_with_parent)

    async def pids(self) -> list[int]:
        """Processes running in the namespace."""
        rc, out = await run_cmd(["ip", "netns", "pids", self.ns])
        return [int(x) for x in out.split() if x.isdigit()] if rc == 0 else []

    async def destroy(self) -> None:
        """Kill what runs in the namespace, delete it and our ends of the pairs (best effort)."""
        if self.created:
            for pid in await self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            rc, _ = await run_cmd(["ip", "netns", "del", self.ns])
            self.created = False
            if rc == 0:
                return  # (the pairs go with the namespace: the kernel deletes them shortly after)
        await asyncio.gather(*(run_cmd(["ip", "link", "del", ours]) for ours in self.links.values()
                               if os.path.exists(f"/sys/class/net/{ours}")))


async def sweep_stale() -> list[str]:
    """Delete the namespaces (and what runs in them) that processes now dead left behind."""
    rc, out = await run_cmd(["ip", "netns", "list"])
    gone = []
    if rc != 0:
        return gone
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        pid = name[len(NS_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its maker still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        sb = Sandbox([])
        sb.ns = name
        sb.created = True
        await sb.destroy()
        gone.append(name)
    return gone
