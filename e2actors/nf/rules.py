"""Snort-style IDS rules: a parser for the ``content:`` subset, and the multi-pattern matcher. Pure code.

Parsing (:func:`parse_rules`, :func:`load_rules`) turns rule text into :class:`Rule` objects gathered in
a :class:`RuleSet`; :class:`Matcher` compiles a rule set into two Aho-Corasick automata
(``ahocorasick_rs.BytesAhoCorasick``: one for case-sensitive patterns, one for ``nocase`` patterns run
over a lowercased copy of the text) and matches every pattern of every rule in one pass over a stream.

The subset understood::

    alert <proto> <src> <sport> -> <dst> <dport> (msg:"..."; content:"..."; nocase; depth:N; offset:N;
        content:!"..."; flow:to_server,established; sid:N; rev:N; classtype:...; reference:...;)

- Actions ``alert``, ``drop``, ``reject``, ``sdrop``, ``log``: all mean "this flow is unsafe". ``pass``
  (and anything else) is skipped with a warning.
- Protocols ``tcp``, ``udp``, ``icmp``, ``ip`` (any). Application-layer protocols of Suricata
  (``http``, ``tls``, ``dns``...) are skipped with a warning.
- Addresses (``$HOME_NET``, ``any``, CIDRs, lists, negations) are parsed for syntax only and NOT
  matched: which side is "home" is a deployment fact we do not know. This is the documented coarse part:
  a rule fires whatever the addresses.
- Ports (``any``, ``80``, ``!80``, ``[80,443]``, ``1024:``, ``:1023``, ``1:1024``, ``[1:100,!50]``,
  ``$HTTP_PORTS``) ARE matched against the packet's (or stream chunk's) source and destination ports;
  ``<>`` matches either way round. A ``$VARIABLE`` resolves through the ``vars`` mapping; an unknown
  one means ``any`` (a superset: it can only add alerts).
- Content: several ``content`` per rule, all must match (in the same direction of the flow, each
  anywhere in its own window; relative ``distance``/``within`` are not supported, so such rules are
  skipped); ``|de ad|`` hex; the escapes ``\\"`` ``\\;`` ``\\\\``; ``nocase``; ``depth``/``offset``
  (measured from the start of the direction's stream: a content with ``offset:O; depth:D`` must start
  at or after byte O and end at or before byte O+D); ``rawbytes`` and ``fast_pattern`` (no effect: we
  always match raw bytes and always match every pattern). Negated ``content:!"x"``: the rule fires when
  its positive contents have all matched and ``x`` has not been seen (in its window) up to the end of
  the chunk that completed them. A rule with no positive content is skipped.
- ``flow``: ``to_server``/``from_client`` (bytes sent by the client), ``to_client``/``from_server``,
  ``established``, ``stateless``, ``only_stream`` are supported; ``no_stream``, ``not_established``,
  ``only_frag``, ``no_frag`` skip the rule.
- Informational options are accepted and ignored: ``msg sid rev gid classtype reference metadata
  priority target tag``; ``threshold`` (alert rate limiting: we mark every matching flow);
  ``flowbits:set|unset|toggle`` (nothing reads the bits, because every rule using
  ``flowbits:isset|isnotset|noalert`` is skipped).
- Any other option (``pcre``, ``byte_test``, ``http_uri``, ``dsize``, ``flags``...) skips the rule with
  a warning naming the option; the rule lands in :attr:`RuleSet.skipped`. Loading never crashes on
  rules we do not understand; a rule that is *malformed* (unbalanced quotes or parentheses, bad hex,
  missing ``sid``, non-numeric ``depth``...) raises :class:`RuleError` naming the file and line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ahocorasick_rs

from e2actors.errors import RuleError

__all__ = [
    "Content",
    "Matcher",
    "PortSet",
    "Rule",
    "RuleError",
    "RuleSet",
    "SkippedRule",
    "load_rules",
    "parse_rule",
    "parse_rules",
]

log = logging.getLogger("e2actors.nf.rules")




# --- the rule model --------------------------------------------------------------------------------
ANY_SIDE = 0
TO_SERVER = 1  # bytes sent by the client
TO_CLIENT = 2  # bytes sent by the server


@dataclass(frozen=True, slots=True)
class Content:
    """One ``content`` match. ``depth`` is None when unbounded."""

    pattern: bytes
    nocase: bool = False
    offset: int = 0
    depth: int | None = None
    negated: bool = False

    @property
    def end_max(self) -> int | None:
        """The stream offset the match must end at or before (None: anywhere)."""
        return None if self.depth is None else self.offset + self.depth


@dataclass(frozen=True, slots=True)
class PortSet:
    """Ports as ranges to include (empty: any) and ranges to exclude."""

    include: tuple[tuple[int, int], ...] = ()
    exclude: tuple[tuple[int, int], ...] = ()

    @property
    def is_any(self) -> bool:
        return not self.include and not self.exclude

    def __contains__(self, port: int) -> bool:
        if self.include and not any(lo <= port <= hi for lo, hi in self.include):
            return False
        return not any(lo <= port <= hi for lo, hi in self.exclude)


ANY_PORT = PortSet()


@dataclass(slots=True)
class Rule:
    sid: int
    msg: str = ""
    rev: int = 0
    gid: int = 1
    action: str = "alert"
    proto: str = "tcp"
    src: str = "any"
    sport: PortSet = ANY_PORT
    dst: str = "any"
    dport: PortSet = ANY_PORT
    bidirectional: bool = False
    side: int = ANY_SIDE
    contents: tuple[Content, ...] = ()
    classtype: str = ""
    source: str = ""
    text: str = ""

    def ports_match(self, sport: int, dport: int) -> bool:
        """Do the header's ports match a packet or chunk going from ``sport`` to ``dport``?"""
        if sport in self.sport and dport in self.dport:
            return True
        return self.bidirectional and dport in self.sport and sport in self.dport

    def proto_match(self, proto: int) -> bool:
        p = self.proto
        return p == "ip" or (p == "tcp" and proto == 6) or (p == "udp" and proto == 17) or (
            p == "icmp" and proto in (1, 58))


@dataclass(frozen=True, slots=True)
class SkippedRule:
    source: str
    sid: int | None
    reasons: tuple[str, ...]
    text: str


@dataclass
class RuleSet:
    """Loaded rules, plus the ones skipped (with why) and the disabled (commented-out) count."""

    rules: list[Rule] = field(default_factory=list)
    skipped: list[SkippedRule] = field(default_factory=list)
    disabled: int = 0

    def __len__(self) -> int:
        return len(self.rules)

    def extend(self, other: RuleSet) -> None:
        self.rules.extend(other.rules)
        self.skipped.extend(other.skipped)
        self.disabled += other.disabled

    def skip_reasons(self) -> dict[str, int]:
        """``{option: number of rules skipped because of it}``."""
        out: dict[str, int] = {}
        for s in self.skipped:
            for r in s.reasons:
                out[r] = out.get(r, 0) + 1
        return dict(sorted(out.items()))


# --- parsing ---------------------------------------------------------------------------------------
ACTIONS = frozenset(("alert", "drop", "reject", "sdrop", "log"))
PROTOS = frozenset(("tcp", "udp", "icmp", "ip"))
# Options with no effect on what matches (see the module docstring).
IGNORED = frozenset(("msg", "sid", "rev", "gid", "classtype", "reference", "metadata", "priority",
                     "target", "tag", "threshold", "rawbytes", "fast_pattern"))
_FLOW_SIDE = {"to_server": TO_SERVER, "from_client": TO_SERVER, "to_client": TO_CLIENT, "from_server": TO_CLIENT}
_FLOW_OK = frozenset(("established", "stateless", "only_stream"))
_RULE_STARTS = tuple(a + " " for a in ACTIONS) + ("pass ",)


def _split_header(header: str, source: str) -> list[str]:
    """Whitespace-separated tokens, keeping bracketed lists (which may contain spaces) whole."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in header:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise RuleError("unbalanced ']' in the rule header", source)
        if ch.isspace() and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
        elif not (ch.isspace()):
            cur.append(ch)
    if depth:
        raise RuleError("unbalanced '[' in the rule header", source)
    if cur:
        out.append("".join(cur))
    return out


def _split_options(body: str, source: str) -> list[tuple[str, str | None]]:
    """``name:value;`` pairs. ``;`` inside quotes or after a backslash does not end an option."""
    opts: list[tuple[str, str | None]] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t;":
            i += 1
        if i >= n:
            break
        start = i
        in_q = False
        while i < n:
            ch = body[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_q = not in_q
            elif ch == ";" and not in_q:
                break
            i += 1
        if in_q:
            raise RuleError("unterminated quoted string in the rule options", source)
        item = body[start:min(i, n)].strip()
        i += 1
        name, colon, value = item.partition(":")
        name = name.strip().lower()
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise RuleError(f"malformed rule option {item[:40]!r}", source)
        opts.append((name, value.strip() if colon else None))
    return opts


def _unquote(value: str, source: str, what: str) -> str:
    """The text between the quotes of ``"..."`` (escapes kept; the closing quote must end it)."""
    v = value.strip()
    if len(v) < 2 or v[0] != '"':
        raise RuleError(f"{what} must be a quoted string, got {value[:40]!r}", source)
    i = 1
    while i < len(v):
        if v[i] == "\\":
            i += 2
            continue
        if v[i] == '"':
            break
        i += 1
    if i != len(v) - 1:
        raise RuleError(f"{what} must be one quoted string, got {value[:40]!r}", source)
    return v[1:-1]


def _unescape(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _content_bytes(s: str, source: str) -> bytes:
    """Decode a content string: ``|41 42|`` hex runs, backslash escapes, other text as UTF-8."""
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "|":
            j = s.find("|", i + 1)
            if j < 0:
                raise RuleError(f"unterminated hex run in content {s[:40]!r}", source)
            digits = "".join(s[i + 1:j].split())
            if len(digits) % 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise RuleError(f"bad hex {s[i:j + 1]!r} in content", source)
            out += bytes.fromhex(digits)
            i = j + 1
        elif ch == "\\":
            if i + 1 >= n:
                raise RuleError("content ends with a lone backslash", source)
            out += s[i + 1].encode()
            i += 2
        else:
            out += ch.encode()
            i += 1
    return bytes(out)


def _int(value: str | None, source: str, what: str) -> int:
    try:
        return int(str(value).strip(), 0)
    except ValueError:
        raise RuleError(f"{what} must be an integer, got {value!r}", source) from None


def parse_ports(spec: str, vars: Mapping[str, str] | None = None, source: str = "", _depth: int = 0) -> PortSet:
    """Parse a Snort port spec (see the module docstring)."""
    spec = spec.strip()
    if _depth > 8:
        raise RuleError(f"port variables nest too deeply at {spec!r}", source)
    if spec in ("any", ""):
        return ANY_PORT
    neg = spec.startswith("!")
    if neg:
        spec = spec[1:].strip()
    inc: list[tuple[int, int]] = []
    exc: list[tuple[int, int]] = []
    if spec.startswith("$"):
        val = (vars or {}).get(spec[1:])
        sub = ANY_PORT if val is None else parse_ports(str(val), vars, source, _depth + 1)
        inc, exc = list(sub.include), list(sub.exclude)
    elif spec.startswith("["):
        if not spec.endswith("]"):
            raise RuleError(f"bad port list {spec!r}", source)
        parts: list[str] = []
        depth, cur = 0, ""
        for ch in spec[1:-1]:
            depth += (ch == "[") - (ch == "]")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        for p in parts:
            if p.strip() == "any":
                inc.append((0, 65535))
                continue
            sub = parse_ports(p, vars, source, _depth + 1)
            inc.extend(sub.include)
            exc.extend(sub.exclude)
    else:
        lo_s, colon, hi_s = spec.partition(":")
        try:
            lo = int(lo_s) if lo_s.strip() else 0
            hi = (int(hi_s) if hi_s.strip() else 65535) if colon else lo
        except ValueError:
            raise RuleError(f"bad port {spec!r}", source) from None
        if not (0 <= lo <= hi <= 65535):
            raise RuleError(f"bad port range {spec!r}", source)
        inc = [(lo, hi)]
    if neg:
        if exc:  # !(A minus B): coarse, B's exclusions are dropped (documented: a superset)
            return PortSet((), tuple(inc))
        if not inc:
            raise RuleError("'!any' is not a port", source)
        return PortSet((), tuple(inc))
    return PortSet(tuple(inc), tuple(exc))


def parse_rule(line: str, source: str = "<rule>", vars: Mapping[str, str] | None = None) -> Rule | SkippedRule:
    """Parse one rule line: a :class:`Rule`, or a :class:`SkippedRule` saying which options we lack.

    Raises :class:`RuleError` (naming ``source``) when the line is malformed.
    """
    text = line.strip()
    lp = text.find("(")
    if lp < 0 or not text.endswith(")"):
        raise RuleError("a rule is '<action> <proto> <src> <sport> -> <dst> <dport> (<options>)'", source)
    header = _split_header(text[:lp], source)
    if len(header) != 7:
        raise RuleError(f"the rule header needs 7 fields, got {len(header)}: {text[:lp].strip()!r}", source)
    action, proto, src, sport_s, arrow, dst, dport_s = header
    if arrow not in ("->", "<>"):
        raise RuleError(f"direction must be '->' or '<>', got {arrow!r}", source)
    opts = _split_options(text[lp + 1:-1], source)
    reasons: list[str] = []
    action = action.lower()
    proto = proto.lower()
    if action not in ACTIONS:
        reasons.append(f"action {action}")
    if proto not in PROTOS:
        reasons.append(f"protocol {proto}")
    sport = parse_ports(sport_s, vars, source)
    dport = parse_ports(dport_s, vars, source)

    sid: int | None = None
    rule = Rule(sid=0, action=action, proto=proto, src=src, sport=sport, dst=dst, dport=dport,
                bidirectional=arrow == "<>", source=source, text=text)
    contents: list[dict[str, Any]] = []
    for name, value in opts:
        if name == "content":
            if value is None:
                raise RuleError("content needs a value", source)
            v = value.strip()
            neg = v.startswith("!")
            if neg:
                v = v[1:].strip()
            q_end = v.rfind('"')
            if q_end > 0 and v[q_end + 1:].strip().startswith(","):
                reasons.append("content modifiers after ',' (Snort 3 syntax)")
                v = v[:q_end + 1]
            pattern = _content_bytes(_unquote(v, source, "content"), source)
            if not pattern:
                raise RuleError("empty content", source)
            contents.append({"pattern": pattern, "negated": neg, "nocase": False, "offset": 0, "depth": None})
        elif name in ("nocase", "depth", "offset", "distance", "within", "rawbytes", "fast_pattern"):
            if not contents:
                raise RuleError(f"{name} before any content", source)
            if name == "nocase":
                contents[-1]["nocase"] = True
            elif name in ("depth", "offset"):
                if value is not None and not value.strip().lstrip("-").isdigit():
                    reasons.append(f"{name} from a variable")
                    continue
                contents[-1][name] = _int(value, source, name)
            elif name in ("distance", "within"):
                reasons.append(name)
        elif name == "sid":
            sid = _int(value, source, "sid")
        elif name == "rev":
            rule.rev = _int(value, source, "rev")
        elif name == "gid":
            rule.gid = _int(value, source, "gid")
        elif name == "msg":
            rule.msg = _unescape(_unquote(value or "", source, "msg"))
        elif name == "classtype":
            rule.classtype = (value or "").strip()
        elif name == "flow":
            for part in (value or "").split(","):
                p = part.strip().lower()
                if p in _FLOW_SIDE:
                    rule.side = _FLOW_SIDE[p]
                elif p not in _FLOW_OK:
                    reasons.append(f"flow:{p}")
        elif name == "flowbits":
            verb = (value or "").split(",")[0].strip().lower()
            if verb not in ("set", "unset", "toggle"):
                reasons.append(f"flowbits:{verb}")
        elif name in IGNORED:
            pass
        else:
            reasons.append(name)
    if sid is None:
        raise RuleError("the rule has no sid", source)
    rule.sid = sid
    built: list[Content] = []
    for c in contents:
        if c["offset"] < 0:
            reasons.append("negative offset")
            continue
        if c["depth"] is not None and c["depth"] < len(c["pattern"]):
            reasons.append(f"depth {c['depth']} shorter than its content")
            continue
        built.append(Content(c["pattern"], c["nocase"], c["offset"], c["depth"], c["negated"]))
    rule.contents = tuple(built)
    if not reasons and not any(not c.negated for c in built):
        reasons.append("no positive content")
    if reasons:
        return SkippedRule(source, sid, tuple(dict.fromkeys(reasons)), text)
    return rule


def parse_rules(text: str | Iterable[str], filename: str = "<rules>", vars: Mapping[str, str] | None = None,
                strict: bool = True) -> RuleSet:
    """Parse rule text (a string, or an iterable of lines). Comments (``#``) and blank lines are
    skipped; ``#alert ...`` lines count as :attr:`RuleSet.disabled`; a line ending in ``\\`` goes on on
    the next. Unsupported rules are skipped with a warning; malformed ones raise :class:`RuleError`
    (or, with ``strict=False``, are skipped with reason ``malformed: ...``)."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    rs = RuleSet()
    pending = ""
    start = 0
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if pending:
            line = pending + line.lstrip()
        else:
            start = no
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if s.lstrip("# ").lower().startswith(_RULE_STARTS):
                rs.disabled += 1
            continue
        source = f"{filename}:{start}"
        try:
            r = parse_rule(s, source, vars)
        except RuleError as e:
            if strict:
                raise
            r = SkippedRule(source, None, (f"malformed: {e}",), s)
        if isinstance(r, SkippedRule):
            log.warning("%s: rule sid %s skipped: unsupported %s", source, r.sid, ", ".join(r.reasons))
            rs.skipped.append(r)
        else:
            rs.rules.append(r)
    if pending:
        raise RuleError("the last rule ends with a line continuation '\\'", f"{filename}:{start}")
    return rs


def load_rules(path: str | os.PathLike[str], vars: Mapping[str, str] | None = None, strict: bool = True) -> RuleSet:
    """Load a rules file (see :func:`parse_rules`)."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise RuleError(f"cannot read the rules file: {e.strerror}", p) from None
    rs = parse_rules(text, p, vars, strict)
    if rs.skipped:
        log.warning("%s: %d rules loaded, %d skipped (%s)", p, len(rs.rules), len(rs.skipped),
                    ", ".join(f"{k} x{v}" for k, v in rs.skip_reasons().items()))
    return rs


# --- matching ----------------------------------------------------------------------------------------
class Matcher:
    """All contents of a rule set, compiled to two automata, matched over streams.

    A *direction state* is ``[pos, tail, seen]``: the bytes of the stream consumed so far, the last
    ``longest - 1`` bytes (so a pattern split across chunks is found in ``tail + chunk``), and the set
    of content *items* (a pattern with its window) seen so far. :meth:`feed` updates it and returns the
    items first seen in the chunk; :meth:`fired` turns them into the rules that now match.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: list[Rule] = list(rules)
        pat_ids: dict[tuple[bytes, bool], int] = {}
        item_ids: dict[tuple[int, int, int | None], int] = {}
        self.item_window: list[tuple[int, int]] = []  # item -> (start_min, end_max or huge)
        self.pat_items: list[list[int]] = []  # pattern -> items
        self.item_rules: list[list[int]] = []  # item -> rules where it is a positive content
        self.rule_pos: list[frozenset[int]] = []
        self.rule_neg: list[frozenset[int]] = []
        cs: list[bytes] = []
        ci: list[bytes] = []
        self._cs_pid: list[int] = []
        self._ci_pid: list[int] = []
        bounded = True
        limit = 0
        for ri, r in enumerate(self.rules):
            pos: set[int] = set()
            neg: set[int] = set()
            for c in r.contents:
                pat = c.pattern.lower() if c.nocase else c.pattern
                pk = (pat, c.nocase)
                pid = pat_ids.get(pk)
                if pid is None:
                    pid = pat_ids[pk] = len(self.pat_items)
                    self.pat_items.append([])
                    (ci if c.nocase else cs).append(pat)
                    (self._ci_pid if c.nocase else self._cs_pid).append(pid)
                ik = (pid, c.offset, c.end_max)
                iid = item_ids.get(ik)
                if iid is None:
                    iid = item_ids[ik] = len(self.item_window)
                    self.item_window.append((c.offset, c.end_max if c.end_max is not None else 1 << 62))
                    self.item_rules.append([])
                    self.pat_items[pid].append(iid)
                (neg if c.negated else pos).add(iid)
                if c.end_max is None:
                    bounded = False
                else:
                    limit = max(limit, c.end_max)
            for iid in pos:
                self.item_rules[iid].append(ri)
            self.rule_pos.append(frozenset(pos))
            self.rule_neg.append(frozenset(neg))
        self.longest = max((len(p) for p, _ in pat_ids), default=1)
        self.keep = self.longest - 1
        #: No item can match past this stream offset (None: unbounded), so scanning can stop there.
        self.scan_limit: int | None = limit if bounded else None
        impl = ahocorasick_rs.Implementation.DFA
        self._cs = ahocorasick_rs.BytesAhoCorasick(cs, implementation=impl) if cs else None
        self._ci = ahocorasick_rs.BytesAhoCorasick(ci, implementation=impl) if ci else None
        self.patterns = len(pat_ids)

    @staticmethod
    def new_state() -> list[Any]:
        return [0, b"", set()]

    def feed(self, state: list[Any], data: bytes) -> list[int]:
        """Consume the next ``data`` of a stream direction; return the items first seen in it."""
        pos, tail, seen = state
        state[0] = pos + len(data)
        lim = self.scan_limit
        if lim is not None and pos >= lim:
            return []
        window = tail + data if tail else data
        base = pos - len(tail)  # stream offset of window[0]
        new_from = len(tail)  # matches must end past here (the rest were found in earlier chunks)
        keep = self.keep
        state[1] = window[-keep:] if keep and len(window) > keep else (window if keep else b"")
        found: list[int] = []
        pat_items = self.pat_items
        win = self.item_window
        for ac, pids, hay in ((self._cs, self._cs_pid, window), (self._ci, self._ci_pid, None)):
            if ac is None:
                continue
            if hay is None:
                hay = window.lower()
            for k, s, e in ac.find_matches_as_indexes(hay, overlapping=True):
                if e <= new_from:
                    continue
                for iid in pat_items[pids[k]]:
                    if iid in seen:
                        continue
                    lo, hi = win[iid]
                    if base + s >= lo and base + e <= hi:
                        seen.add(iid)
                        found.append(iid)
        return found

    def fired(self, found: Iterable[int], seen: set[int]) -> list[int]:
        """Rules (indexes) whose positive contents are all in ``seen``, completed by ``found``, and
        none of whose negated contents is in ``seen``."""
        out: list[int] = []
        for iid in found:
            for ri in self.item_rules[iid]:
                if ri not in out and self.rule_pos[ri] <= seen and not (self.rule_neg[ri] & seen):
                    out.append(ri)
        return out

    def match_once(self, data: bytes) -> list[int]:
        """Rules whose contents all match in ``data`` alone (a UDP datagram, say)."""
        st = self.new_state()
        found = self.feed(st, data)
        return self.fired(found, st[2])
