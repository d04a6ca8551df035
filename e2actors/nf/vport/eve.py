"""Suricata's EVE JSON log read as it grows: alerts into an NF's counters. Pure file reading.

Suricata appends one JSON object per line to ``eve.json``. :class:`EveTail` reads what was added
since its last call (keeping a partial last line for the next one), and :func:`count_event` turns
each alert into the counters the run's summary collects: ``alert:SID`` (the summary's "alerts by
sid"), ``alerts`` and ``alerts_blocked`` (the IPS dropped the packet: ``alert.action`` is
``blocked``). A line that is not JSON is counted (``eve_bad_lines``) and skipped.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

__all__ = ["EveTail", "count_event"]


class EveTail:
    """The events appended to ``path`` since the last :meth:`read` (the file may not exist yet)."""

    def __init__(self, path: str, max_read: int = 8 << 20) -> None:
        self.path = path
        self.offset = 0
        self.max_read = max_read
        self._partial = b""
        self.bad_lines = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:  # truncated or replaced (a new program): start over
            self.offset = 0
            self._partial = b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(size - self.offset, self.max_read))
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(ev, dict):
                out.append(ev)
            else:
                self.bad_lines += 1
        return out


def count_event(ev: dict[str, Any], counters: collections.Counter) -> tuple | None:
    """Count one EVE event; for an alert return ``(src_ip, src_port, dest_ip, dest_port, proto,
    sid, action)``, else None."""
    if ev.get("event_type") != "alert":
        if ev.get("event_type") == "drop":
            counters["eve_drops"] += 1
        return None
    a = ev.get("alert")
    if not isinstance(a, dict):
        return None
    sid = a.get("signature_id")
    counters["alerts"] += 1
    counters[f"alert:{sid}"] += 1
    action = a.get("action", "")
    if action == "blocked":
        counters["alerts_blocked"] += 1
    return (ev.get("src_ip"), ev.get("src_port"), ev.get("dest_ip"), ev.get("dest_port"), ev.get("proto"),
            sid, action)
