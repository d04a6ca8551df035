"""Every error e2actors raises is an :class:`E2Error`; each subclass says what went wrong.

Errors cross nodes with their type: when an ask's handler raises on another node, the asker gets
the same :class:`E2Error` subclass (an ``AskTimeout``, a ``SpawnRefused``, a ``ChangeFailed``...)
with the same text and its declared fields (a ``ConfigError``'s ``nf``, ``key``, ``reason``; a
``PolicyError``'s ``file`` and ``line``: :func:`remote_error`); any other exception arrives as a :class:`RemoteError`
naming its type.
"""

from __future__ import annotations


class E2Error(Exception):
    """Root of all e2actors errors."""

    @classmethod
    def from_remote(cls, text: str, fields: dict | None = None) -> E2Error:
        """This error as raised on another node, rebuilt from its text and its ``fields`` (the
        attributes its class declares, e.g. a :class:`ConfigError`'s ``nf``, ``key`` and
        ``reason``; see :meth:`wire_fields`). Anything else is ignored; what is missing keeps the
        class's empty default."""
        exc = cls.__new__(cls)
        Exception.__init__(exc, text)
        for k, v in (fields or {}).items():
            if isinstance(k, str) and not k.startswith("_") and type(v) in (str, int, float, bool) \
                    and type(getattr(cls, k, None)) is type(v):
                setattr(exc, k, v)
        return exc

    def wire_fields(self) -> dict[str, str | int | float | bool]:
        """The attributes its class declares with a plain default (``nf, key, reason = "", "", ""``),
        as they are on this error: what crosses to the asker on another node."""
        out: dict[str, str | int | float | bool] = {}
        for klass in type(self).__mro__:
            for k, default in vars(klass).items():
                if not k.startswith("_") and type(default) in (str, int, float, bool) and k not in out:
                    v = getattr(self, k, default)
                    if type(v) is type(default):
                        out[k] = v
        return out


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
    """A bounded mailbox refused a message (``send`` to a full ``block`` mailbox, or an ask a full
    mailbox dropped)."""


class RemoteError(E2Error):
    """An ask's handler on another node raised an exception that is not an :class:`E2Error`:
    ``type_name`` is its type's name (``ValueError``), ``text`` its message."""

    def __init__(self, type_name: str, text: str = "") -> None:
        self.type_name = type_name
        self.text = text
        super().__init__(f"{type_name}: {text}" if text else type_name)

    @classmethod
    def from_remote(cls, text: str, fields: dict | None = None) -> RemoteError:
        type_name, _, rest = text.partition(": ")
        return cls(type_name, rest)


# --- configuration -----------------------------------------------------------------------------
class ConfigError(E2Error):
    """A user's configuration is invalid: ``nf`` is the NF (or the component, e.g. ``port in``)
    whose configuration it is, ``key`` the configuration key (empty when it is about the whole),
    ``reason`` what is wrong."""

    nf, key, reason = "", "", ""

    def __init__(self, nf: str, key: str, reason: str) -> None:
        self.nf, self.key, self.reason = nf, key, reason
        super().__init__(f"{nf}: config {key!r}: {reason}" if key else f"{nf}: {reason}")


# --- packet layer ------------------------------------------------------------------------------
class PcapError(E2Error):
    """A pcap or pcapng file is malformed or of an unsupported kind."""


class FilterError(E2Error):
    """A filter expression is malformed or unsupported.

    ``column`` is the 1-based column of the offending token in ``expression``.
    """

    expression = ""
    column = 0

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

    source = ""

    def __init__(self, message: str, source: str = "") -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


# --- manager -----------------------------------------------------------------------------------
class PolicyError(E2Error):
    """A policy or hardware description is invalid: ``file``, ``line`` (1-based; 0 when unknown,
    e.g. from the builder), ``reason``, and ``column`` (1-based in the file, 0 when unknown)."""

    file, line, reason, column = "", 0, "", 0

    def __init__(self, file: str, line: int, reason: str, column: int = 0) -> None:
        self.file, self.line, self.reason, self.column = file, line, reason, column
        where = file + (f":{line}" if line else "") + (f":{column}" if line and column else "")
        super().__init__(f"{where}: {reason}")


class PlacementError(E2Error):
    """The instances cannot be placed: not enough cores (or NIC bandwidth) on the servers."""


class ChangeFailed(E2Error):
    """A change to a running deployment could not be applied; it was rolled back to what ran
    before. ``diff``: the policy difference it tried to apply, when it was a policy update."""

    diff: object = None


def remote_error(type_name: str, text: str, fields: dict | None = None) -> E2Error:
    """The exception an asker raises for a remote handler's ``type_name: text``: the e2actors
    error of that name with its ``fields`` (:meth:`E2Error.from_remote`), else a :class:`RemoteError`."""
    cls = _known().get(type_name)
    if cls is None:
        return RemoteError(type_name, text)
    return cls.from_remote(text, fields)


def _known() -> dict[str, type[E2Error]]:
    """Every e2actors error class by name (walked on use: errors are rare, and modules define
    their own subclasses when imported)."""
    out: dict[str, type[E2Error]] = {}
    todo: list[type[E2Error]] = [E2Error]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("e2actors.") and cls.__name__ not in out:
            out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out
