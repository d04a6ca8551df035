"""Built-in NFs: one module each (``ids``, ``hostfilter``, ...)."""

from e2actors.nf.builtin.hostfilter import HostFilter
from e2actors.nf.builtin.ids import IDS

__all__ = ["IDS", "HostFilter"]
