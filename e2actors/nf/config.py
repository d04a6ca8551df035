"""Reading an NF's configuration: values checked, errors naming the NF and the key.

A pipelet's ``setup(config)`` gets the ``config`` mapping of its NF in the policy. Whatever is
wrong with it is the operator's to fix, so it raises :class:`~e2actors.errors.ConfigError`
(``NF: config 'KEY': reason``), never a bare ``ValueError`` from deep inside::

    self.window = config_number("IDS", config, "inspect_window", 32768, minimum=1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from e2actors.errors import ConfigError

__all__ = ["config_number"]

N = TypeVar("N", int, float)


def config_number(nf: str, config: Mapping[str, Any], key: str, default: N, *,
                  cast: Callable[[Any], N] | None = None, minimum: float | None = None) -> N:
    """``config[key]`` as a number of ``default``'s type (``cast``: another conversion), at least
    ``minimum``; ``default`` when absent. Raises :class:`ConfigError` otherwise."""
    if key not in config:
        return default
    v = config[key]
    conv = cast or type(default)
    try:
        if isinstance(v, bool):
            raise ValueError
        x = conv(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(nf, key, f"a number, not {v!r}") from None
    if x != x or (minimum is not None and x < minimum):  # (NaN included)
        raise ConfigError(nf, key, f"at least {minimum}, not {v!r}" if minimum is not None else f"not {v!r}")
    return x
