"""``e2actors run``: the main job. Deploy a policy, push traffic through it, scale it, report.

    e2actors run POLICY [--hardware HW] [--traffic PCAP | --gen FLOWS] [--in IFACE --out IFACE]
                 [--workers N] [--metrics-port P] [--duration S] [--json] [--out-pcap F]

Without a hardware file everything runs in this process (one server); ``--workers N`` starts N
worker processes on this machine so the policy uses several cores. On a terminal a progress
line shows packets/s, drops and instances per NF; at the end a summary (``--json``: one JSON
object on stdout) gives per-instance packets in/out/dropped, per-edge packets, drops by reason,
verdicts and scaling events.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from typing import Any

from e2actors.errors import E2Error
from e2actors.runtime.node import run

__all__ = ["add_arguments", "main", "run_job"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", help="policy file (YAML)")
    p.add_argument("--hardware", help="hardware file (YAML); default: this machine")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--traffic", metavar="PCAP", help="replay this capture")
    src.add_argument("--gen", type=int, metavar="FLOWS", help="generate this many flows (seeded) and replay them")
    p.add_argument("--seed", type=int, default=1, help="seed for --gen")
    p.add_argument("--profile", default="mixed", help="traffic profile for --gen")
    p.add_argument("--in", dest="iface_in", metavar="IFACE", help="live input interface (AF_PACKET)")
    p.add_argument("--out", dest="iface_out", metavar="IFACE", help="live output interface (AF_PACKET)")
    p.add_argument("--both-ways", action="store_true",
                   help="with --in/--out: a bump in the wire; what arrives on --out is the return direction "
                        "(it takes the policy as if it entered at --in, and leaves through --in)")
    p.add_argument("--out-pcap", help="write what leaves the policy to this pcap (capture input)")
    p.add_argument("--speed", type=float, default=0.0, help="replay speed factor (0: as fast as possible)")
    p.add_argument("--loop", type=int, default=1, help="replay the capture this many times")
    p.add_argument("--workers", type=int, default=0, help="worker processes on this machine")
    p.add_argument("--worker-cores", type=int, default=4, help="NF cores each worker offers the planner")
    p.add_argument("--heartbeat-timeout", type=float, default=3.0, metavar="S",
                   help="seconds of silence after which a worker or agent is lost: fenced, its instances "
                        "re-placed (default 3)")
    p.add_argument("--load", type=float, help="offered load in packets/s (overrides the policy's)")
    p.add_argument("--solver", default="heuristic")
    p.add_argument("--no-autoscale", action="store_true", help="keep the planned instance counts")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--linger", type=float, default=0.0, help="keep serving metrics this long after the end")
    p.add_argument("--duration", type=float, help="stop after this many seconds (live traffic: required)")
    p.add_argument("--trace", type=int, default=0, metavar="N", help="trace every Nth packet's path")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--control", metavar="ADDR", help="serve control requests (e2actors apply) at unix:///PATH or tcp://H:P")
    p.add_argument("--secret-file", help="the cluster's shared secret (the agents' --secret-file; created if absent "
                                         "for --control); needed with a hardware file naming agents by address")
    p.add_argument("--tls-cert", help="this manager's certificate (mutual TLS with the agents)")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="the CA that signs the agents' certificates")
    p.add_argument("--fail-on-drop", action="append", default=[], metavar="PATTERN",
                   help="fail the run (status 1) when packets were dropped for a reason matching this "
                        "glob over the summary's drop keys ('where: reason', e.g. '*queue full*', "
                        "'ids: *', '*'); repeatable")
    p.add_argument("-v", "--verbose", action="store_true")


async def run_job(args: argparse.Namespace) -> dict[str, Any]:
    from e2actors.manager.hardware import Hardware
    from e2actors.manager.manager import Manager, Traffic
    from e2actors.manager.observe import ClusterMetrics
    from e2actors.manager.policy import Policy

    # Pipelet modules next to the policy file are importable, like those in the current directory.
    base = os.path.dirname(os.path.abspath(args.policy))
    if base not in sys.path:
        sys.path.insert(1, base)
    policy = Policy.load(args.policy)
    hardware = Hardware.load(args.hardware) if args.hardware else None
    pcap = args.traffic
    if args.gen:
        from e2actors.packet.traffic import write_pcap

        gen_dir = tempfile.mkdtemp(prefix="e2gen-")
        pcap = os.path.join(gen_dir, "gen.pcap")
        write_pcap(pcap, flows=args.gen, seed=args.seed, profile=args.profile)
        args._cleanup = gen_dir  # (removed when the run ends)
    # A hardware file may place live ports itself (``in: {server: s1, kind: afpacket, iface: ...}``).
    hw_live = hardware is not None and any(p.kind not in ("memory", "null") for p in hardware.ports.values())
    if not pcap and not args.iface_in and not hw_live:
        raise E2Error("no traffic: give --traffic PCAP, --gen FLOWS or --in IFACE --out IFACE "
                      "(or a hardware file whose ports are live interfaces)")
    if (args.iface_in or (hw_live and not pcap)) and not args.duration:
        raise E2Error("live interfaces need --duration SECONDS")
    if pcap:
        _check_capture(pcap)
    if args.out_pcap:
        _check_writable(args.out_pcap, "--out-pcap")
    traffic = None if (hw_live and not pcap and not args.iface_in) else Traffic(
        pcap=pcap, speed=args.speed, loop=args.loop, out=args.out_pcap,
        iface_in=args.iface_in, iface_out=args.iface_out, both_ways=args.both_ways)
    from e2actors.manager.control import read_or_create_secret, serve_for

    secret = None
    if args.secret_file:
        secret = read_or_create_secret(args.secret_file)
    elif hardware is not None and any(s.address for s in hardware.servers.values()):
        raise E2Error(f"{hardware.file} names agents by address: give --secret-file (the agents' shared secret)")
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise E2Error("--tls-cert, --tls-key and --tls-ca go together")
        from e2actors.runtime.node import TLSConfig

        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca)
    mods = tuple(sorted({spec.cls.partition(":")[0].rpartition(".")[0] or spec.cls.partition(":")[0]
                         for spec in policy.nfs.values()}))
    mgr = Manager(workers=args.workers, worker_cores=args.worker_cores, autoscale=not args.no_autoscale,
                  trace_every=args.trace, allow=mods, secret=secret, tls=tls,
                  heartbeat_timeout=getattr(args, "heartbeat_timeout", 3.0))
    metrics = None
    control = None
    progress = Progress(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        plan = mgr.plan(policy, hardware, load=args.load, solver=args.solver)
        await mgr.deploy(plan, traffic)
        control = await serve_for(mgr, getattr(args, "control", None), mgr.secret)
        if args.metrics_port is not None:
            metrics = ClusterMetrics(mgr)
            try:
                port = await metrics.start(args.metrics_port, args.metrics_addr)
            except OSError as exc:
                raise E2Error(f"--metrics-port {args.metrics_port}: cannot listen on {args.metrics_addr}: "
                              f"{exc.strerror or exc}") from None
            if not args.json:
                print(f"metrics: http://{args.metrics_addr}:{port}/metrics", file=sys.stderr)

        def on_poll(st: dict[str, Any]) -> None:
            if metrics is not None:
                metrics.update(st)
            if progress is not None:
                progress.show(mgr, st)

        # SIGINT/SIGTERM end a live run early, with its summary (how a service manager stops it).
        loop = asyncio.get_running_loop()
        waiting = loop.create_task(mgr.wait_done(timeout=args.duration, on_poll=on_poll))
        stopped_by: list[str] = []

        def stop(sig: signal.Signals) -> None:
            stopped_by.append(sig.name)
            waiting.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop, sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            done = await waiting
        except asyncio.CancelledError:
            if not waiting.cancelled():
                raise
            done = False
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if not done:
            # Ended by --duration or a signal: read no more, and let what is inside leave, so
            # the account closes (bounded: a second signal is not needed).
            await mgr.close_inputs(drain=5.0)
        st = await mgr.stats()
        if metrics is not None:
            metrics.update(st)
        if progress is not None:
            progress.close()
        summary = mgr.summary(st)
        summary["completed"] = done
        if stopped_by:
            summary["stopped_by"] = stopped_by[0]
        if args.trace:
            summary["traces"] = await mgr.traces()
        if metrics is not None and args.linger > 0:
            await asyncio.sleep(args.linger)
        return summary
    finally:
        if control is not None:
            await control.stop()
        if metrics is not None:
            await metrics.stop()
        await mgr.stop()


class Progress:
    """One status line on a terminal, rewritten in place."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.last = (time.monotonic(), 0)

    def show(self, mgr: Any, st: dict[str, Any]) -> None:
        now = time.monotonic()
        rx = sum(p["rx_packets"] for s in st["switches"].values() if isinstance(s, dict)
                 for n, p in s.get("ports", {}).items() if n == "in")
        drops = sum(sum(s.get("drops", {}).values()) for s in st["switches"].values() if isinstance(s, dict))
        t0, r0 = self.last
        pps = (rx - r0) / max(now - t0, 1e-6)
        self.last = (now, rx)
        inst = " ".join(f"{nf}:{n}" for nf, n in mgr.instance_counts().items())
        self.out.write(f"\r{st['t']:6.1f}s  {rx:>10,} pkts  {pps:>10,.0f} pps  drops {drops:,}  [{inst}]   ")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def print_summary(s: dict[str, Any], out: Any = sys.stdout) -> None:
    w = out.write
    w(f"policy {s['policy']}: {s['packets_in']:,} packets in, {s['packets_out']:,} out in {s['seconds']:.2f}s "
      f"on {len(s['servers'])} server(s){'' if s.get('completed', True) else ' (stopped before the end)'}\n\n")
    w(f"{'instance':16} {'server':8} {'in':>10} {'out':>10} {'dropped':>8} {'lost':>6} {'flows':>7}  ports\n")
    for name, i in sorted(s["instances"].items()):
        ports = ", ".join(f"{p}:{n}" for p, n in sorted(i["per_port"].items()))
        w(f"{name:16} {i['server']:8} {i['in']:>10,} {i['out']:>10,} {i['dropped']:>8,} {i['lost']:>6,} "
          f"{i['flows']:>7,}  {ports}\n")
    w("\nedges (packets):\n")
    for e, n in sorted(s["edges"].items(), key=lambda x: -x[1]):
        w(f"  {e:32} {n:>10,}\n")
    if s["drops"]:
        w("\ndrops by reason:\n")
        for r, n in sorted(s["drops"].items(), key=lambda x: -x[1]):
            w(f"  {r:48} {n:>10,}\n")
    if s["verdicts"]:
        w("\nverdicts (packets): " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["verdicts"].items())) + "\n")
    if s["alerts"]:
        w("IDS alerts by sid: " + ", ".join(f"{k}: {v}" for k, v in sorted(s["alerts"].items())) + "\n")
    if s.get("batches"):
        w("\nbatch sizes (mean packets per batch): " + ", ".join(f"{h} {m:g}" for h, m in s["batches"].items())
          + f"; over all hops {s['batch_mean']:g}\n")
    if s.get("lost"):
        w(f"\nLOST: {s['lost']:,} packets admitted and never accounted for (neither sent nor dropped)\n")
        for where, n in (s.get("lost_by") or {}).items():
            w(f"  {n:>10,}  {where}\n")
    w("\nscaling events:\n")
    for e in s["scaling_events"]:
        w(f"  {e['t']:7.2f}s  {e['nf']:10} {e['kind']:12} {e['detail']}\n")
    if s.get("checkpoints"):
        w("checkpoints: " + "; ".join(f"{nf} {c['rounds']} rounds ({c['failed']} unanswered), {c['restored']} restored"
                                      for nf, c in s["checkpoints"].items()) + "\n")
    w(f"\ninstances per NF at the end: {s['instances_per_nf']}\n")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    # A truncated capture is reported once, as the run's failure (not also as a Python warning).
    warnings.filterwarnings("ignore", message=".*truncated capture", category=RuntimeWarning)
    try:
        try:
            summary = run(run_job(args))
        finally:
            gen_dir = getattr(args, "_cleanup", None)
            if gen_dir:
                shutil.rmtree(gen_dir, ignore_errors=True)
    except E2Error as exc:
        print(f"e2actors run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the deployment was up: nothing ran yet
        print("e2actors run: interrupted while starting", file=sys.stderr)
        return 130
    except OSError as exc:  # an operator's mistake the checks above did not name (a path, a port)
        print(f"e2actors run: {exc.strerror or exc}{': ' + exc.filename if exc.filename else ''}",
              file=sys.stderr)
        return 2
    strict = strict_failures(summary, args.fail_on_drop)
    if strict:
        summary.setdefault("failures", []).extend(strict)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    if summary.get("failures"):
        # The exit status tells the truth: a failed output, a corrupt input, an NF that failed
        # for good or packets unaccounted for fail the run (status 1), one line each.
        for f in summary["failures"]:
            print(f"e2actors run: failed: {f}", file=sys.stderr)
        return 1
    if summary.get("stopped_by") == "SIGINT":
        return 130  # (the summary so far was printed: the run did not end by itself)
    return 0


def strict_failures(summary: dict[str, Any], patterns: list[str]) -> list[str]:
    """What ``--fail-on-drop PATTERN`` makes a failure: each drop key (``where: reason``) that
    matches a pattern (fnmatch globs, case-sensitive), with its count."""
    out = []
    for key, n in sorted(summary.get("drops", {}).items()):
        hit = next((pat for pat in patterns if fnmatch.fnmatchcase(key, pat)), None)
        if n and hit is not None:
            out.append(f"{n:,} packets dropped as {key!r} (--fail-on-drop {hit!r})")
    return out


def _check_capture(path: str) -> None:
    """A capture given on the command line exists and is one (one line, not a traceback)."""
    from e2actors.packet.pcap import open_capture

    try:
        open_capture(path).close()
    except OSError as exc:
        raise E2Error(f"--traffic {path}: {exc.strerror or exc}") from None
    except E2Error as exc:
        raise E2Error(f"--traffic {path}: {exc}") from None


def _check_writable(path: str, what: str) -> None:
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise E2Error(f"{what} {path}: no directory {d}")
    if not os.access(d, os.W_OK):
        raise E2Error(f"{what} {path}: the directory {d} is not writable")
