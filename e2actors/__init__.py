"""e2actors: the E2 design for network function virtualization, on asyncio actors.

The public surface lives here; see README.md and DESIGN.md for the architecture.
"""

from __future__ import annotations

from e2actors.errors import (
    ActorStopped,
    AskTimeout,
    AuthError,
    CodecError,
    E2Error,
    FilterError,
    MailboxFull,
    PcapError,
    RemoteError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "ActorStopped",
    "AskTimeout",
    "AuthError",
    "CodecError",
    "E2Error",
    "FilterError",
    "MailboxFull",
    "PcapError",
    "RemoteError",
    "TransportError",
    "__version__",
]
