"""What an NF's configuration may touch on a node: files under its data directory, external
programs under allowed prefixes. Pure code (file-system lookups, no I/O beyond ``realpath``).

A policy's NF configs arrive from the manager: on an agent they are *code* from another machine
(a Logger's pcap path is a file write, a Legacy ``cmd`` a program run), so an agent confines them:

* every file path a config names resolves against the node's **data directory** (relative paths
  are taken from it) and must stay inside it once symlinks and ``..`` are resolved; a path that
  leaves it is refused with the reason;
* ``Legacy`` programs run only when the node allows them (``--allow-legacy PREFIX``), and only
  when the program's resolved path (after ``PATH`` lookup and symlinks) is under such a prefix.

A local run (``e2actors run`` without agents, and its ``--workers``) is the operator running their
own policy with their own rights: it uses :meth:`Confinement.unconfined` (paths relative to the
current directory, anything allowed), which is also what a node without a confinement does.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from e2actors.errors import ConfigError, E2Error

__all__ = ["Confinement", "ConfinementError", "default_data_dir", "process_confinement", "set_process_confinement"]


class ConfinementError(ConfigError):
    """A config names a file outside the data directory, or a program the node does not allow
    (a :class:`ConfigError` whose ``nf`` the caller may not know: then empty)."""

    def __init__(self, reason: str, key: str = "") -> None:
        E2Error.__init__(self, f"config {key!r}: {reason}" if key else reason)
        self.nf, self.reason, self.key = "", reason, key


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True, slots=True)
class Confinement:
    """``data_dir``: where relative config paths point (and, with ``files``, the only place file
    paths may point); ``legacy``: prefixes of the programs Legacy may run (None: none at all)."""

    data_dir: str
    files: bool = True
    legacy: tuple[str, ...] | None = None

    @classmethod
    def unconfined(cls, data_dir: str | None = None) -> Confinement:
        """Nothing confined (a local run): relative paths from ``data_dir`` (default: the cwd)."""
        return cls(os.path.abspath(data_dir or os.getcwd()), files=False, legacy=(os.sep,))

    def path(self, path: str | os.PathLike, key: str = "") -> str:
        """The absolute path ``path`` names (relative: from the data directory). Confined, it is
        the fully resolved path and must lie inside the data directory, else :class:`ConfinementError`."""
        p = os.fspath(path)
        if not isinstance(p, str) or not p:
            raise ConfinementError(f"{path!r} is not a file path", key)
        if "\x00" in p:
            raise ConfinementError("a path with a NUL byte", key)
        full = os.path.abspath(os.path.join(self.data_dir, p))  # an absolute p stays itself
        if not self.files:
            return full
        root = os.path.realpath(self.data_dir)
        real = os.path.realpath(full)
        if _inside(real, root):
            return real
        if _inside(os.path.normpath(full), os.path.normpath(os.path.abspath(self.data_dir))):
            raise ConfinementError(f"{p!r} leads through a symbolic link to {real}, outside the data "
                                   f"directory {root}", key)
        raise ConfinementError(f"{p!r} is outside the data directory {root} (NF files must stay in it)", key)

    def program(self, argv0: str, key: str = "cmd") -> str:
        """The resolved path of the program ``argv0`` (a name looked up in ``PATH``, or a path;
        relative paths from the data directory), if this node lets Legacy run it."""
        if self.legacy is None:
            raise ConfinementError("this node runs no Legacy programs (start the agent with "
                                   "--allow-legacy PREFIX to allow the programs under PREFIX)", key)
        if not isinstance(argv0, str) or not argv0 or "\x00" in argv0:
            raise ConfinementError(f"{argv0!r} is not a program", key)
        found = shutil.which(argv0) if os.sep not in argv0 else os.path.join(self.data_dir, argv0)
        if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
            raise ConfinementError(f"program {argv0!r} not found or not executable", key)
        real = os.path.realpath(found)
        if any(_inside(real, os.path.realpath(p)) for p in self.legacy):
            return real
        raise ConfinementError(f"program {argv0!r} ({real}) is not under an allowed Legacy prefix "
                               f"({', '.join(self.legacy) or 'none'})", key)


def default_data_dir(name: str) -> str:
    """An agent's data directory when ``--data-dir`` is not given: systemd's ``$STATE_DIRECTORY``
    when set (the unit's ``StateDirectory=``), else ``$XDG_STATE_HOME/e2actors/agent-NAME``
    (``~/.local/state/e2actors/agent-NAME``)."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "agent"
    return os.path.join(base, "e2actors", f"agent-{safe}")


_process: Confinement | None = None


def set_process_confinement(c: Confinement | None) -> None:
    """Set what this process's NFs may touch (the agent does it at start): the fallback for
    pipelets started outside an NF instance actor, such as a switch's inline NFs."""
    global _process
    _process = c


def process_confinement() -> Confinement | None:
    return _process
