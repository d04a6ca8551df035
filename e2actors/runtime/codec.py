"""The one codec: message types <-> msgpack.

Message types are frozen, slotted dataclasses registered here with an integer tag (``@message(tag)``).
A registered message encodes as an array ``[tag, field, field, ...]`` (never a map: no field names
on the wire); nested registered messages and :class:`ActorRef` values use msgpack ext types. Plain
msgpack values (None, bool, int, float, str, bytes, list, tuple, dict) pass as they are; ``bytes``
stay binary. Decoding an unknown tag, a wrong field count, a field of the wrong type or malformed
bytes raises :class:`CodecError`; the transport closes that one connection.

Field types are checked when a message arrives from another node (as msgspec does), against the
class's annotations: ``int``, ``float`` (an int is taken), ``str``, ``bytes``, ``bool``, ``None``,
unions, ``tuple[X, ...]``/``tuple[X, Y]`` and ``list[X]`` (both arrive as tuples), ``dict[K, V]``,
registered messages and other classes (``isinstance``); ``Any`` and what the checker does not know
pass. So a handler can trust a decoded message's fields as it trusts a local sender's (local
delivery passes the object itself and checks nothing).

Tag ranges: 1-99 runtime, 100-199 packet layer, 200-299 NFs, 300-399 switch, 400-499 manager,
1000 and above for applications.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgpack

from e2actors.errors import CodecError
from e2actors.runtime.ref import ActorRef

T = TypeVar("T")

EXT_MESSAGE = 1
EXT_REF = 2


class _Entry:
    __slots__ = ("cls", "tag", "fields", "getter", "encode", "decode")

    def __init__(self, cls: type, tag: int, encode: Callable[[Any], list] | None,
                 decode: Callable[[list], Any] | None) -> None:
        self.cls = cls
        self.tag = tag
        names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        self.fields = tuple(names)
        if encode is not None:
            self.encode = encode
        elif len(names) == 0:
            self.encode = lambda obj: []
        elif len(names) == 1:
            g1 = operator.attrgetter(names[0])
            self.encode = lambda obj: [g1(obj)]
        else:
            self.encode = operator.attrgetter(*names)
        # The default decoder is built on first use: the annotations it checks may name classes
        # defined after this one.
        self.decode = decode if decode is not None else self._first_decode

    def _first_decode(self, fields: Any) -> Any:
        self.decode = _fast_builder(self.cls, list(self.fields), field_checks(self.cls), _hints(self.cls))
        return self.decode(fields)


def _fast_builder(cls: type, names: list[str], checks: tuple[Check | None, ...] | None = None,
                  hints: dict[str, Any] | None = None) -> Callable[[Any], Any]:
    """Build instances from wire fields without running a frozen dataclass's __init__, which
    spends most of its time in object.__setattr__: set the slots directly. Classes with a
    ``__post_init__`` (validation) or without slots take the normal constructor.

    ``checks``: per field, a type check (None: anything goes); ``hints``: the annotations they
    came from. The builder is generated code (as a C decoder would be written by hand): the field
    count, each field's type test inline where it is simple (``type(v) is int``), the slots set
    one by one; a failed test raises a :class:`CodecError` naming the field."""
    n = len(names)
    qual = cls.__qualname__
    checks = checks if checks is not None and any(c is not None for c in checks) else None
    ns: dict[str, Any] = {"_cls": cls, "_new": object.__new__, "CodecError": CodecError, "_n": n, "_qual": qual}

    def wrong(fields: Any) -> CodecError:
        for name, check, value in zip(names, checks or (), fields):
            if check is not None and not check(value):
                return CodecError(f"{qual}.{name}: {type(value).__name__} {value!r:.80} does not match its type")
        return CodecError(f"{qual}: a field does not match its type")  # pragma: no cover

    ns["_wrong"] = wrong
    vs = [f"v{k}" for k in range(n)]
    lines = ["def build(f):",
             "    if len(f) != _n:",
             "        raise CodecError(f'{_qual} takes {_n} fields, got {len(f)}')"]
    if n:
        lines.append(f"    {', '.join(vs)}{',' if n == 1 else ''} = f")
    if checks is not None:
        tests = []
        for k, (name, check) in enumerate(zip(names, checks)):
            if check is None:
                continue
            expr = _inline_check((hints or {}).get(name), f"v{k}", ns, k)
            if expr is None:
                ns[f"_c{k}"] = check
                expr = f"_c{k}(v{k})"
            tests.append(expr)
        lines.append(f"    if not ({' and '.join(tests)}):")
        lines.append("        raise _wrong(f)")
    slotted = not hasattr(cls, "__post_init__") and all(
        type(getattr(cls, name, None)).__name__ == "member_descriptor" for name in names)
    if slotted:
        lines.append("    o = _new(_cls)")
        for k, name in enumerate(names):
            ns[f"_s{k}"] = getattr(cls, name).__set__
            lines.append(f"    _s{k}(o, v{k})")
        lines.append("    return o")
    else:
        lines.append(f"    return _cls({', '.join(vs)})")
    exec(compile("\n".join(lines), f"<decoder of {qual}>", "exec"), ns)
    return ns["build"]


def _inline_check(tp: Any, var: str, ns: dict[str, Any], k: int) -> str | None:
    """A Python expression testing ``var`` against annotation ``tp``, for the simple cases (None:
    call the check function instead)."""
    if tp in (int, str, bytes, bool):
        return f"type({var}) is {tp.__name__}"
    if tp is float:
        return f"(type({var}) is float or type({var}) is int)"
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if len(args) == 2 and type(None) in args:
            other = args[1] if args[0] is type(None) else args[0]
            inner = _inline_check(other, var, ns, k)
            return None if inner is None else f"({var} is None or {inner})"
        return None
    if isinstance(tp, type) and origin is None and tp not in (object,):
        ns[f"_t{k}"] = tp
        return f"isinstance({var}, _t{k})"
    return None


# --- field type checks -------------------------------------------------------------------------------
Check = Callable[[Any], bool]


def field_checks(cls: type) -> tuple[Check | None, ...]:
    """Per dataclass field of ``cls``, the check a decoded value must pass (None: any value).
    Annotations that do not resolve are not checked."""
    if not dataclasses.is_dataclass(cls):
        return ()
    hints = _hints(cls)
    return tuple(type_check(hints[f.name]) if f.name in hints else None for f in dataclasses.fields(cls))


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: that class's fields are not checked
        return {}


def _is(t: type) -> Check:
    return lambda v: type(v) is t


def _number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


def type_check(tp: Any) -> Check | None:
    """A predicate for values of annotation ``tp`` as they decode (None: anything goes)."""
    if tp is Any or tp is object or isinstance(tp, (TypeVar, str, typing.ForwardRef)):
        return None
    if tp is None or tp is type(None):
        return lambda v: v is None
    if tp is float:
        return _number
    if tp in (int, str, bytes, bool):
        return _is(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        subs = [type_check(a) for a in args]
        if any(c is None for c in subs):
            return None
        if len(subs) == 2 and type(None) in args:  # X | None
            c = subs[1] if args[0] is type(None) else subs[0]
            return lambda v: v is None or c(v)  # type: ignore[misc]
        return lambda v: any(c(v) for c in subs)  # type: ignore[misc]
    if origin is typing.Literal:
        allowed = frozenset(args)
        return lambda v: v in allowed
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: fixed length
            subs = [type_check(a) for a in args]
            n = len(args)
            if all(c is None for c in subs):
                return lambda v: type(v) is tuple and len(v) == n
            return lambda v: type(v) is tuple and len(v) == n and all(
                c is None or c(x) for c, x in zip(subs, v))
        elem = type_check(args[0]) if args else None
        if elem is None:
            return lambda v: type(v) is tuple or type(v) is list
        return lambda v: (type(v) is tuple or type(v) is list) and all(elem(x) for x in v)  # type: ignore[misc]
    if origin is dict:
        kc = type_check(args[0]) if args else None
        vc = type_check(args[1]) if len(args) > 1 else None
        if kc is None and vc is None:
            return lambda v: type(v) is dict
        return lambda v: type(v) is dict and all((kc is None or kc(k)) and (vc is None or vc(x))  # type: ignore[misc]
                                                 for k, x in v.items())
    if origin is not None:
        return None  # another generic (Mapping, Callable, ...): not checked
    if isinstance(tp, type):
        return lambda v: isinstance(v, tp)
    return None


_BY_TAG: dict[int, _Entry] = {}
_BY_CLS: dict[type, _Entry] = {}


def register(cls: type[T], tag: int, *, encode: Callable[[T], Any] | None = None,
             decode: Callable[[Any], T] | None = None) -> type[T]:
    """Register ``cls`` under ``tag``. ``encode(obj) -> sequence`` and ``decode(seq) -> obj``
    override the default field-by-field mapping (for types that are not plain dataclasses)."""
    if not isinstance(tag, int) or tag <= 0:
        raise ValueError(f"message tag must be a positive int, not {tag!r}")
    old = _BY_TAG.get(tag)
    if old is not None and old.cls is not cls:
        if old.cls.__qualname__ == cls.__qualname__ and old.cls.__module__ == cls.__module__:
            pass  # the same class imported twice (e.g. a script run as __main__ and imported)
        else:
            raise ValueError(f"message tag {tag} already registered for {old.cls.__qualname__}")
    if encode is None and not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} is not a dataclass; give encode= and decode=")
    entry = _Entry(cls, tag, encode, decode)
    _BY_TAG[tag] = entry
    _BY_CLS[cls] = entry
    return cls


def message(tag: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``@message(1000)`` over a frozen slotted dataclass registers it."""

    def deco(cls: type[T]) -> type[T]:
        return register(cls, tag)

    return deco


def registered() -> dict[int, type]:
    """Every registered tag and its class (the codec round-trip test walks this)."""
    return {tag: e.cls for tag, e in _BY_TAG.items()}


def _default(obj: Any) -> Any:
    e = _BY_CLS.get(type(obj))
    if e is not None:
        return msgpack.ExtType(EXT_MESSAGE, _pack([e.tag, *e.encode(obj)]))
    if type(obj) is ActorRef:
        return msgpack.ExtType(EXT_REF, _pack((obj.node, obj.name)))
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, memoryview):
        return obj.tobytes()
    raise CodecError(f"cannot encode a {type(obj).__qualname__}: register it with e2actors.runtime.codec")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_REF:
        node, name = _unpack(data)
        if not isinstance(node, str) or not isinstance(name, str):
            raise CodecError("malformed actor ref")
        return ActorRef(node, name)
    if code == EXT_MESSAGE:
        arr = _unpack(data)
        if not isinstance(arr, tuple) or not arr or not isinstance(arr[0], int):
            raise CodecError("malformed message")
        return _build(arr[0], arr[1:])
    raise CodecError(f"unknown ext type {code}")


def _unpack(data: Any) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)


def _build(tag: int, fields: Any) -> Any:
    e = _BY_TAG.get(tag)
    if e is None:
        raise CodecError(f"unknown message tag {tag}")
    try:
        return e.decode(fields)
    except CodecError:
        raise
    except Exception as exc:  # a wrong field count or type from the wire
        raise CodecError(f"cannot build {e.cls.__qualname__} from {len(fields)} fields: {exc}") from None


# --- values ----------------------------------------------------------------------------------------
def encode(obj: Any) -> bytes:
    """Encode one value (a registered message, a ref or plain msgpack data)."""
    try:
        return _pack(obj)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {type(obj).__qualname__}: {exc}") from None


def decode(data: bytes | memoryview) -> Any:
    """Decode one value; anything malformed raises :class:`CodecError`."""
    try:
        return _unpack(data)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"malformed msgpack data: {exc}") from None


# --- frames ----------------------------------------------------------------------------------------
# A frame is a 4-byte big-endian length and a msgpack array:
#   [kind, target, arg, tag, payload]
# where the message travels as ``tag`` + field array (tag None: ``payload`` is a plain value). The
# top-level message is flattened into the frame so the hot path packs once, not twice.
_HDR = struct.Struct(">I")
HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class Frame(NamedTuple):
    """One decoded frame. What ``target`` and ``arg`` hold depends on the kind (the kinds are in
    :mod:`e2actors.runtime.transport`):

    =========  ======================  ===============  ====================================
    kind       target                  arg              message
    =========  ======================  ===============  ====================================
    TELL       the actor's name        None             the message
    ASK        the actor's name        the request id   the request
    REPLY      the request id          ok (a bool)      the value, or (error type, text)
    HEARTBEAT  None                    None             None
    WATCH      the actor's name        None             the watcher's :class:`ActorRef`
    UNWATCH    the actor's name        None             the watcher's :class:`ActorRef`
    HELLO      the sender's address    (its version,    the sender's node name
                                       its heartbeat
                                       timeout)
    =========  ======================  ===============  ====================================

    Values come from a peer: their types are checked by the code that uses them.
    """

    kind: int
    target: Any
    arg: Any
    message: Any


# One long-lived packer for frames (building a Packer per call costs more than the packing).
# Nested values go through ``_default`` -> ``_pack`` with their own packer, so this one is
# never re-entered.
_frame_packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)
_pack_frame = _frame_packer.pack
_hdr_pack = _HDR.pack


def encode_frame(kind: int, target: Any, arg: Any, msg: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode a frame (fields as in :class:`Frame`) with its length prefix. Raises
    :class:`CodecError` if it is over ``max_frame``."""
    e = _BY_CLS.get(type(msg))
    try:
        if e is None:
            body = _pack_frame((kind, target, arg, None, msg))
        else:
            body = _pack_frame((kind, target, arg, e.tag, e.encode(msg)))
    except CodecError:
        _frame_packer.reset()
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        _frame_packer.reset()
        raise CodecError(f"cannot encode {type(msg).__qualname__}: {exc}") from None
    n = len(body)
    if n > max_frame:
        raise CodecError(f"frame of {n} bytes is over the limit of {max_frame}")
    return _hdr_pack(n) + body


_unpackb = msgpack.unpackb
_new_tuple = tuple.__new__


def decode_frame(body: bytes | memoryview) -> tuple[int, Any, Any, Any]:
    """Decode a frame body (without its length prefix) to its fields ``(kind, target, arg,
    message)``, those of :class:`Frame`, as a plain tuple; anything malformed raises
    :class:`CodecError`.

    The transport's hot path, run for every message that arrives: msgpack is called directly and
    the message built here (what _unpack and _build do, one call each fewer), and no Frame is
    made: building and freeing a tuple subclass cost about a tenth of the receive path's time per
    small message (plain tuples come from a free list)."""
    try:
        arr = _unpackb(body, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"malformed frame: {exc}") from None
    if type(arr) is not tuple or len(arr) != 5 or type(arr[0]) is not int:
        raise CodecError("malformed frame: not a [kind, target, arg, tag, payload] array")
    kind, target, arg, tag, payload = arr
    if tag is None:
        return kind, target, arg, payload
    if type(tag) is not int or type(payload) is not tuple:
        raise CodecError("malformed frame: bad message tag or fields")
    e = _BY_TAG.get(tag)
    if e is None:
        raise CodecError(f"unknown message tag {tag}")
    try:
        msg = e.decode(payload)
    except CodecError:
        raise
    except Exception as exc:  # a wrong field count or type from the wire
        raise CodecError(f"cannot build {e.cls.__qualname__} from {len(payload)} fields: {exc}") from None
    return kind, target, arg, msg


def decode_frame_body(body: bytes | memoryview) -> Frame:
    """Decode a frame body (without its length prefix) to a :class:`Frame`; anything malformed
    raises :class:`CodecError`."""
    return _new_tuple(Frame, decode_frame(body))


class FrameDecoder:
    """Splits a byte stream into frame bodies; pure (no I/O), so it is tested without sockets.

    ``feed(data)`` returns the complete frame bodies; a length over ``max_frame`` raises
    :class:`CodecError` before any of that frame is buffered.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[memoryview]:
        """Add received bytes; return the complete frame bodies (views, valid until the next feed)."""
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        n = len(data)
        out = []
        pos = 0
        max_frame = self.max_frame
        unpack_len = _HDR.unpack_from
        view = memoryview(data)
        while n - pos >= 4:
            (size,) = unpack_len(data, pos)
            if size > max_frame:
                raise CodecError(f"frame of {size} bytes is over the limit of {max_frame}")
            end = pos + 4 + size
            if end > n:
                break
            out.append(view[pos + 4:end])
            pos = end
        if pos < n:
            buf += view[pos:]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
