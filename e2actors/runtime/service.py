"""Service actors: actors that answer requests from other nodes and must outlive any request.

A node's ``$system`` actor (spawn, stop, describe) and the manager's control endpoint take
messages from whoever holds the cluster secret. An ordinary actor that raises in its handler
crashes, and its supervisor restarts it only so many times (:class:`RestartPolicy`: three in ten
seconds) before it stops for good; four unknown messages were enough to leave an agent unable to
spawn anything. A :class:`ServiceActor` never crashes on a request: whatever its
:meth:`~ServiceActor.handle` raises is the request's fault, answered to an ask as its error (the
asker's ``ask`` raises it, a :class:`~e2actors.errors.RemoteError` across nodes), counted in the
node's ``bad_requests`` counter (``e2_node_events_total{event="bad_requests"}`` on an agent) and
logged at most once per :attr:`~ServiceActor.log_interval` seconds with the count of those not
logged, so a flood of bad requests costs neither the actor nor the log.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from e2actors.runtime.actor import Actor

__all__ = ["ServiceActor"]

log = logging.getLogger("e2actors.service")


class ServiceActor(Actor):
    """An actor whose request handler (:meth:`handle`) may raise without crashing it."""

    #: Seconds between two log lines about bad requests (the ones in between are counted).
    log_interval: float = 10.0
    # when a bad request was last logged, and how many were not logged since (class defaults: a
    # subclass's on_start need not set them)
    _last_log: float | None = None
    _unlogged: int = 0

    async def handle(self, msg: Any) -> Any:
        """Handle one request and return the reply; raise to refuse it."""
        raise NotImplementedError

    async def on_message(self, msg: Any) -> Any:
        try:
            return await self.handle(msg)
        except Exception as exc:
            self.refuse(msg, exc)
            return None

    def refuse(self, msg: Any, exc: BaseException) -> None:
        """Answer the current ask (if any) with ``exc``, count it and log it (rate-limited)."""
        ask = self.current_ask
        if ask is not None:
            ask.fail(exc)
        self.node.counters["bad_requests"] += 1
        now = monotonic()
        if self._last_log is None or now - self._last_log >= self.log_interval:
            more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            log.warning("%s refused a %s %s: %s%s", self.ref.name, "request" if ask is not None else "message",
                        _describe(msg), exc, more)
            self._last_log, self._unlogged = now, 0
        else:
            self._unlogged += 1


def _describe(msg: Any) -> str:
    text = repr(msg)
    return f"{type(msg).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"
