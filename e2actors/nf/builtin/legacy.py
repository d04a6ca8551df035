"""``Legacy``: an external program as an NF, so existing software can sit in a chain.

The program reads raw Ethernet frames on its stdin and writes frames on its stdout, each frame
preceded by its length as a 4-byte big-endian integer. It may drop, rewrite, reorder or add
frames: whatever it writes leaves on ``out``. A frame that comes back byte for byte unchanged
gets its metadata back (the program never sees metadata); a changed frame starts with none.

Config: ``cmd`` (argv list or a shell-free string), ``max_frame`` (default 65535),
``max_inflight`` (frames written but not yet answered before new ones are dropped, default 10000).
The program's stderr is passed through to ours. If the program exits, the NF raises (the
supervisor restarts it, starting the program again).

A ``cmd`` is a program to run: on an agent it runs only if the agent was started with
``--allow-legacy PREFIX`` and the program's resolved path is under such a prefix (then it runs
with the data directory as its working directory); otherwise the deployment is refused with the
reason. Allowing a prefix that holds an interpreter or a shell allows any script it may be given.
"""

from __future__ import annotations

import asyncio
import collections
import shlex
import struct
from dataclasses import dataclass
from typing import Any

from e2actors.errors import ConfigError, E2Error
from e2actors.nf.config import config_number
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.packet import Packet
from e2actors.runtime.confine import Confinement, ConfinementError, process_confinement

__all__ = ["Legacy"]

_LEN = struct.Struct(">I")


@dataclass
class LegacyConfig:
    """The Legacy NF's config (checked at plan time)."""

    cmd: str | list[str] = ""
    max_frame: int = 65535
    max_inflight: int = 10_000


class Legacy(Pipelet):
    config_schema = LegacyConfig
    ports = ("out",)
    affinity = "flow"
    cost_pps = 50_000
    timer_interval = 0.005

    @staticmethod
    def _argv(config: dict[str, Any]) -> list[str]:
        cmd = config.get("cmd")
        if not cmd:
            raise ConfinementError("Legacy needs the program to run", "cmd")
        try:
            argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        except (ValueError, TypeError) as exc:
            raise ConfinementError(f"cannot read the command line: {exc}", "cmd") from None
        if not argv:
            raise ConfinementError("Legacy needs the program to run", "cmd")
        return argv

    @classmethod
    def validate_config(cls, config: dict[str, Any], base_dir: str = ".") -> None:
        """At plan time: a command line that can be read (whether the node may run it is the
        node's to say, :meth:`check_config`)."""
        super().validate_config(config, base_dir)
        try:
            cls._argv(config)
        except ConfinementError as exc:
            raise ConfigError("Legacy", exc.key, exc.reason) from None
        for key in ("max_frame", "max_inflight"):
            if key in config:
                config_number("Legacy", config, key, 1, minimum=1)

    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        confine.program(cls._argv(config)[0])

    async def setup(self, config: dict[str, Any]) -> None:
        try:
            argv = self._argv(config)
        except ConfinementError as exc:
            raise ConfigError("Legacy", exc.key, exc.reason) from None
        confine = self.confinement if self.confinement is not None else process_confinement()
        cwd = None
        if confine is not None:
            argv[0] = confine.program(argv[0])  # checked again, and run by its resolved path
            if confine.files:
                cwd = confine.data_dir
        self.max_frame = config_number("Legacy", config, "max_frame", 65535, minimum=1)
        self.max_inflight = config_number("Legacy", config, "max_inflight", 10_000, minimum=1)
        self.proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE, cwd=cwd)
        self.back: collections.deque[bytes] = collections.deque()
        self.meta_of: dict[bytes, list] = {}
        self.inflight = 0
        self.failed: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                hdr = await out.readexactly(4)
                (n,) = _LEN.unpack(hdr)
                if n > self.max_frame:
                    self.failed = f"program wrote a {n}-byte frame (limit {self.max_frame})"
                    return
                self.back.append(await out.readexactly(n))
        except asyncio.IncompleteReadError:
            self.failed = self.failed or f"program exited (code {await self.proc.wait()})"

    async def process(self, batch: Batch) -> None:
        if self.failed:
            raise E2Error(f"legacy NF: {self.failed}")
        stdin = self.proc.stdin
        assert stdin is not None
        buf = []
        for pkt in batch.packets:
            if self.inflight >= self.max_inflight:
                self.drop(pkt, "legacy program backlog")
                continue
            buf.append(_LEN.pack(len(pkt.data)))
            buf.append(pkt.data)
            self.inflight += 1
            if pkt.has_meta:
                self.meta_of.setdefault(pkt.data, []).append(pkt.meta)
        try:
            stdin.write(b"".join(buf))
            await stdin.drain()
        except (ConnectionResetError, BrokenPipeError):
            code = await self.proc.wait()
            self.failed = f"program exited (code {code})"
            raise E2Error(f"legacy NF: {self.failed}") from None
        await asyncio.sleep(0)  # let the reader pick up what came back already
        self._emit_back()

    def _emit_back(self) -> None:
        now = self.now
        while self.back:
            data = self.back.popleft()
            self.inflight = max(0, self.inflight - 1)
            metas = self.meta_of.get(data)
            meta = None
            if metas:
                meta = metas.pop(0)
                if not metas:
                    del self.meta_of[data]
            self._default_out.append(Packet(data, now, "legacy", meta=meta))
        if len(self.meta_of) > self.max_inflight:  # frames the program changed or dropped
            self.meta_of.clear()

    def on_timer(self) -> None:
        self._emit_back()

    async def flush(self) -> None:
        """End of input: close the program's stdin and collect everything it still writes."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 10)
        except asyncio.TimeoutError:
            pass
        self._emit_back()
        code = await self.proc.wait()
        if code != 0:
            raise E2Error(f"legacy NF: program exited (code {code})")

    async def teardown(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None and not self.proc.stdin.is_closing():
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 2)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
