"""The versioned JSON envelope a task call travels in, with exact round trips for common types.

Body: ``{"v": 1, "task": "<registered name>", "args": [...], "kwargs": {...}}``. A value JSON
cannot hold exactly is tagged ``{"__ct__": "<type>", "v": ...}``. Model instances travel as a
reference (``app_label.model_name`` and primary key) and are fetched fresh when the task runs.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, models

from .exceptions import InvalidTaskCall, InvalidTaskRequest, ObjectDeleted

VERSION = 1
TAG = "__ct__"

_loads = json.JSONDecoder().decode
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_sorted_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=True).encode


class _Unserializable(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(type(value).__qualname__)
        self.value = value


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {TAG: tag, "v": value}


def _encode_float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return _tagged("float", repr(value))


def _encode_dict(value: dict[Any, Any]) -> Any:
    if TAG not in value and all(type(k) is str for k in value):
        return {k: encode_value(v) for k, v in value.items()}
    return _tagged("dict", [[encode_value(k), encode_value(v)] for k, v in value.items()])


def _encode_set(value: set[Any] | frozenset[Any]) -> list[Any]:
    # Sorted by encoded form so equal sets encode identically in every process (string hashing
    # is randomised per process): the ARGS_HASH task name depends on it.
    return sorted((encode_value(v) for v in value), key=_sorted_dumps)


def _encode_model(value: models.Model) -> Any:
    if value.pk is None:
        raise _Unserializable(value)
    reference = [value._meta.label_lower, encode_value(value.pk)]
    # The task reads the row from the database the instance came from (where it was saved),
    # not wherever a router would send a read: a read replica may not have the row yet.
    alias = value._state.db
    if alias is not None and alias != DEFAULT_DB_ALIAS:
        reference.append(alias)
    return _tagged("model", reference)


_EXACT: dict[type, Callable[[Any], Any]] = {
    str: lambda v: v,
    int: lambda v: v,
    bool: lambda v: v,
    type(None): lambda v: v,
    float: _encode_float,
    list: lambda v: [encode_value(x) for x in v],
    dict: _encode_dict,
    tuple: lambda v: _tagged("tuple", [encode_value(x) for x in v]),
    set: lambda v: _tagged("set", _encode_set(v)),
    frozenset: lambda v: _tagged("frozenset", _encode_set(v)),
    bytes: lambda v: _tagged("bytes", base64.b64encode(v).decode("ascii")),
    bytearray: lambda v: _tagged("bytearray", base64.b64encode(v).decode("ascii")),
    datetime: lambda v: _tagged("datetime", v.isoformat()),
    date: lambda v: _tagged("date", v.isoformat()),
    time: lambda v: _tagged("time", v.isoformat()),
    timedelta: lambda v: _tagged("timedelta", [v.days, v.seconds, v.microseconds]),
    Decimal: lambda v: _tagged("decimal", str(v)),
    UUID: lambda v: _tagged("uuid", str(v)),
}


def encode_value(value: Any) -> Any:
    """A JSON-compatible form of value; raises TypeError for a type that cannot round-trip."""
    encoder = _EXACT.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, models.Model):
        return _encode_model(value)
    # Subclasses (str enums, SafeString, IntEnum, ...) travel as their base type.
    if isinstance(value, str):
        # str.__str__ gives the plain string even for enums whose __str__ is overridden.
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _encode_float(float(value))
    for base in (datetime, date, time, timedelta, Decimal, UUID, dict, list):
        if isinstance(value, base):
            return _EXACT[base](value)
    if isinstance(value, tuple):
        return _EXACT[tuple](value)
    raise _Unserializable(value)


def _decode_tagged(tag: Any, value: Any) -> Any:
    if tag == "tuple":
        return tuple(decode_value(v) for v in value)
    if tag == "datetime":
        return datetime.fromisoformat(value)
    if tag == "date":
        return date.fromisoformat(value)
    if tag == "time":
        return time.fromisoformat(value)
    if tag == "timedelta":
        days, seconds, micros = value
        return timedelta(days=days, seconds=seconds, microseconds=micros)
    if tag == "decimal":
        return Decimal(value)
    if tag == "uuid":
        return UUID(value)
    if tag == "set":
        return {decode_value(v) for v in value}
    if tag == "frozenset":
        return frozenset(decode_value(v) for v in value)
    if tag == "bytes":
        return base64.b64decode(value, validate=True)
    if tag == "bytearray":
        return bytearray(base64.b64decode(value, validate=True))
    if tag == "dict":
        return {decode_value(k): decode_value(v) for k, v in value}
    if tag == "float":
        return float(value)
    if tag == "model":
        label, raw_pk, *rest = value
        alias = rest[0] if rest else DEFAULT_DB_ALIAS
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            raise InvalidTaskRequest(f"Unknown model {label!r} in task arguments.") from None
        if len(rest) > 1 or alias not in connections:
            raise InvalidTaskRequest(f"Unknown database {alias!r} for {label} in task arguments.")
        pk = decode_value(raw_pk)
        try:
            return model._default_manager.db_manager(alias).get(pk=pk)
        except model.DoesNotExist:
            raise ObjectDeleted(
                f"{model._meta.label} with primary key {pk!r} no longer exists."
            ) from None
    raise InvalidTaskRequest(f"Unknown tagged value type {tag!r} in task arguments.")


def decode_value(value: Any) -> Any:
    """The Python value encode_value produced value from. Model references hit the database."""
    if type(value) is list:
        return [decode_value(v) for v in value]
    if type(value) is dict:
        if TAG in value:
            if len(value) != 2 or "v" not in value:
                raise InvalidTaskRequest(f"Malformed tagged value {value!r} in task arguments.")
            try:
                return _decode_tagged(value[TAG], value["v"])
            except (InvalidTaskRequest, ObjectDeleted):
                raise
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise InvalidTaskRequest(
                    f"Malformed {value[TAG]!r} value in task arguments: {exc}"
                ) from exc
        return {k: decode_value(v) for k, v in value.items()}
    return value


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
        enc_args = []
        for position, value in enumerate(args):  # noqa: B007 - position is read in the handler
            enc_args.append(encode_value(value))
        enc_kwargs = {}
        for position, value in kwargs.items():
            enc_kwargs[position] = encode_value(value)
    except _Unserializable as exc:
        bad = exc.value
        what = (
            f"unsaved {type(bad).__qualname__} instance (no primary key)"
            if isinstance(bad, models.Model)
            else f"object of type {type(bad).__qualname__}"
        )
        raise InvalidTaskCall(
            f"{label or task_name}() argument {_argument_label(position, param_names)!r}: "
            f"cannot serialize {what}."
        ) from None
    except RecursionError:
        raise InvalidTaskCall(
            f"{label or task_name}() argument {_argument_label(position, param_names)!r}: "
            "too deeply nested (or refers to itself)."
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


def parse_envelope(body: bytes) -> tuple[str, list[Any], dict[str, Any]]:
    """Check the envelope's shape; return the task name and the still-encoded arguments."""
    try:
        data = _loads(body.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTaskRequest(f"The request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidTaskRequest("The request body is not a task envelope (a JSON object).")
    if data.get("v") != VERSION:
        raise InvalidTaskRequest(
            f"Unsupported envelope version {data.get('v')!r}; this version reads {VERSION}."
        )
    name, args, kwargs = data.get("task"), data.get("args", []), data.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        raise InvalidTaskRequest(
            "The task envelope needs a string task, a list args, a dict kwargs."
        )
    return name, args, kwargs


def decode_arguments(
    args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode arguments; InvalidTaskRequest if malformed, ObjectDeleted for a vanished row."""
    return (
        tuple([decode_value(a) for a in args]) if args else (),
        {k: decode_value(v) for k, v in kwargs.items()} if kwargs else {},
    )


def decode_envelope(body: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The task name and decoded arguments of a request body (raises InvalidTaskRequest)."""
    name, args, kwargs = parse_envelope(body)
    dargs, dkwargs = decode_arguments(args, kwargs)
    return name, dargs, dkwargs
