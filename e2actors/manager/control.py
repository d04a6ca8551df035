"""Controlling a running deployment: a small control actor, and ``e2actors apply``.

``e2actors run POLICY --control unix:///tmp/e2.ctl --secret-file S`` serves control requests on a
node of its own (same process, same secret as the run) with one actor, ``control``, which holds
the :class:`~e2actors.manager.manager.Manager`. From elsewhere::

    e2actors apply NEW_POLICY --control unix:///tmp/e2.ctl --secret-file S [--dry-run] [--json]

connects over the actor transport (the HMAC-authenticated handshake with the run's secret), sends
the policy text, and prints the difference and whether it was applied (or why it was rolled back).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from e2actors.errors import ChangeFailed, E2Error
from e2actors.runtime.service import ServiceActor
from e2actors.runtime.codec import message
from e2actors.runtime.node import Node, run
from e2actors.runtime.ref import ActorRef

if TYPE_CHECKING:
    from e2actors.manager.manager import Manager

__all__ = ["ApplyPolicy", "ControlActor", "ControlServer", "GetStatus", "read_or_create_secret"]

CONTROL = "control"


@message(400)
@dataclass(frozen=True, slots=True)
class ApplyPolicy:
    """Apply a policy (YAML text) to the running deployment. Reply: ``{"ok", "diff", "text",
    "error"}``. ``base_dir``: where the policy's relative paths (rules files) are."""

    text: str
    file: str = "<apply>"
    base_dir: str = "."
    dry_run: bool = False


@message(401)
@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask for the deployment's state: policy, instances per NF and placement, recent events."""


class ControlActor(ServiceActor):
    """Serves control requests for one manager in this process. A bad request is answered with
    its error and counted, never a crash (:class:`~e2actors.runtime.service.ServiceActor`)."""

    mailbox_size = 64

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, ApplyPolicy):
            return await self._apply(msg)
        if isinstance(msg, GetStatus):
            m = self.manager
            plan = m.plan_
            return {"policy": plan.policy.name if plan else None, "version": m.version,
                    "instances_per_nf": m.instance_counts() if plan else {},
                    "placement": dict(plan.assignment) if plan else {},
                    "events": [e.as_dict() for e in m.events[-50:]]}
        raise E2Error(f"control does not handle {type(msg).__name__}")

    async def _apply(self, msg: ApplyPolicy) -> dict[str, Any]:
        from e2actors.manager.policy import Policy

        try:
            policy = Policy.from_yaml(msg.text, msg.file)
            policy.base_dir = msg.base_dir
            d = await self.manager.update(policy, dry_run=msg.dry_run)
        except ChangeFailed as exc:
            d = getattr(exc, "diff", None)
            return {"ok": False, "error": str(exc), "diff": d.as_dict() if d else None, "text": d.text() if d else ""}
        except E2Error as exc:  # invalid policy, no room: nothing changed
            return {"ok": False, "error": str(exc), "diff": None, "text": ""}
        return {"ok": True, "error": "", "diff": d.as_dict(), "text": d.text()}


class ControlServer:
    """A node listening at ``address`` with the control actor for ``manager``."""

    def __init__(self, manager: Manager, address: str, secret: bytes) -> None:
        self.manager = manager
        self.node = Node("control", listen=address, secret=secret)
        self.address = address

    async def start(self) -> str:
        await self.node.start()
        self.node.spawn(ControlActor, CONTROL, manager=self.manager)
        self.address = self.node.address
        return self.address

    async def stop(self) -> None:
        await self.node.stop()
        if self.address.startswith("unix://"):
            try:
                os.unlink(self.address[len("unix://"):])
            except OSError:
                pass


def read_or_create_secret(path: str) -> bytes:
    """The secret in ``path``; a new random one written there (mode 0600) if the file is absent."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            secret = f.read().strip()
        if len(secret) < 16:
            raise E2Error(f"the secret in {path} is too short (16 bytes at least)")
        return secret
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


async def send_request(address: str, secret: bytes, msg: Any, timeout: float = 60.0) -> Any:
    """Send one control request to the run at ``address``; returns the reply."""
    node = Node("apply", secret=secret)
    await node.start()
    try:
        await node.connect(address)
        return await node.ask(ActorRef(address, CONTROL), msg, timeout=timeout)
    finally:
        await node.stop()


# --- e2actors apply -------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", help="the new policy file (YAML)")
    p.add_argument("--control", required=True, help="the run's control address (unix:///PATH or tcp://HOST:PORT)")
    p.add_argument("--secret-file", required=True, help="the run's secret")
    p.add_argument("--dry-run", action="store_true", help="show the difference, change nothing")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="print the reply as one JSON object")


def main(args: argparse.Namespace) -> int:
    try:
        with open(args.policy, encoding="utf-8") as f:
            text = f.read()
        from e2actors.manager.policy import Policy

        # Validate here first (errors name this file and line); the run imports the classes.
        Policy.from_yaml(text, args.policy, check_classes=False)
        secret = read_or_create_secret(args.secret_file) if os.path.exists(args.secret_file) else None
        if secret is None:
            raise E2Error(f"no secret file {args.secret_file}")
        msg = ApplyPolicy(text, args.policy, os.path.dirname(os.path.abspath(args.policy)), args.dry_run)
        reply = run(send_request(args.control, secret, msg, args.timeout))
    except (E2Error, OSError) as exc:
        print(f"e2actors apply: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply, default=str))
    else:
        if reply.get("text"):
            print(reply["text"])
        if not reply["ok"]:
            print(f"e2actors apply: {reply['error']}", file=sys.stderr)
    return 0 if reply["ok"] else 1


async def serve_for(manager: Manager, address: str | None, secret: bytes) -> ControlServer | None:
    """Start a control server for ``manager`` at ``address`` (None: none)."""
    if not address:
        return None
    srv = ControlServer(manager, address, secret)
    await srv.start()
    return srv
