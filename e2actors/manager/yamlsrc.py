"""YAML with line numbers: mappings and lists that remember where each value sat in the file.

The policy and hardware files are read with PyYAML's composer (``yaml.compose``), whose nodes carry
start marks; :func:`load_yaml` turns the node tree into plain Python values, except that mappings
become :class:`LDict` and sequences :class:`LList`, which know the line (1-based) of every value, so
validation errors can name ``FILE:LINE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["LDict", "LList", "Loc", "load_yaml"]


@dataclass(frozen=True, slots=True)
class Loc:
    """Where a value starts: 1-based ``line`` and ``column``; ``quoted`` for a quoted scalar (its
    text starts one column later)."""

    line: int
    column: int
    quoted: bool = False


class LDict(dict):
    """A mapping from the file: ``loc`` is the mapping's own place, ``locs[key]`` each value's."""

    loc: Loc
    locs: dict[Any, Loc]
    key_locs: dict[Any, Loc]

    def line(self, key: Any = None) -> int:
        """Line of ``key``'s value (of the mapping itself when ``key`` is None or absent)."""
        if key is not None and key in self.locs:
            return self.locs[key].line
        return self.loc.line


class LList(list):
    """A sequence from the file: ``loc`` is its own place, ``locs[i]`` each item's."""

    loc: Loc
    locs: list[Loc]

    def line(self, i: int | None = None) -> int:
        if i is not None and 0 <= i < len(self.locs):
            return self.locs[i].line
        return self.loc.line


def _loc(node: yaml.Node) -> Loc:
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    return Loc(node.start_mark.line + 1, node.start_mark.column + 1, quoted)


def _convert(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LDict()
        out.loc, out.locs, out.key_locs = _loc(node), {}, {}
        loader.flatten_mapping(node)
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.MarkedYAMLError(None, None, "a mapping key must be a plain value", knode.start_mark) from None
            out[key] = _convert(vnode, loader)
            out.locs[key] = _loc(vnode)
            out.key_locs[key] = _loc(knode)
        return out
    if isinstance(node, yaml.SequenceNode):
        lst = LList(_convert(n, loader) for n in node.value)
        lst.loc, lst.locs = _loc(node), [_loc(n) for n in node.value]
        return lst
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, name: str = "<string>") -> Any:
    """Parse one YAML document into plain values with :class:`LDict`/:class:`LList` containers.
    Raises :class:`yaml.YAMLError` (with ``problem_mark``) on malformed YAML."""
    loader = yaml.SafeLoader(text)
    loader.name = name
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, loader)
    finally:
        loader.dispose()


def plain(v: Any) -> Any:
    """LDict/LList -> dict/list, recursively (what a caller keeps once the lines are no longer needed)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
