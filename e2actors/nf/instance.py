"""``NFInstance``: the actor that runs one instance of an NF.

A thin shell over :class:`~e2actors.nf.runner.PipeletRunner`: batches in (``NFBatch``), what the
pipelet emitted out to the instance's output (the switch) as ``NFOutput``, load reports to the
manager, state export/import for moves. For bytestream NFs the switch reassembles the flows and
sends ``StreamWork`` (the stream chunks with the packets that carried them); the instance tells
the pipelet and answers with ``StreamVerdicts``, which the switch applies to the packets. Its
mailbox drops when full, like a NIC ring: the switch sees the refused send and counts the
packets as dropped with reason ``queue full``.
"""

from __future__ import annotations

import time
from typing import Any

from e2actors.nf.messages import (ExportState, FinalStats, GetStats, ImportState, InputDone, LoadReport, NFBatch,
                                  NFOutput, StreamVerdicts, StreamWork)
from e2actors.nf.pipelet import Pipelet
from e2actors.nf.runner import PipeletRunner
from e2actors.packet.batch import Batch
from e2actors.errors import SpawnRefused
from e2actors.runtime.actor import Actor
from e2actors.runtime.confine import ConfinementError
from e2actors.runtime.messages import Tick
from e2actors.runtime.node import load_class
from e2actors.runtime.ref import ActorRef

__all__ = ["NFInstance", "resolve_pipelet"]

_TIMER = Tick("nf-timer")
_REPORT = Tick("nf-report")


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the deepest traceback frame outside the e2actors package (the NF author's
    code), or of the deepest frame when there is none."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(pkg + os.sep)]
    f = (own or frames or [None])[-1]
    return f"{f.filename}:{f.lineno}" if f is not None else "?"


def resolve_pipelet(cls: str | type[Pipelet], allow: tuple[str, ...]) -> type[Pipelet]:
    """A pipelet class from a class or a ``module:QualName`` path on the allow-list."""
    c = load_class(cls, allow) if isinstance(cls, str) else cls
    if not (isinstance(c, type) and issubclass(c, Pipelet)):
        raise TypeError(f"{cls!r} is not a Pipelet subclass")
    return c


class NFInstance(Actor):
    """One instance of an NF. Spawn with ``pipelet`` (class or path), ``config``, ``nf`` (the NF's
    name in the policy), ``output`` (where NFOutput goes), optionally ``monitor`` (LoadReports)."""

    # About 2,000 packets of queue (like a NIC ring): enough to absorb bursts, small enough that
    # an overloaded instance drops (and the autoscaler notices) instead of building latency.
    mailbox_size = 64
    overflow = "drop"

    def __init__(self, pipelet: str | type[Pipelet], config: dict[str, Any] | None = None, nf: str = "",
                 output: ActorRef | None = None, monitor: ActorRef | None = None,
                 report_interval: float = 0.25, clock: str = "wall", instance: str | None = None) -> None:
        self.pipelet_cls = pipelet
        #: The member name the switch knows this instance by (default: the actor's name). A move or
        #: an upgrade starts a new actor under another name that carries on as the same member.
        self.instance = instance
        self.nf_config = dict(config or {})
        self.nf = nf
        self.output = output
        self.monitor = monitor
        self.report_interval = report_interval
        self.clock = clock

    @classmethod
    def check_spawn(cls, node: Any, kwargs: dict[str, Any]) -> None:
        """Refuse, before anything starts, a pipelet off the allow-list or a config that names
        files outside the node's data directory or a program it does not allow (``SpawnRefused``
        naming the NF, the config key and the reason; counted as ``nf_config_refused``)."""
        pipelet = resolve_pipelet(kwargs.get("pipelet", ""), node.allow_spawn)
        confine = getattr(node, "confine", None)
        if confine is None:
            return
        config = kwargs.get("config") or {}
        what = f"NF {kwargs.get('nf') or '?'} ({pipelet.__module__}:{pipelet.__qualname__})"
        if not isinstance(config, dict):
            node.counters["nf_config_refused"] += 1
            raise SpawnRefused(f"{what}: its config is not a mapping")
        try:
            pipelet.check_config(config, confine)
        except ConfinementError as exc:
            node.counters["nf_config_refused"] += 1
            raise SpawnRefused(f"{what}: {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:  # a config of the wrong shape
            node.counters["nf_config_refused"] += 1
            raise SpawnRefused(f"{what}: bad config: {exc}") from None

    async def on_start(self) -> None:
        cls = resolve_pipelet(self.pipelet_cls, self.node.allow_spawn)
        if self.instance is None:
            self.instance = self.name
        p = cls()
        p.name = self.instance
        self._woken = False
        p.set_waker(self._wake)
        p.confinement = getattr(self.node, "confine", None)
        self.runner = PipeletRunner(p, clock=self.clock)  # type: ignore[arg-type]
        # The counters go on across restarts: a restarted instance counts on from where it was.
        carried = self.carry.get("stats")
        # (a replacement runs under a fresh actor name, nat#1~3, for member nat#1)
        p.resumed = carried is not None or self.name != self.instance
        if carried is not None:
            self.runner.stats = carried
        else:
            self.carry["stats"] = self.runner.stats
        try:
            await self.runner.start(self.nf_config)
        except Exception as exc:
            self._error(exc, "setup")
            raise
        self._last = (time.monotonic(), 0, 0, 0.0)
        self._reported_drops = 0
        self._sent_dropped = 0
        if p.timer_interval is not None or p.input == "bytestream":
            self.every(max(p.timer_interval or 0.1, 0.001), _TIMER)
        else:
            self.every(1.0, _TIMER)  # idle flow expiry
        if self.monitor is not None:
            self.every(self.report_interval, _REPORT)

    async def on_stop(self) -> None:
        if hasattr(self, "runner"):
            # What the pipelet still holds dies with it (a restart starts a new one): lost, and
            # its ingress credits go back to the switches that admitted it.
            held = self.runner.credits_held
            fin = self.runner.release_credits()
            if fin and self.output is not None:
                self.send(self.output, NFOutput(self.instance, -1, (), 0, held, "stopped", fin))  # type: ignore[arg-type]
            try:
                await self.runner.stop()
            except Exception as exc:  # teardown failed (a full disk under its files): in the errors
                self._error(exc, "teardown")
                raise
            finally:
                # The final counters go to the summary whatever teardown did.
                if self.monitor is not None:
                    try:
                        self.send(self.monitor, FinalStats(self.instance, self.stats()))  # type: ignore[arg-type]
                    except Exception:  # (a monitor gone at shutdown)
                        pass

    async def on_message(self, msg: Any) -> Any:
        if type(msg) is NFBatch:
            try:
                out = await self.runner.run(msg.batch)
            except Exception as exc:
                self._error(exc, "process")
                self._send(msg.seq, {}, error=f"{type(exc).__name__}: {exc}", lost=len(msg.batch))
                raise
            self._send(msg.seq, out)
            return None
        if type(msg) is StreamWork:
            # The switch reassembled our flows: tell the pipelet, answer with its verdicts.
            r = self.runner
            if msg.released or msg.drops:
                before = r.stats.dropped
                r.account(msg.released, msg.drops)
                self._sent_dropped += r.stats.dropped - before  # the switch counted those itself
            answers = r.judge(msg.events, msg.packets, msg.nbytes) if msg.events or msg.packets else ()
            to = msg.reply_to or self.output
            if msg.seq >= 0 and to is not None:
                self.send(to, StreamVerdicts(self.instance, msg.seq, answers))  # type: ignore[arg-type]
            return None
        if msg is _TIMER or msg == _TIMER:
            self._woken = False
            out = await self.runner.tick()
            if any(out.values()) or self.runner.has_finished:
                self._send(-1, out)
            return None
        if msg is _REPORT or msg == _REPORT:
            self._report()
            return None
        if type(msg) is InputDone:
            self.runner.input_done = True
            return None
        if isinstance(msg, ExportState):
            return self.runner.pipelet.export_state()
        if isinstance(msg, ImportState):
            self.runner.pipelet.import_state(dict(msg.data))
            return True
        if isinstance(msg, GetStats):
            return self.stats()
        return None

    def _wake(self) -> None:
        """The pipelet emitted from its own I/O: a timer tick now collects it (one pending at most,
        so the mailbox bound holds without dropping it)."""
        if not self._woken:
            self._woken = True
            self.remind(_TIMER)

    def _error(self, exc: BaseException, during: str) -> None:
        """Keep what went wrong (across restarts): the exception, and where in the pipelet's own
        code it was raised (the deepest frame outside e2actors), counted per kind."""
        errs: dict = self.carry.setdefault("errors", {})
        where = _user_frame(exc)
        key = (type(exc).__name__, str(exc)[:300], where, during)
        e = errs.get(key)
        if e is None:
            if len(errs) >= 32:  # (bounded: the first kinds, then counts of the known ones)
                return
            e = errs[key] = {"instance": self.instance, "type": key[0], "message": key[1], "where": where,
                             "during": during, "count": 0}
        e["count"] += 1

    def _send(self, seq: int, out: dict, error: str = "", lost: int = 0) -> None:
        if self.output is None:
            return
        st = self.runner.stats
        dropped = st.dropped - self._sent_dropped
        self._sent_dropped = st.dropped
        outputs = tuple((port, Batch(pkts)) for port, pkts in out.items() if pkts)
        self.send(self.output, NFOutput(self.instance, seq, outputs, dropped, lost, error,
                                        self.runner.take_finished()))

    def _report(self) -> None:
        st = self.runner.stats
        now = time.monotonic()
        t0, pk0, by0, busy0 = self._last
        dt = max(now - t0, 1e-9)
        mb = self.mailbox
        rep = LoadReport(
            instance=self.instance, nf=self.nf, pps=(st.packets_in - pk0) / dt, bps=(st.bytes_in - by0) * 8 / dt,
            queue=mb.depth, drops=mb.dropped, busy=min(1.0, (st.busy_seconds - busy0) / dt),
            flows=len(self.runner.pipelet.flows), held=self.runner.held, packets=st.packets_in, ts=time.time())
        self._last = (now, st.packets_in, st.bytes_in, st.busy_seconds)
        self.send(self.monitor, rep)  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        p = self.runner.pipelet
        return {"instance": self.instance, "actor": self.name, "nf": self.nf, **self.runner.stats.as_dict(),
                "drops": dict(p.drops), "counters": dict(p.counters), "flows": len(p.flows),
                "mailbox_dropped": self.mailbox.dropped, "held": self.runner.held,
                # batches waiting (timer ticks and control messages are not traffic)
                "queue": self.count_queued((NFBatch, StreamWork)),
                "restarts": self.restarts, "error_list": list(self.carry.get("errors", {}).values())}
