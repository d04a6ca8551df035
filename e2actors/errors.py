"""Every error e2actors raises is an :class:`E2Error`; each subclass says what went wrong."""

from __future__ import annotations


class E2Error(Exception):
    """Root of all e2actors errors."""


# --- runtime -----------------------------------------------------------------------------------
class CodecError(E2Error):
    """A frame could not be encoded or decoded (unknown tag, malformed, oversized)."""


class AuthError(E2Error):
    """A peer failed the shared-secret challenge, or we failed its challenge."""


class TransportError(E2Error):
    """A connection to a peer node could not be made or was lost."""


class AskTimeout(E2Error, TimeoutError):
    """An ask got no reply within its timeout."""


class ActorStopped(E2Error):
    """The target actor is not running (never was, stopped, or its node is gone)."""


class MailboxFull(E2Error):
    """A bounded mailbox refused a message (``tell_nowait`` on a full ``block`` mailbox)."""


class RemoteError(E2Error):
    """An ask's handler raised on the other side; the message carries its type and text."""


# --- packet layer ------------------------------------------------------------------------------
class PcapError(E2Error):
    """A pcap or pcapng file is malformed or of an unsupported kind."""


class FilterError(E2Error):
    """A filter expression is malformed or unsupported.

    ``column`` is the 1-based column of the offending token in ``expression``.
    """

    def __init__(self, message: str, expression: str = "", column: int = 0) -> None:
        self.expression = expression
        self.column = column
        where = f" at column {column}" if column else ""
        shown = expression
        if len(expression) > 160:  # a long expression: the part around the column
            lo = max(0, min(column - 1, len(expression)) - 80)
            shown = ("..." if lo else "") + expression[lo:lo + 160] + ("..." if lo + 160 < len(expression) else "")
        super().__init__(f"{message}{where}" + (f": {shown!r}" if expression else ""))


class SpawnRefused(E2Error):
    """A node refused to start an actor (class not on its allow-list, or not importable)."""


class RuleError(E2Error):
    """An IDS rule is malformed. ``source`` is ``file:line`` (or ``<rules>:N`` for in-memory text)."""

    def __init__(self, message: str, source: str = "") -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


# --- manager -----------------------------------------------------------------------------------
class PolicyError(E2Error):
    """A policy or hardware description is invalid: ``file``, ``line`` (1-based; 0 when unknown,
    e.g. from the builder), ``reason``, and ``column`` (1-based in the file, 0 when unknown)."""

    def __init__(self, file: str, line: int, reason: str, column: int = 0) -> None:
        self.file, self.line, self.reason, self.column = file, line, reason, column
        where = file + (f":{line}" if line else "") + (f":{column}" if line and column else "")
        super().__init__(f"{where}: {reason}")


class PlacementError(E2Error):
    """The instances cannot be placed: not enough cores (or NIC bandwidth) on the servers."""
