"""The versioned JSON envelope a task call travels in, with exact round trips for common types.

Body: ``{"v": 1, "task": "<registered name>", "args": [...], "kwargs": {...}}``. A value JSON
cannot hold exactly is tagged ``{"__ct__": "<type>", "v": ...}``. Model instances travel as a
reference (``app_label.model_name`` and primary key) and are fetched fresh when the task runs.

Whatever a body holds, decoding it raises InvalidTaskRequest (or ObjectDeleted for a row that is
gone) and nothing else: payload types are checked before they are converted, and containers may
nest at most MAX_DEPTH deep, a bound the encoder enforces at ``.delay()`` too.
"""

from __future__ import annotations

import base64
import json
import math
import reprlib
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from itertools import accumulate, count, repeat
from operator import sub
from typing import Any
from uuid import UUID

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models.fields.composite import CompositePrimaryKey

from .exceptions import InvalidTaskCall, InvalidTaskRequest, ObjectDeleted

VERSION = 1
TAG = "__ct__"

#: How deeply containers (list, dict, tuple, set, frozenset; a model reference and a tagged
#: scalar are not containers) may nest in one argument. The encoder refuses a deeper value at
#: ``.delay()`` and the decoder a deeper body, counting the same way, so whatever is sent can be
#: read back. 100 is far above any real argument, and far below Python's recursion limit (1,000)
#: however much of the stack the server and Django already hold: the deepest value costs the
#: decoder 400 frames on Python 3.11 (a tagged tuple: _decode, _decode_tagged, _decode_tuple and
#: its comprehension a level), 300 from 3.12 on (comprehensions are inlined), the encoder 300.
MAX_DEPTH = 100

#: The deepest JSON a call within MAX_DEPTH encodes to: the envelope and its args list (2), at
#: most 3 brackets per level (a tagged dict: {"__ct__": "dict", "v": [[key, value], ...]}) and
#: a leaf of at most 5 (a model reference with a composite key holding a UUID:
#: {..., "v": [label, {"__ct__": "tuple", "v": [{uuid}]}]}).
MAX_JSON_DEPTH = 2 + 3 * MAX_DEPTH + 5

# json's public API only: its undocumented C scanner and encoder factory would save a microsecond
# or two per call, at the price of depending on internals that may change in any Python release.
_loads = json.JSONDecoder().decode
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_sorted_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=True).encode


# -- messages ---------------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlevel = 3


def _preview(value: object) -> str:
    """A short repr for error messages, whatever size or depth value has."""
    try:
        return _repr.repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit
        return f"<{type(value).__name__}>"


# -- encoding ---------------------------------------------------------------------------------


class _Unserializable(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(type(value).__qualname__)
        self.value = value


def _iso(value: datetime | time) -> str:
    # Python's fromisoformat() drops the fraction of a second of a UTC offset: such a value
    # (no real time zone has one) would come back as another time, so it is refused.
    offset = value.utcoffset()
    if offset is not None and offset.microseconds:
        raise _Unserializable(value)
    return value.isoformat()


class _TooDeep(TypeError):
    """A container nested more than MAX_DEPTH deep (a TypeError, like any unencodable value)."""

    def __init__(self) -> None:
        super().__init__(f"nested more than {MAX_DEPTH} deep")


def _nest(depth: int) -> int:
    """The depth inside one more container; _TooDeep past MAX_DEPTH."""
    if depth >= MAX_DEPTH:
        raise _TooDeep()
    return depth + 1


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {TAG: tag, "v": value}


def _encode_float(value: float, depth: int = 0) -> Any:
    if math.isfinite(value):
        return value
    return _tagged("float", repr(value))


def _encode_list(value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
    return list(map(_encode, value, repeat(_nest(depth))))


def _encode_dict(value: dict[Any, Any], depth: int) -> Any:
    depth = _nest(depth)
    if TAG not in value and all(type(k) is str for k in value):
        return {k: _encode(v, depth) for k, v in value.items()}
    return _tagged("dict", [[_encode(k, depth), _encode(v, depth)] for k, v in value.items()])


def _encode_set(value: set[Any] | frozenset[Any], depth: int) -> list[Any]:
    depth = _nest(depth)
    # Sorted by encoded form so equal sets encode identically in every process (string hashing
    # is randomised per process): the ARGS_HASH task name depends on it.
    return sorted(map(_encode, value, repeat(depth)), key=_sorted_dumps)


def _encode_model(value: models.Model, depth: int) -> Any:
    if value.pk is None:
        raise _Unserializable(value)
    # The key is a leaf wherever the reference is (a composite key's tuple included).
    reference = [value._meta.label_lower, _encode(value.pk, 0)]
    # The task reads the row from the database the instance came from (where it was saved),
    # not wherever a router would send a read: a read replica may not have the row yet.
    alias = value._state.db
    if alias is not None and alias != DEFAULT_DB_ALIAS:
        reference.append(alias)
    return _tagged("model", reference)


def _same(value: Any, depth: int) -> Any:
    return value


_EXACT: dict[type, Callable[[Any, int], Any]] = {
    str: _same,
    int: _same,
    bool: _same,
    type(None): _same,
    float: _encode_float,
    list: _encode_list,
    dict: _encode_dict,
    tuple: lambda v, d: _tagged("tuple", _encode_list(v, d)),
    set: lambda v, d: _tagged("set", _encode_set(v, d)),
    frozenset: lambda v, d: _tagged("frozenset", _encode_set(v, d)),
    bytes: lambda v, d: _tagged("bytes", base64.b64encode(v).decode("ascii")),
    bytearray: lambda v, d: _tagged("bytearray", base64.b64encode(v).decode("ascii")),
    datetime: lambda v, d: _tagged("datetime", _iso(v)),
    date: lambda v, d: _tagged("date", v.isoformat()),
    time: lambda v, d: _tagged("time", _iso(v)),
    timedelta: lambda v, d: _tagged("timedelta", [v.days, v.seconds, v.microseconds]),
    Decimal: lambda v, d: _tagged("decimal", str(v)),
    UUID: lambda v, d: _tagged("uuid", str(v)),
}


#: The types _encode returns as they are.
_PLAIN = frozenset({str, int, bool, type(None)})


def _encode(value: Any, depth: int) -> Any:
    encoder = _EXACT.get(type(value))
    if encoder is not None:
        return encoder(value, depth)
    if isinstance(value, models.Model):
        return _encode_model(value, depth)
    # Subclasses (str enums, SafeString, IntEnum, ...) travel as their base type.
    if isinstance(value, str):
        # str.__str__ gives the plain string even for enums whose __str__ is overridden.
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _encode_float(float(value))
    for base in (datetime, date, time, timedelta, Decimal, UUID, dict, list, tuple):
        if isinstance(value, base):
            return _EXACT[base](value, depth)
    raise _Unserializable(value)


def encode_value(value: Any) -> Any:
    """A JSON-compatible form of value; raises TypeError for a type that cannot round-trip or
    for containers nested more than MAX_DEPTH deep."""
    return _encode(value, 0)


# -- decoding ---------------------------------------------------------------------------------


def _too_deep() -> InvalidTaskRequest:
    return InvalidTaskRequest(f"Task arguments nest more than {MAX_DEPTH} deep.")


def _decode_timedelta(payload: list[Any]) -> timedelta:
    if len(payload) != 3 or any(type(n) is not int for n in payload):
        raise TypeError("expected [days, seconds, microseconds], three integers")
    days, seconds, micros = payload
    return timedelta(days=days, seconds=seconds, microseconds=micros)  # OverflowError


def _decode_float(payload: str) -> float:
    # Only what JSON has no literal for: finite floats travel as JSON numbers.
    if payload not in ("inf", "-inf", "nan"):
        raise ValueError("expected 'inf', '-inf' or 'nan'")
    return float(payload)


def _decode_base64(payload: str) -> bytes:
    return base64.b64decode(payload, validate=True)


#: Tagged scalars: the JSON type their payload must have, and the conversion (which raises
#: TypeError, ValueError or ArithmeticError for a payload of that type it cannot convert).
_SCALAR_TAGS: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "datetime": (str, datetime.fromisoformat),
    "date": (str, date.fromisoformat),
    "time": (str, time.fromisoformat),
    "timedelta": (list, _decode_timedelta),
    "decimal": (str, Decimal),
    "uuid": (str, UUID),
    "bytes": (str, _decode_base64),
    "bytearray": (str, lambda v: bytearray(_decode_base64(v))),
    "float": (str, _decode_float),
}


# The decoders of containers take room, the levels of nesting still allowed (counting down is
# the cheapest check); a container with no room left is refused.


def _decode_tuple(payload: list[Any], room: int) -> tuple[Any, ...]:
    if not room:
        raise _too_deep()
    room -= 1
    return tuple([_decode(v, room) for v in payload])


def _decode_set(payload: list[Any], room: int) -> set[Any]:
    if not room:
        raise _too_deep()
    room -= 1
    return {_decode(v, room) for v in payload}  # TypeError: an unhashable member


def _decode_frozenset(payload: list[Any], room: int) -> frozenset[Any]:
    if not room:
        raise _too_deep()
    room -= 1
    return frozenset([_decode(v, room) for v in payload])


def _decode_pairs(payload: list[Any], room: int) -> dict[Any, Any]:
    if not room:
        raise _too_deep()
    room -= 1
    result = {}
    for pair in payload:
        if type(pair) is not list or len(pair) != 2:
            raise TypeError(f"expected [key, value] pairs, not {_preview(pair)}")
        result[_decode(pair[0], room)] = _decode(pair[1], room)  # TypeError: unhashable key
    return result


def _decode_model(payload: list[Any], room: int) -> models.Model:
    if not 2 <= len(payload) <= 3:
        raise TypeError("expected [model label, primary key] or [label, primary key, database]")
    label, raw_pk, *rest = payload
    if type(label) is not str:
        raise TypeError(f"the model label {_preview(label)} is not a string")
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):  # ValueError: not "app_label.model_name"
        raise InvalidTaskRequest(f"Unknown model {_preview(label)} in task arguments.") from None
    if model._meta.swapped:  # no table behind it: the query would fail on every attempt
        raise InvalidTaskRequest(f"Model {label} in task arguments is swapped out.")
    alias = rest[0] if rest else DEFAULT_DB_ALIAS
    if type(alias) is not str or alias not in connections:
        raise InvalidTaskRequest(
            f"Unknown database {_preview(alias)} for {label} in task arguments."
        )
    pk = _primary_key(model, _decode_key(raw_pk))
    parts = pk if type(pk) is tuple else (pk,)
    if connections[alias].vendor == "postgresql" and any(
        isinstance(part, str) and "\x00" in part for part in parts
    ):
        # A client-side DataError otherwise: PostgreSQL text cannot hold NUL, so no row has it.
        raise InvalidTaskRequest(
            f"Primary key {_preview(pk)} of {model._meta.label} in task arguments holds a NUL "
            "character."
        )
    try:
        instance: models.Model = model._default_manager.db_manager(alias).get(pk=pk)
    except model.DoesNotExist:
        raise ObjectDeleted(
            f"{model._meta.label} with primary key {_preview(pk)} no longer exists."
        ) from None
    # The key's preparation for the query (the driver's encoding of a string with a lone
    # surrogate, a Decimal with more digits than the column); errors from the database itself
    # are DatabaseErrors, not caught: the delivery is retried.
    except (ValidationError, TypeError, ValueError, ArithmeticError) as exc:
        raise InvalidTaskRequest(
            f"Primary key {_preview(pk)} of {model._meta.label} in task arguments cannot be "
            f"queried: {_preview(str(exc))}"
        ) from None
    return instance


def _decode_key(raw: Any) -> Any:
    """A primary key as it travels: a JSON scalar, a tagged scalar (a UUID, a date) or a tagged
    tuple of those (a composite key). A key is a leaf, not decoded like an argument: a reference
    whose key is a reference would recurse without nesting any deeper."""
    if (
        type(raw) is dict
        and raw.get(TAG) == "tuple"
        and len(raw) == 2
        and type(raw.get("v")) is list
    ):
        return tuple([_decode_key_part(part) for part in raw["v"]])
    return _decode_key_part(raw)


def _decode_key_part(raw: Any) -> Any:
    if type(raw) is dict:
        tag = raw.get(TAG)
        if type(tag) is str and tag in _SCALAR_TAGS:
            return _decode_tagged(raw, 0)
    elif type(raw) is not list:
        return raw
    raise InvalidTaskRequest(f"Primary key {_preview(raw)} in task arguments is not a value.")


def _primary_key(model: type[models.Model], value: Any) -> Any:
    """value as the model's primary key field holds it; InvalidTaskRequest if it cannot be one.

    Checked before the query: a key of the wrong type fails inside it otherwise (on PostgreSQL
    as a DataError that also aborts the transaction around it). An integer out of the column's
    range is Django's to handle: no row has it, so it reads as a deleted row.
    """
    field = model._meta.pk
    assert field is not None
    if not isinstance(field, CompositePrimaryKey):
        return _key_part(model, field, value, value)
    # Its to_python() would json.loads() a string; a composite key travels as a tuple.
    if type(value) is not tuple or len(value) != len(field.fields):
        raise InvalidTaskRequest(
            f"Primary key {_preview(value)} of {model._meta.label} in task arguments is not a "
            f"tuple of {len(field.fields)} values."
        )
    parts: Sequence[models.Field[Any, Any]] = field.fields  # type: ignore[assignment]
    return tuple(_key_part(model, f, part, value) for f, part in zip(parts, value, strict=True))


def _key_part(model: type[models.Model], field: models.Field[Any, Any], part: Any, key: Any) -> Any:
    try:
        if part is None or isinstance(part, list | dict | tuple | set | frozenset):
            raise ValueError("expected a single non-null value")
        return field.to_python(part)
    except (ValidationError, TypeError, ValueError, ArithmeticError) as exc:
        reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else exc
        raise InvalidTaskRequest(
            f"Primary key {_preview(key)} does not fit {model._meta.label}.{field.name} in task "
            f"arguments: {reason}"
        ) from None


#: Tagged containers and model references: their payload is a list.
_NESTED_TAGS: dict[str, Callable[[list[Any], int], Any]] = {
    "tuple": _decode_tuple,
    "set": _decode_set,
    "frozenset": _decode_frozenset,
    "dict": _decode_pairs,
    "model": _decode_model,
}

#: Every tag: the JSON type of its payload, its decoder, and whether that takes the room left.
_TAGS: dict[str, tuple[type, Callable[..., Any], bool]] = {
    **{tag: (kind, convert, False) for tag, (kind, convert) in _SCALAR_TAGS.items()},
    **{tag: (list, decode, True) for tag, decode in _NESTED_TAGS.items()},
}
_JSON_TYPE_NAMES: dict[type, str] = {str: "a string", list: "a list"}


def _decode_tagged(value: dict[str, Any], room: int) -> Any:
    if len(value) != 2 or "v" not in value:
        raise InvalidTaskRequest(
            f"Malformed tagged value {_preview(value)} in task arguments: it needs exactly the "
            f"keys {TAG!r} and 'v'."
        )
    tag, payload = value[TAG], value["v"]
    known = _TAGS.get(tag) if type(tag) is str else None
    if known is None:
        raise InvalidTaskRequest(f"Unknown tagged value type {_preview(tag)} in task arguments.")
    kind, decode, nested = known
    try:
        if type(payload) is not kind:
            raise TypeError(f"expected {_JSON_TYPE_NAMES[kind]}")
        return decode(payload, room) if nested else decode(payload)
    # A conversion's refusal of the payload (or a member that cannot go in a set); nested
    # values raised InvalidTaskRequest themselves.
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise InvalidTaskRequest(
            f"Malformed {tag!r} value {_preview(payload)} in task arguments: {exc}"
        ) from None


def _decode(value: Any, room: int) -> Any:
    cls = type(value)
    if cls is list:
        if not room:
            raise _too_deep()
        room -= 1
        return [_decode(v, room) for v in value]
    if cls is dict:
        if TAG in value:
            return _decode_tagged(value, room)
        if not room:
            raise _too_deep()
        room -= 1
        return {k: _decode(v, room) for k, v in value.items()}
    return value


def decode_value(value: Any) -> Any:
    """The Python value encode_value produced value from. Model references hit the database.

    Raises InvalidTaskRequest for anything encode_value cannot have produced, ObjectDeleted for
    a model row that no longer exists.
    """
    return _decode(value, MAX_DEPTH)


# -- arguments and envelopes ------------------------------------------------------------------


def _argument_label(position: int | str, param_names: Sequence[str] | None) -> str:
    if isinstance(position, str):
        return position
    if param_names is not None and position < len(param_names):
        return param_names[position]
    return f"#{position + 1}"


def encode_arguments(
    task_name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    label: str | None = None,
    param_names: Sequence[str] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Encode arguments, naming the task and the argument when one will not serialize."""
    position: int | str = 0
    try:
        # A str, int, bool or None (most arguments) is its own encoding: no call for it.
        enc_args = []
        for position, value in enumerate(args):  # noqa: B007 - position is read in the handler
            enc_args.append(value if type(value) in _PLAIN else _encode(value, 0))
        enc_kwargs = {}
        for position, value in kwargs.items():
            enc_kwargs[position] = value if type(value) in _PLAIN else _encode(value, 0)
    except _Unserializable as exc:
        bad = exc.value
        if isinstance(bad, models.Model):
            what = f"unsaved {type(bad).__qualname__} instance (no primary key)"
        elif isinstance(bad, datetime | time):
            what = f"{bad!r}: its UTC offset has a fraction of a second"
        else:
            what = f"object of type {type(bad).__qualname__}"
        raise InvalidTaskCall(
            f"{label or task_name}() argument {_argument_label(position, param_names)!r}: "
            f"cannot serialize {what}."
        ) from None
    except _TooDeep:
        raise InvalidTaskCall(
            f"{label or task_name}() argument {_argument_label(position, param_names)!r}: "
            f"nested more than {MAX_DEPTH} deep (or it contains itself)."
        ) from None
    return enc_args, enc_kwargs


def dumps_envelope(task_name: str, enc_args: list[Any], enc_kwargs: dict[str, Any]) -> bytes:
    return _dumps(
        {"v": VERSION, "task": task_name, "args": enc_args, "kwargs": enc_kwargs}
    ).encode()


def canonical_arguments(task_name: str, enc_args: list[Any], enc_kwargs: dict[str, Any]) -> bytes:
    """A process-independent encoding of a call (keyword order ignored), for ARGS_HASH names."""
    return _sorted_dumps([task_name, enc_args, enc_kwargs]).encode()


def encode_envelope(task_name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bytes:
    """The request body for a call of task_name; InvalidTaskCall if an argument will not encode."""
    enc_args, enc_kwargs = encode_arguments(task_name, args, kwargs)
    return dumps_envelope(task_name, enc_args, enc_kwargs)


_BRACKETS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))


def json_depth(body: bytes) -> int:
    """How deep brackets nest in body outside strings: how deep json's parser recurses into it
    (up to where it would stop at an error)."""
    # Without escaped backslashes and quotes, every quote opens or closes a string.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    # Opening brackets count 2, closing ones 0: the depth after the i-th bracket is the sum of
    # the first i values less i.
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    return max(map(sub, accumulate(brackets), count(1)), default=0)


def parse_envelope(body: bytes) -> tuple[str, list[Any], dict[str, Any]]:
    """Check the envelope's shape; return the task name and the still-encoded arguments."""
    try:
        data = _loads(body.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTaskRequest(f"The request body is not JSON: {exc}") from None
    except RecursionError:
        # json's C parser guards its recursion itself (at Python's recursion limit, or the C
        # one from 3.12 on); the decoder enforces MAX_DEPTH on whatever it parsed. Only a body
        # that no call within MAX_DEPTH can be is refused here: if the stack was simply too
        # full for a legitimate one, the error is the server's and the delivery is retried.
        depth = json_depth(body)
        if depth <= MAX_JSON_DEPTH:
            raise
        raise InvalidTaskRequest(
            f"The request body nests {depth} deep; task arguments nest at most {MAX_DEPTH} "
            f"deep ({MAX_JSON_DEPTH} in JSON)."
        ) from None
    if type(data) is not dict:
        raise InvalidTaskRequest("The request body is not a task envelope (a JSON object).")
    version = data.get("v")
    if type(version) is not int or version != VERSION:
        raise InvalidTaskRequest(
            f"Unsupported envelope version {_preview(version)}; this version reads {VERSION}."
        )
    name, args, kwargs = data.get("task"), data.get("args", []), data.get("kwargs", {})
    if type(name) is not str or type(args) is not list or type(kwargs) is not dict:
        raise InvalidTaskRequest(
            "The task envelope needs a string task, a list args, a dict kwargs."
        )
    return name, args, kwargs


def decode_arguments(
    args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode arguments; InvalidTaskRequest if malformed, ObjectDeleted for a vanished row.
    Keyword arguments that need no decoding come back as the very dict given."""
    # The usual call holds JSON scalars only (str, int, float, bool, None): they decode to
    # themselves, so one pass over their types in C replaces a call of _decode per value.
    if _CONTAINERS.isdisjoint(map(type, kwargs.values())) and _CONTAINERS.isdisjoint(
        map(type, args)
    ):
        return tuple(args), kwargs
    room = MAX_DEPTH
    return (
        tuple([_decode(a, room) for a in args]) if args else (),
        {k: _decode(v, room) for k, v in kwargs.items()} if kwargs else {},
    )


#: The JSON types _decode has to look into (everything else json parses to is a scalar).
_CONTAINERS = frozenset({list, dict})


def decode_envelope(body: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The task name and decoded arguments of a request body (raises InvalidTaskRequest)."""
    name, args, kwargs = parse_envelope(body)
    dargs, dkwargs = decode_arguments(args, kwargs)
    return name, dargs, dkwargs
