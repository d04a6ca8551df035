"""``Logger``: writes every packet it sees to a pcap file and a JSON line with its metadata.

Config: ``pcap`` (path; ``{instance}`` is replaced by the instance name so several instances do
not share a file), ``jsonl`` (path, default: the pcap path with ``.jsonl``), ``snaplen``. The pcap
is readable by tcpdump; each JSON line holds time, lengths, addresses, ports, the flow's direction
and ``meta`` (the verdicts and tags earlier NFs attached). Packets pass on to ``out``.

Both files are written inside the node's data directory (relative paths are taken from it; on an
agent a path that leaves it refuses the deployment). In a local run that is the current directory.
"""

from __future__ import annotations

import json
import os
from typing import Any, TextIO

from e2actors.nf.pipelet import Pipelet
from e2actors.runtime.confine import Confinement
from e2actors.packet.batch import Batch
from e2actors.packet.pcap import PcapWriter

__all__ = ["Logger"]


class Logger(Pipelet):
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
    def check_config(cls, config: dict[str, Any], confine: Confinement) -> None:
        pcap, jsonl = cls._paths(config, "instance")
        confine.path(pcap, "pcap")
        confine.path(jsonl, "jsonl" if config.get("jsonl") else "pcap")

    async def setup(self, config: dict[str, Any]) -> None:
        name = self.name.replace("/", "_")
        pcap, jsonl = self._paths(config, name)
        # Checked again with the instance's own name in (a name could lead elsewhere).
        pcap = self.data_path(pcap, "pcap")
        jsonl = self.data_path(jsonl, "jsonl" if config.get("jsonl") else "pcap")
        for path in (pcap, jsonl):
            d = os.path.dirname(path)
            if d:
                os.makedirs(d, exist_ok=True)
        self.pcap_path, self.jsonl_path = pcap, jsonl
        self.writer = PcapWriter(pcap, snaplen=int(config.get("snaplen", 262144)))
        self.jsonl: TextIO = open(jsonl, "a", encoding="utf-8")

    async def process(self, batch: Batch) -> None:
        w = self.writer
        lines = []
        for pkt in batch.packets:
            w.write(pkt.data, pkt.ts, pkt.wirelen)
            rec = {"ts": pkt.ts, "len": pkt.wirelen, "port": pkt.port}
            if pkt.proto >= 0:
                rec.update(proto=pkt.proto, src=pkt.src_str, dst=pkt.dst_str, sport=pkt.sport, dport=pkt.dport)
            if pkt._meta:
                rec["meta"] = pkt._meta
            lines.append(json.dumps(rec, default=_jsonable))
            self._default_out.append(pkt)
        self.jsonl.write("\n".join(lines) + "\n")
        self.counters["logged"] += len(batch.packets)

    def on_timer(self) -> None:
        self.writer.flush()
        self.jsonl.flush()

    async def teardown(self) -> None:
        self.writer.close()
        self.jsonl.close()


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.hex()
    return str(x)
