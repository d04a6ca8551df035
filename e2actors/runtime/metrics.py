"""Prometheus metrics for a node: an HTTP endpoint (loopback by default) serving what the node's
actors report.

The loop takes a snapshot every ``interval`` seconds (each registered source returns its
samples), and a scrape serves the latest snapshot, so a scrape costs the same however often it
comes. The HTTP server is an asyncio server on the node's own loop (no thread per connection): a
client gets ``head_timeout`` seconds to send its request (slow-loris connections are closed and
counted), ``write_timeout`` to take the answer, and at most ``max_clients`` are served at once (the
rest are closed at accept, counted). One request per connection (``Connection: close``).
Names follow Prometheus conventions: ``e2_..._total`` for counters, base units (bytes, seconds).

A source is a callable returning ``[(name, kind, help, labels, value), ...]`` with ``kind``
``counter`` or ``gauge``; histograms are kept by :class:`Histogram` objects and exported whole.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gzip
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["Histogram", "Metrics", "Sample", "build_info"]

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


def build_info() -> list[Sample]:
    """``e2_build_info``: which e2actors (and Python) serves these series, as labels of a 1."""
    import platform

    from e2actors._version import __version__

    return [("e2_build_info", "gauge", "The e2actors version serving these metrics (always 1)",
             {"version": __version__, "python": platform.python_version()}, 1.0)]


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        samples, hists = self.metrics.latest()
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

    #: Seconds a client has to send its request line and headers (then it is closed).
    head_timeout = 5.0
    #: Seconds a client has to read the answer.
    write_timeout = 10.0
    #: Clients served at once; more are closed at accept.
    max_clients = 256
    #: Bytes of request head accepted.
    max_head = 8192

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        #: HTTP events: ``requests``, ``idle_closed`` (no request in time), ``refused`` (over
        #: max_clients), ``bad_requests``, ``slow_readers`` (did not take the answer in time).
        self.http: collections.Counter[str] = collections.Counter()
        self.clients = 0
        self.sources: list[Source] = []
        self.histograms: list[Histogram] = []
        #: Histograms computed elsewhere, already in export form (name, help, labels, buckets, sum).
        self.extra_histograms: list[tuple] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        # The standard process and platform series (CPU seconds, resident memory, open files,
        # start time; Python's version), as every Prometheus client library exports them.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._snapshot: tuple[list[Sample], list[tuple]] = ([], [])
        self._task: asyncio.Task | None = None
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
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

    def latest(self) -> tuple[list[Sample], list[tuple]]:
        """The latest snapshot: its samples and histograms (what a scrape serves; do not modify)."""
        return self._snapshot

    def samples(self) -> list[Sample]:
        """The latest snapshot's samples (for summaries and tests)."""
        return list(self._snapshot[0])

    async def start(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: any free port); returns the port."""
        self.snapshot()
        self.add_source(self.http_samples)
        self.add_source(build_info)
        self._server = await asyncio.start_server(self._client, addr, port, limit=self.max_head,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._refresh(), name="metrics")
        return self.port  # type: ignore[return-value]

    def http_samples(self) -> list[Sample]:
        return [("e2_metrics_http_total", "counter", "Metrics endpoint: requests served and clients closed "
                 "(idle_closed, refused, bad_requests, slow_readers)", {"event": k}, v)
                for k, v in sorted(self.http.items())]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.http["refused"] += 1
            writer.transport.abort()
            return
        self.clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        finally:
            self.clients -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.transport.abort()  # one request per connection; nothing left to flush

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.TimeoutError:
            self.http["idle_closed"] += 1
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self.http["bad_requests"] += 1
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        headers = {}
        for ln in lines[1:]:
            k, sep, v = ln.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.http["bad_requests"] += 1
            status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
            extra: list[tuple[str, str]] = []
        elif parts[0] not in ("GET", "HEAD"):
            status, ctype, body, extra = "405 Method Not Allowed", "text/plain", b"GET only\n", [("Allow", "GET, HEAD")]
        elif parts[1].split("?")[0] not in ("/metrics", "/"):
            status, ctype, body, extra = "404 Not Found", "text/plain", b"see /metrics\n", []
        else:
            self.http["requests"] += 1
            encoder, ctype = choose_encoder(headers.get("accept", ""))
            body = encoder(self.registry)
            extra = []
            if gzip_accepted(headers.get("accept-encoding", "")):
                body = gzip.compress(body)
                extra.append(("Content-Encoding", "gzip"))
            status = "200 OK"
        out = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Connection: close",
               *(f"{k}: {v}" for k, v in extra)]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        if parts[:1] != ["HEAD"]:
            writer.write(body)
        try:
            await asyncio.wait_for(writer.drain(), self.write_timeout)
        except asyncio.TimeoutError:
            self.http["slow_readers"] += 1
        except ConnectionError:
            pass

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.snapshot()

    async def stop(self) -> None:
        """Stop serving: the refresh task and the clients being answered are cancelled and awaited."""
        tasks = [self._task] if self._task is not None else []
        self._task = None
        if self._server is not None:
            self._server.close()
            tasks.extend(self._handlers)
            self._server = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.remove_source(self.http_samples)
