"""Property-based tests of the envelope: what encodes comes back exactly, and nothing a body can
hold makes the decoder or the endpoint raise anything but a bad request.

Fixed seed (derandomize) and no example database, so every run tries the same cases and writes
nothing into the tree; the budgets keep the module to a few seconds.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtask import InvalidTaskRequest, ObjectDeleted
from cloudtask.conf import get_settings
from cloudtask.serialization import (
    TAG,
    decode_arguments,
    decode_envelope,
    encode_envelope,
    parse_envelope,
)
from cloudtask.signing import HEADER, sign
from tests.models import Customer

from .conftest import Runs


def dumps(value: Any) -> bytes:
    """JSON for value, however deep (json's encoder recurses, as its parser does)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)


def budget(examples: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=examples,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# -- (a) what encodes, round-trips exactly -----------------------------------------------------

# Whole seconds: an offset with a fraction of a second is refused by the encoder (Python's
# fromisoformat() would drop the fraction); tests/api/test_poison.py checks that refusal.
offsets = (
    st.integers(min_value=-(23 * 3600 + 59 * 60), max_value=23 * 3600 + 59 * 60)
    .map(lambda seconds: timedelta(seconds=seconds))
    .map(timezone)
)
zones = st.none() | offsets
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.datetimes(timezones=zones),
    st.dates(),
    st.times(timezones=zones),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.binary(max_size=10),
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
scalars = hashable_scalars | st.binary(max_size=10).map(bytearray)
str_keys = st.text(max_size=6) | st.sampled_from([TAG, "v"])


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(str_keys, inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
    )


def values(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    return st.recursive(leaves, containers, max_leaves=12)


def same(decoded: Any, value: Any) -> bool:
    """Equal, of the same type all the way down (Decimal digits and time offsets included)."""
    if type(decoded) is not type(value):
        return False
    if isinstance(value, list | tuple):
        return len(decoded) == len(value) and all(map(same, decoded, value))
    if isinstance(value, dict):
        return decoded.keys() == value.keys() and all(same(decoded[k], value[k]) for k in value)
    if isinstance(value, Decimal):
        return str(decoded) == str(value)
    if isinstance(value, datetime | time):
        return bool(decoded == value and decoded.utcoffset() == value.utcoffset())
    if isinstance(value, float) and math.isnan(value):
        return math.isnan(decoded)
    return bool(decoded == value)


def round_trip(value: Any) -> Any:
    body = encode_envelope("t", (value,), {"kw": value})
    _, args, kwargs = decode_envelope(json.dumps(json.loads(body)).encode())
    assert same(args[0], value) and same(kwargs["kw"], value), (value, args[0])
    return args[0]


@budget(150)
@given(values())
def test_every_encodable_value_round_trips_exactly(value: Any) -> None:
    round_trip(value)


@pytest.mark.django_db
def test_model_instances_round_trip_inside_any_structure() -> None:
    customers = [Customer.objects.create(name=name) for name in ("Ada", "Grace")]

    @budget(20)
    @given(values(scalars | st.sampled_from(customers)))
    def check(value: Any) -> None:
        round_trip(value)

    check()


# -- (b) nothing makes the decoder raise anything but a bad request ----------------------------

WIRE_TAGS = [
    "tuple",
    "set",
    "frozenset",
    "dict",
    "datetime",
    "date",
    "time",
    "timedelta",
    "decimal",
    "uuid",
    "bytes",
    "bytearray",
    "float",
    "model",
]
PLAUSIBLE_STRINGS = [
    "",
    "2026-01-02",
    "2026-01-02T03:04:05.000006+05:30",
    "23:59:59",
    str(UUID(int=1)),
    "1.10",
    "inf",
    "-inf",
    "nan",
    base64.b64encode(b"bytes").decode(),
    "!!",
    "tests.customer",
    "tests.order",
    "auth.user",
    "contenttypes.contenttype",
    "nolabel",
    "a.b.c",
    "default",
    "other",
    "replica",
    TAG,
    "v",
]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(PLAUSIBLE_STRINGS),
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(max_size=4) | st.sampled_from([TAG, "v", "x"])
    model_reference = st.lists(
        st.sampled_from(PLAUSIBLE_STRINGS[11:]) | st.integers(-1, 3) | inner, max_size=4
    )
    return st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=3),
        st.fixed_dictionaries({TAG: st.sampled_from(WIRE_TAGS), "v": inner}),
        st.fixed_dictionaries({TAG: st.just("model"), "v": model_reference}),
        st.fixed_dictionaries({TAG: st.sampled_from(WIRE_TAGS) | inner, "v": inner}),
        st.fixed_dictionaries({TAG: st.sampled_from(WIRE_TAGS)}, optional={"v": inner, "x": inner}),
    )


json_values = st.recursive(json_scalars, json_containers, max_leaves=16)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """A JSON value nested in up to 1,000 more levels of one kind of container."""
    value = draw(json_values)
    wrap = draw(
        st.sampled_from(
            [
                lambda v: [v],
                lambda v: {"k": v},
                lambda v: {TAG: "tuple", "v": [v]},
                lambda v: {TAG: "dict", "v": [[1, v]]},
                lambda v: {TAG: "model", "v": ["tests.customer", v]},
            ]
        )
    )
    # Around the bound (100) and far past it, as often as anywhere else.
    for _ in range(draw(st.sampled_from([99, 100, 101, 400, 1000]) | st.integers(0, 400))):
        value = wrap(value)
    return value


def sample_bodies() -> list[bytes]:
    """Real envelopes of the kinds a site sends, for the fuzzer to mutate."""
    reference = {TAG: "model", "v": ["tests.customer", 1]}
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        ((1, "two", 3.5, None, True), {"flag": False}),
        (
            (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), date(2026, 1, 2)),
            {"at": time(1, 2), "every": timedelta(days=-1, seconds=5)},
        ),
        ((Decimal("1.10"), UUID(int=7), b"\x00\xff", bytearray(b"ab")), {"inf": float("inf")}),
        (((1, (2, 3)), {1, 2}, frozenset({"a"})), {"map": {1: "one", (2, 3): [4]}}),
        (([{"a": [1, {"b": (2,)}]}],), {"tag": {TAG: "a key", "v": 1}}),
    ]
    bodies = [encode_envelope("tests.tasks.echo", args, kwargs) for args, kwargs in calls]
    with_reference = {"v": 1, "task": "tests.tasks.echo", "args": [reference], "kwargs": {}}
    return [*bodies, json.dumps(with_reference).encode()]


SAMPLES = sample_bodies()

byte_mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 2**16),
        st.binary(min_size=1, max_size=6)
        | st.sampled_from([b"[", b"{", b"]", b"}", b'"', b"\\", b",", b":", b"\xff", b"[" * 2000]),
    ),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 8)),
)


def mutate_bytes(body: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    for kind, position, what in mutations:
        at = position % (len(body) + 1)
        if kind == "flip" and body:
            at %= len(body)
            body = body[:at] + bytes([what]) + body[at + 1 :]
        elif kind == "insert":
            body = body[:at] + what + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + what :]
    return body


@st.composite
def mutated_trees(draw: st.DrawFn) -> bytes:
    """A real envelope with one subtree (or the task name, or a tag) replaced by random JSON."""
    root = [json.loads(draw(st.sampled_from(SAMPLES)))]
    holder: Any = root
    key: Any = 0
    while draw(st.booleans()):
        node = holder[key]
        if isinstance(node, list) and node:
            holder, key = node, draw(st.integers(0, len(node) - 1))
        elif isinstance(node, dict) and node:
            holder, key = node, draw(st.sampled_from(sorted(node)))
        else:
            break
    holder[key] = draw(json_values | deep_values())
    return dumps(root[0])


@st.composite
def poison_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "tree", "envelope", "random"]))
    if kind == "bytes":
        mutations = draw(st.lists(byte_mutations, min_size=1, max_size=4))
        return mutate_bytes(draw(st.sampled_from(SAMPLES)), mutations)
    if kind == "tree":
        return draw(mutated_trees())
    if kind == "envelope":
        args = draw(st.lists(json_values | deep_values(), max_size=3))
        kwargs = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2))
        return dumps({"v": 1, "task": "tests.tasks.echo", "args": args, "kwargs": kwargs})
    return draw(st.binary(max_size=64))


def decode_or_refuse(body: bytes) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The decoded arguments, or None for a bad request or a vanished row; any other exception
    fails the test."""
    try:
        _, args, kwargs = parse_envelope(body)
        return decode_arguments(args, kwargs)
    except (InvalidTaskRequest, ObjectDeleted):
        return None


def test_the_samples_decode() -> None:
    for body in SAMPLES[:-1]:
        assert decode_or_refuse(body) is not None


@pytest.mark.django_db(databases=["default", "other"])
@budget(300)
@given(json_values | deep_values())
def test_any_json_value_decodes_or_is_a_bad_request(value: Any) -> None:
    body = dumps({"v": 1, "task": "t", "args": [value], "kwargs": {"k": value}})
    decode_or_refuse(body)


@pytest.mark.django_db(databases=["default", "other"])
@budget(300)
@given(poison_bodies())
def test_any_mutated_envelope_decodes_or_is_a_bad_request(body: bytes) -> None:
    decode_or_refuse(body)


# -- (c) nor the endpoint: no 5xx, and the task never runs on what does not decode -------------


@pytest.mark.django_db(databases=["default", "other"])
def test_the_endpoint_answers_any_signed_body_without_a_server_error() -> None:
    Customer.objects.create(pk=1, name="Ada")
    client = Client()
    runs = Runs()
    secret = get_settings()
    outcomes: set[bool] = set()

    @budget(120)
    @given(poison_bodies())
    def check(body: bytes) -> None:
        runs.clear()
        signature = sign(body, secret)
        assert signature is not None
        response = client.post(
            "/_tasks/", data=body, content_type="application/json", headers={HEADER: signature}
        )
        assert response.status_code < 500, (response.status_code, body[:200])
        ran = runs.of("echo")
        outcomes.add(bool(ran))
        if not ran:
            return
        # It ran, so the body decodes, to exactly what the task was given.
        decoded = decode_or_refuse(body)
        assert decoded is not None, body[:200]
        ((args, kwargs),) = [(run["args"], run["kwargs"]) for run in ran]
        assert repr((args, kwargs)) == repr(decoded)

    try:
        check()
    finally:
        runs.clear()
    assert outcomes == {True, False}  # the budget reached both: bodies that run and that do not
