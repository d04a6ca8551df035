"""YAML with line numbers: mappings and lists that remember where each value sat in the file.

The policy and hardware files are read with PyYAML's composer (``yaml.compose``), whose nodes carry
start marks; :func:`load_yaml` turns the node tree into plain Python values, except that mappings
become :class:`LDict` and sequences :class:`LList`, which know the line (1-based) of every value, so
validation errors can name ``FILE:LINE``.

Hostile files are refused before they cost time or memory (:class:`YAMLLimitError`, a
:class:`yaml.MarkedYAMLError` whose mark is the offending alias or node): YAML aliases are counted
while the file is composed (at most :data:`MAX_ALIASES`), and so are the nodes they add once
expanded (at most :data:`MAX_ALIAS_NODES`: a 400-byte "billion laughs" file would otherwise expand
to hundreds of millions of values); an alias to a node that encloses it (a recursive structure) and
nesting deeper than :data:`MAX_DEPTH` are refused too, so converting the tree never overflows
Python's stack. A scalar whose tag cannot be built (``!!int abc``, the date ``2001-02-30``) is a
marked error at its line rather than a bare ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["LDict", "LList", "Loc", "MAX_ALIASES", "MAX_ALIAS_NODES", "MAX_DEPTH", "YAMLLimitError", "load_yaml",
           "yaml_problem"]

#: Most aliases (``*name``) one file may use. Policies and hardware files use a handful at most.
MAX_ALIASES = 1_000
#: Most values the aliases of one file may add once expanded (each alias adds its target's size,
#: nested aliases included). Bounds the work of a small file to a fraction of a second.
MAX_ALIAS_NODES = 100_000
#: Deepest nesting of collections; a policy needs about six levels.
MAX_DEPTH = 100


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


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML file exceeds a limit on aliases or nesting, or is recursive; ``problem_mark`` is where."""


class _Loader(yaml.SafeLoader):
    """The safe loader that counts aliases, expanded sizes and depth while it composes."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._aliases = 0
        self._alias_nodes = 0
        self._depth = 0
        # Expanded size (this node and everything under it, aliases expanded) of every composed node.
        self._sizes: dict[int, int] = {}
        # Nodes whose anchor is open: an alias to one of them would make the tree recursive.
        self._open: set[str] = set()

    def fetch_flow_collection_start(self, token_class: type) -> None:
        # Refused in the scanner already: it looks ahead up to 1,024 characters per token for a
        # possible key, at a cost that grows with the flow depth (a second for ``[[[[...``).
        if self.flow_level >= MAX_DEPTH:
            raise YAMLLimitError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(None, None, f"more than {MAX_ALIASES} aliases", event.start_mark)
            if event.anchor in self._open:
                raise YAMLLimitError(None, None, f"recursive alias *{event.anchor} (it refers to a node that "
                                     "contains it)", event.start_mark)
            node = super().compose_node(parent, index)  # the anchored node (or "undefined alias")
            self._alias_nodes += self._sizes[id(node)]
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise YAMLLimitError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} values "
                                     "(an alias bomb?)", event.start_mark)
            return node
        event = self.peek_event()
        if self._depth >= MAX_DEPTH:
            raise YAMLLimitError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)
        sizes = self._sizes
        if isinstance(node, yaml.SequenceNode):
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[id(node)] = 1 + sum(sizes[id(k)] + sizes[id(v)] for k, v in node.value)
        else:
            sizes[id(node)] = 1
        return node


def _construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """``construct_object`` with a bad tagged value (``!!int abc``, ``2001-02-30``) as a marked error."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
        raise yaml.MarkedYAMLError(None, None, f"cannot read {node.value!r} as {node.tag}: {e}",
                                   node.start_mark) from None


def _loc(node: yaml.Node) -> Loc:
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    return Loc(node.start_mark.line + 1, node.start_mark.column + 1, quoted)


def _convert(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LDict()
        out.loc, out.locs, out.key_locs = _loc(node), {}, {}
        loader.flatten_mapping(node)
        for knode, vnode in node.value:
            key = _construct(loader, knode)
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
    return _construct(loader, node)


def load_yaml(text: str, name: str = "<string>") -> Any:
    """Parse one YAML document into plain values with :class:`LDict`/:class:`LList` containers.
    Raises :class:`yaml.YAMLError` (with ``problem_mark``) on malformed YAML, and
    :class:`YAMLLimitError` on a file beyond the limits above."""
    loader = _Loader(text)
    loader.name = name
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, loader)
    finally:
        loader.dispose()


def yaml_problem(e: yaml.YAMLError, text: str) -> tuple[int, int, str]:
    """``(line, column, reason)`` of a YAML error from :func:`load_yaml` on ``text`` (1-based; 0 when
    unknown), for a ``FILE:LINE`` error: ``not valid YAML: ...`` or, past a limit, ``YAML refused: ...``."""
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow: only an offset
        before = text[:e.position]
        line = before.count("\n") + 1
        what = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        return line, e.position - (before.rfind("\n") + 1) + 1, \
            f"not valid YAML: unacceptable character {what}: {e.reason}"
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:  # e.g. "found duplicate anchor 'a'; first occurrence" + "second occurrence"
        problem = f"{context}" + (f" (line {cmark.line + 1})" if cmark else "") + f", {problem}"
    kind = "YAML refused" if isinstance(e, YAMLLimitError) else "not valid YAML"
    return (mark.line + 1, mark.column + 1, f"{kind}: {problem}") if mark else (0, 0, f"{kind}: {problem}")


def plain(v: Any) -> Any:
    """LDict/LList -> dict/list, recursively (what a caller keeps once the lines are no longer needed)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
