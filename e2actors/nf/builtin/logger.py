"""``Logger``: writes every packet it sees to a pcap file and a JSON line with its metadata.

Config: ``pcap`` (path), ``jsonl`` (path, default: the pcap path with ``.jsonl``), ``snaplen``.
The pcap is readable by tcpdump; each JSON line holds time, lengths, addresses, ports, the flow's
direction and ``meta`` (the verdicts and tags earlier NFs attached). Packets pass on to ``out``.

Both files are written inside the node's data directory (relative paths are taken from it; on an
agent a path that leaves it refuses the deployment). In a local run that is the current directory.

Several instances (a scale-out, or one per shard) never write one file at once. With
``{instance}`` in a path, each instance writes its own file (``{instance}`` replaced by its name,
``/`` made ``_``). Without it, each instance writes a part file next to it,
``PATH.part-INSTANCE-PID``, and when the last instance of the group on that machine stops, the
parts are merged into ``PATH`` by timestamp (each instance's own order kept) under a lock file
``PATH.lock``; parts left by a process that died are merged too. "The last" counts every
Logger of the machine, those of this process too (a scale-in merges nothing while others write),
and a later merge in the same process keeps what an earlier one wrote. A new run starts its files
afresh; an instance that resumes a member (:attr:`Pipelet.resumed
<e2actors.nf.pipelet.Pipelet.resumed>`: restarted after a crash, or a replacement) appends to
what that member wrote, so nothing is wiped. A write that fails (a full disk) raises naming the
file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import heapq
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from e2actors.errors import ConfigError
from e2actors.nf.config import config_number
from e2actors.nf.pipelet import Pipelet
from e2actors.packet.batch import Batch
from e2actors.packet.pcap import PcapWriter, open_capture
from e2actors.runtime.confine import Confinement

log = logging.getLogger("e2actors.logger")

__all__ = ["Logger", "merge_parts"]


@dataclass
class LoggerConfig:
    """The Logger's config (checked at plan time; ``{instance}`` in a name: one file per instance)."""

    pcap: str = "logger-{instance}.pcap"
    jsonl: str | None = None
    snaplen: int = 262144


class Logger(Pipelet):
    config_schema = LoggerConfig
    ports = ("out",)
    affinity = "none"
    cost_pps = 200_000
    timer_interval = 1.0  # flush the files once a second, so they can be read during a run
    config_paths = {"pcap": "write", "jsonl": "write"}

    @staticmethod
    def _paths(config: dict[str, Any], instance: str) -> tuple[str, str]:
        pcap = str(config.get("pcap", "logger-{instance}.pcap")).replace("{instance}", instance)
        jsonl = config.get("jsonl")
        jsonl = str(jsonl).replace("{instance}", instance) if jsonl else os.path.splitext(pcap)[0] + ".jsonl"
        return pcap, jsonl

    @classmethod
    def validate_config(cls, config: dict[str, Any], base_dir: str = ".") -> None:
        """At plan time: the file names are text and the snap length a positive number (the files
        themselves are made on the node that runs the NF)."""
        super().validate_config(config, base_dir)
        for key in ("pcap", "jsonl"):
            v = config.get(key)
            if v is not None and not (isinstance(v, str) and v):
                raise ConfigError("Logger", key, f"a file name, not {v!r}")
        config_number("Logger", config, "snaplen", 262144, minimum=1)

    @classmethod
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        pcap, jsonl = cls._paths(config, "instance")
        confine.path(pcap, "pcap")
        confine.path(jsonl, "jsonl" if config.get("jsonl") else "pcap")

    async def setup(self, config: dict[str, Any]) -> None:
        name = self.name.replace("/", "_")
        pcap, jsonl = self._paths(config, name)
        pcap_t = str(config.get("pcap", "logger-{instance}.pcap"))
        jsonl_t = str(config.get("jsonl") or pcap_t)
        # Checked again with the instance's own name in (a name could lead elsewhere).
        pcap = self.data_path(pcap, "pcap")
        jsonl = self.data_path(jsonl, "jsonl" if config.get("jsonl") else "pcap")
        for path in (pcap, jsonl):
            d = os.path.dirname(path)
            if d:
                os.makedirs(d, exist_ok=True)
        self.pcap_path, self.jsonl_path = pcap, jsonl
        # One file per instance, or a part of a shared one (see the module docstring).
        self.shared = "{instance}" not in pcap_t
        suffix = f".part-{name}-{os.getpid()}"
        self._files = [(pcap, pcap + suffix if self.shared else pcap),
                       (jsonl, jsonl + suffix if self.shared and "{instance}" not in jsonl_t else jsonl)]
        wpcap, wjsonl = self._files[0][1], self._files[1][1]
        # A new run overwrites an old run's file; an instance that resumes a member (a restart
        # after a crash, a replacement) goes on after what it holds.
        again = self.resumed
        snaplen = config_number("Logger", config, "snaplen", 262144, minimum=1)
        with _naming_path(wpcap):
            self.writer = PcapWriter(wpcap, snaplen=snaplen, append=self.shared or again)
        with _naming_path(wjsonl):
            self.jsonl: TextIO = open(wjsonl, "a" if self.shared or again else "w", encoding="utf-8")
        if self.shared:
            _WRITING.update((wpcap, wjsonl))

    async def process(self, batch: Batch) -> None:
        with _naming_path(self._files[0][1]):
            self._log(batch)

    def _log(self, batch: Batch) -> None:
        w = self.writer
        lines = []
        for pkt in batch.packets:
            w.write(pkt.data, pkt.ts, pkt.wirelen)
            rec = {"ts": pkt.ts, "len": pkt.wirelen, "port": pkt.port}
            if pkt.proto >= 0:
                rec.update(proto=pkt.proto, src=pkt.src_str, dst=pkt.dst_str, sport=pkt.sport, dport=pkt.dport)
            if pkt.has_meta:
                rec["meta"] = pkt.meta
            lines.append(json.dumps(rec, default=_jsonable))
            self._default_out.append(pkt)
        with _naming_path(self._files[1][1]):
            self.jsonl.write("\n".join(lines) + "\n")
        self.counters["logged"] += len(batch.packets)

    def on_timer(self) -> None:
        with _naming_path(self._files[0][1]):
            self.writer.flush()
        with _naming_path(self._files[1][1]):
            self.jsonl.flush()

    async def teardown(self) -> None:
        try:
            with _naming_path(self._files[0][1]):
                self.writer.close()
            with _naming_path(self._files[1][1]):
                self.jsonl.close()
        finally:
            for _path, part in self._files:
                _WRITING.discard(part)
        if self.shared:
            for path, part in self._files:
                if part != path:
                    with _naming_path(path):
                        merge_parts(path, part)


#: Shared files this process merged (a later merge includes what they hold).
_MERGED: set[str] = set()
#: Parts of shared files that Loggers of this process are writing now (see ``_alive``).
_WRITING: set[str] = set()


@contextlib.contextmanager
def _naming_path(path: str) -> Iterator[None]:
    """An OSError without the file's name (a full disk: ``[Errno 28] No space left on device``)
    is raised again naming ``path``, so the run's errors say which output failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(part: str) -> bool:
    try:
        pid = int(part.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return part in _WRITING  # (another Logger of this process, still at work)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge_parts(path: str, part: str) -> bool:
    """``part`` of shared output ``path`` is complete: mark it done, and if no other writer of
    ``path`` is still at work, merge every done part into ``path`` (by timestamp) and remove
    them. Returns True when this call merged."""
    with _locked(path):
        done = part.replace(".part-", ".done-", 1)
        n = 0
        while os.path.exists(done):  # (the same instance stopped before: a restart in this process)
            n += 1
            done = part.replace(".part-", ".done-", 1) + f".{n}"
        if os.path.exists(part):
            os.replace(part, done)
        if any(_alive(p) for p in glob.glob(glob.escape(path) + ".part-*")):
            return False  # another instance still writes: the last one merges
        parts = sorted(glob.glob(glob.escape(path) + ".done-*")) + \
            sorted(glob.glob(glob.escape(path) + ".part-*"))  # (parts of writers that died)
        if not parts:
            return False
        if path in _MERGED and os.path.exists(path):
            # This run merged into it before (its writers had all stopped, then one started
            # again): what it holds is merged too, not overwritten.
            keep = path + ".merged-before"
            os.replace(path, keep)
            parts.insert(0, keep)
        _MERGED.add(path)
        tmp = path + ".merging"
        if path.endswith(".jsonl"):
            _merge_jsonl(parts, tmp)
        else:
            _merge_pcap(parts, tmp)
        os.replace(tmp, path)
        for p in parts:
            os.unlink(p)
        return True


def _merge_pcap(parts: list[str], out: str) -> None:
    def records(k: int, p: str) -> Iterator[tuple]:
        # An empty or cut part (its writer was killed mid-record): what it holds goes in, and the
        # cut is logged here rather than raised as a Python warning by the reader.
        j = 0
        try:
            with open_capture(p) as r:
                r.warn_truncated = False
                for j, (ts, data, wirelen, _lt, _if) in enumerate(r, 1):
                    yield ts, k, j, data, wirelen
                if r.truncated:
                    log.warning("%s: merged the %d records before the cut: %s", p, j, r.truncated)
        except Exception as exc:
            log.warning("%s: merged the %d records before the cut: %s", p, j, exc)
            return

    with PcapWriter(out) as w:
        for ts, _k, _j, data, wirelen in heapq.merge(*(records(k, p) for k, p in enumerate(parts))):
            w.write(data, ts, wirelen)


def _merge_jsonl(parts: list[str], out: str) -> None:
    def lines(k: int, p: str) -> Iterator[tuple]:
        with open(p, encoding="utf-8") as f:
            for j, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    ts = float(json.loads(line).get("ts", 0.0))
                except (ValueError, AttributeError):
                    ts = 0.0
                yield ts, k, j, line if line.endswith("\n") else line + "\n"

    with open(out, "w", encoding="utf-8") as f:
        for _ts, _k, _j, line in heapq.merge(*(lines(k, p) for k, p in enumerate(parts))):
            f.write(line)


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.hex()
    return str(x)
