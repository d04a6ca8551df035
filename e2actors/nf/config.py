"""Reading an NF's configuration: values checked, errors naming the NF and the key.

A pipelet's ``setup(config)`` gets the ``config`` mapping of its NF in the policy. Whatever is
wrong with it is the operator's to fix, so it raises :class:`~e2actors.errors.ConfigError`
(``NF: config 'KEY': reason``), never a bare ``ValueError`` from deep inside::

    self.window = config_number("IDS", config, "inspect_window", 32768, minimum=1)

A pipelet may instead declare its config as a dataclass (:attr:`Pipelet.config_schema`): the
planner checks every NF's config against it before anything runs (unknown keys, missing keys,
wrong types, values outside a ``Literal``), and the instance gets the typed object as
``self.settings``. :func:`parse_config` does the checking.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from e2actors.errors import ConfigError

__all__ = ["config_number", "parse_config"]

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


def _check(nf: str, key: str, tp: Any, v: Any) -> Any:
    """``v`` as type ``tp`` (ints taken where a float is wanted), or ConfigError."""
    if tp is Any or tp is object:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(nf, key, f"one of {', '.join(map(repr, args))}, not {v!r}")
        return v
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _check(nf, key, a, v)
            except ConfigError as exc:
                errors.append(exc.reason)
        wants = [r.rsplit(", not ", 1)[0] for r in errors]
        raise ConfigError(nf, key, f"{' or '.join(wants)}, not {v!r}")
    if tp is type(None):
        if v is not None:
            raise ConfigError(nf, key, f"empty (null), not {v!r}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(nf, key, f"true or false, not {v!r}")
        return v
    if tp in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (tp is int and not isinstance(v, int)):
            raise ConfigError(nf, key, f"{'an integer' if tp is int else 'a number'}, not {v!r}")
        return tp(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(nf, key, f"text, not {v!r}")
        return v
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(nf, key, f"a list, not {v!r}")
        item = args[0] if args else Any
        out = [_check(nf, f"{key}[{i}]", item, x) for i, x in enumerate(v)]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(v, Mapping):
            raise ConfigError(nf, key, f"a mapping, not {v!r}")
        kt, vt = args if args else (Any, Any)
        return {_check(nf, f"{key} key", kt, k): _check(nf, f"{key}.{k}", vt, x) for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        return parse_config(nf, tp, v, key + ".")
    if isinstance(tp, type):
        if not isinstance(v, tp):
            raise ConfigError(nf, key, f"a {tp.__name__}, not {v!r}")
        return v
    return v


def parse_config(nf: str, schema: type, config: Mapping[str, Any], prefix: str = "") -> Any:
    """``config`` as an instance of the dataclass ``schema``: every key a field, every field
    without a default given, every value of its field's type (``int``, ``float``, ``str``,
    ``bool``, ``list[...]``, ``dict[str, ...]``, ``Literal[...]``, ``X | None``, a nested
    dataclass). Raises :class:`ConfigError` naming the key otherwise."""
    if not isinstance(config, Mapping):
        raise ConfigError(nf, prefix.rstrip("."), f"a mapping, not {config!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = [k for k in config if k not in fields]
    if unknown:
        raise ConfigError(nf, prefix + str(unknown[0]), f"unknown key (known: {', '.join(fields) or 'none'})")
    values = {}
    for name, f in fields.items():
        if name in config:
            values[name] = _check(nf, prefix + name, hints.get(name, Any), config[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(nf, prefix + name, "missing")
    try:
        return schema(**values)
    except (TypeError, ValueError) as exc:  # a __post_init__ check
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(nf, prefix.rstrip("."), str(exc)) from None
