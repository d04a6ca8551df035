"""A real Prometheus server scrapes a running ``e2actors run``; the series it stored agree with
the run's own summary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import need_tool

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(api: str, expr: str) -> list[dict]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def value(api: str, expr: str) -> float | None:
    """The latest stored value of ``expr``'s series (the run has ended and its target is gone, so
    an instant query would see the staleness marker: take the last sample of the last minutes)."""
    if expr.startswith("sum("):
        expr = f"sum(last_over_time({expr[4:-1]}[5m]))"
    else:
        expr = f"last_over_time({expr}[5m])"
    res = query(api, expr)
    return float(res[0]["value"][1]) if res else None


def test_prometheus_scrapes_a_run_and_agrees_with_its_summary(tmp_path: Path) -> None:
    prom = need_tool("prometheus")
    mport, pport = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: e2actors\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n")
    server = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{pport}"
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run([sys.executable, "-m", "e2actors", "run", str(ROOT / "examples/seed/policy.yaml"),
                              "--traffic", str(ROOT / "examples/seed/traffic.pcap"), "--metrics-port", str(mport),
                              "--speed", "20", "--linger", "5", "--no-autoscale", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        s = json.loads(run.stdout)
        # Prometheus scraped during the run and the lingering seconds after it: its latest samples
        # are the run's final counters.
        want_in = s["packets_in"]
        deadline = time.time() + 20
        got = None
        while time.time() < deadline:
            try:
                got = value(api, 'e2_port_packets_total{port="in",direction="rx"}')
            except OSError:
                got = None
            if got == want_in:
                break
            time.sleep(0.5)
        assert got == want_in
        assert value(api, 'e2_port_packets_total{port="out",direction="tx"}') == s["packets_out"]
        assert value(api, 'sum(e2_instance_packets_total{direction="in"})') == sum(i["in"] for i in s["instances"].values())
        assert value(api, 'sum(e2_instance_packets_total{direction="in",nf="ids"})') == s["edges"]["in->ids"]
        assert value(api, 'sum(e2_drops_total)') == sum(s["drops"].values())
        assert value(api, 'sum(e2_edge_packets_total{edge="ids.unsafe->logger"})') == s["edges"]["ids.unsafe->logger"]
        for nf, n in s["instances_per_nf"].items():
            assert value(api, f'e2_nf_instances{{nf="{nf}"}}') == n
        # Batch latency histograms: one observation per batch an instance processed.
        batches = value(api, 'sum(e2_batch_seconds_count{nf="ids"})')
        assert batches is not None and batches > 0
        assert value(api, 'sum(e2_batch_seconds_bucket{nf="ids",le="+Inf"})') == batches
        # Batch sizes per hop: what the ports read adds up to the packets in; the summary's mean
        # per hop is the histogram's sum over its count.
        assert value(api, 'sum(e2_hop_batch_packets_sum{hop="port_in"})') == s["packets_in"]
        n_in = value(api, 'sum(e2_hop_batch_packets_count{hop="port_in"})')
        assert n_in and abs(s["packets_in"] / n_in - s["batches"]["port_in"]) < 0.01
        assert value(api, 'sum(e2_hop_batch_packets_bucket{hop="to_instance",le="+Inf"})') == \
            value(api, 'sum(e2_hop_batch_packets_count{hop="to_instance"})')
        assert value(api, 'sum(e2_instance_restarts_total)') == 0
        # The series was scraped while the run lasted (a range query finds it).
        hist = query(api, 'e2_port_packets_total{port="in",direction="rx"}[30s]')
        assert len(hist[0]["values"]) >= 1
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


async def test_exported_series_pass_promtool_and_keep_labels_bounded(tmp_path: Path, monkeypatch) -> None:
    """What the manager serves for the running example: ``promtool check metrics`` accepts it, the
    drop reasons carry no host names, ports have only their directions, the build and process
    series are there."""
    import asyncio

    from e2actors.manager.manager import Manager, Traffic
    from e2actors.manager.observe import ClusterMetrics
    from e2actors.manager.policy import Policy

    promtool = need_tool("promtool")
    monkeypatch.chdir(tmp_path)  # (the example's logger writes out/ here)
    mgr = Manager(autoscale=False)
    metrics = ClusterMetrics(mgr)
    try:
        await mgr.deploy(mgr.plan(Policy.load(ROOT / "examples/seed/policy.yaml")),
                         Traffic(pcap=str(ROOT / "examples/seed/traffic.pcap")))
        assert await mgr.wait_done(timeout=60)
        port = await metrics.start(0)
        metrics.update(await mgr.stats())

        def fetch() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        text = await asyncio.get_running_loop().run_in_executor(None, fetch)
    finally:
        await metrics.stop()
        await mgr.stop()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    drops = [x for x in lines if x.startswith("e2_drops_total{")]
    assert any('reason="blocked host"' in x for x in drops), drops
    assert not any("youtube" in x for x in lines)  # a blocked host's name is never a label value
    assert not any('port="in"' in x and 'direction="tx"' in x for x in lines)
    assert not any('port="out"' in x and 'direction="rx"' in x for x in lines)
    assert any(x.startswith("e2_build_info{") and x.endswith(" 1.0") for x in lines)
    assert any(x.startswith("process_resident_memory_bytes") for x in lines)
    assert any(x.startswith("e2_instance_bytes_total{") and 'direction="out"' in x for x in lines)
