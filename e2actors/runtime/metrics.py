"""Prometheus metrics for a node: an HTTP endpoint (loopback by default) serving what the node's
actors report.

Actors live on the event loop; the exporter's HTTP server runs in a thread. So nothing is read
across threads while it changes: the loop takes a snapshot every ``interval`` seconds (each
registered source returns its samples), and a scrape serves the latest snapshot. Names follow
Prometheus conventions: ``e2_..._total`` for counters, base units (bytes, seconds).

A source is a callable returning ``[(name, kind, help, labels, value), ...]`` with ``kind``
``counter`` or ``gauge``; histograms are kept by :class:`Histogram` objects and exported whole.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["Histogram", "Metrics", "Sample"]

log = logging.getLogger("e2actors.metrics")

Sample = tuple[str, str, str, dict[str, str], float]
Source = Callable[[], Iterable[Sample]]

DEFAULT_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)


class Histogram:
    """A latency histogram filled on the event loop (no locks: the snapshot copies it)."""

    __slots__ = ("name", "help", "labels", "buckets", "counts", "sum", "count")

    def __init__(self, name: str, help: str, labels: dict[str, str], buckets: tuple[float, ...] = DEFAULT_BUCKETS):
        self.name, self.help, self.labels, self.buckets = name, help, labels, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        cum = 0
        out = []
        for b, c in zip(self.buckets, self.counts):
            cum += c
            out.append((repr(b), float(cum)))
        out.append(("+Inf", float(cum + self.counts[-1])))
        return out, self.sum


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        samples, hists = self.metrics._snapshot
        fams: dict[str, Any] = {}
        for name, kind, help_, labels, value in samples:
            fam = fams.get(name)
            keys = sorted(labels)
            if fam is None:
                base = name[:-6] if kind == "counter" and name.endswith("_total") else name
                fam = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(base, help_, labels=keys)
                fams[name] = fam
            fam.add_metric([str(labels[k]) for k in keys], value)
        yield from fams.values()
        hfams: dict[str, Any] = {}
        for name, help_, labels, buckets, total in hists:
            keys = sorted(labels)
            fam = hfams.get(name)
            if fam is None:
                fam = hfams[name] = HistogramMetricFamily(name, help_, labels=keys)
            fam.add_metric([str(labels[k]) for k in keys], buckets, total)
        yield from hfams.values()


class Metrics:
    """One node's metrics: register sources and histograms, ``start(port)`` to serve them."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.sources: list[Source] = []
        self.histograms: list[Histogram] = []
        #: Histograms computed elsewhere, already in export form (name, help, labels, buckets, sum).
        self.extra_histograms: list[tuple] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._snapshot: tuple[list[Sample], list[tuple]] = ([], [])
        self._task: asyncio.Task | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def add_source(self, src: Source) -> None:
        self.sources.append(src)

    def remove_source(self, src: Source) -> None:
        if src in self.sources:
            self.sources.remove(src)

    def histogram(self, name: str, help: str, **labels: str) -> Histogram:
        h = Histogram(name, help, labels)
        self.histograms.append(h)
        return h

    def snapshot(self) -> None:
        """Take the snapshot a scrape serves (call on the event loop)."""
        samples: list[Sample] = []
        for src in list(self.sources):
            try:
                samples.extend(src())
            except Exception as exc:  # one broken source must not blank the others
                log.warning("metrics source %r failed: %r", src, exc)
        hists = list(self.extra_histograms)
        for h in self.histograms:
            b, s = h.snapshot()
            hists.append((h.name, h.help, h.labels, b, s))
        self._snapshot = (samples, hists)

    def samples(self) -> list[Sample]:
        """The latest snapshot's samples (for summaries and tests)."""
        return list(self._snapshot[0])

    async def start(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: any free port); returns the port."""
        from prometheus_client import start_http_server

        self.snapshot()
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        self._task = asyncio.get_running_loop().create_task(self._refresh(), name="metrics")
        return self.port  # type: ignore[return-value]

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.snapshot()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
