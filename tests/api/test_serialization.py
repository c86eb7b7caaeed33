"""The JSON envelope: exact round trips, clear refusals, and malformed input."""

from __future__ import annotations

import enum
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest

from cloudtask import InvalidTaskCall, InvalidTaskRequest, ObjectDeleted
from cloudtask.serialization import decode_envelope, decode_value, encode_envelope, encode_value
from tests.models import Customer, Order
from tests.tasks import add, echo

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    float("inf"),
    "text with \u00e9 and \x00",
    datetime(2026, 3, 4, 5, 6, 7, 890123),
    datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
    datetime(2026, 3, 4, 5, 6, 7, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    date(1999, 12, 31),
    time(23, 59, 59, 999999),
    time(1, 2, 3, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    timedelta(days=-3, seconds=5, microseconds=7),
    Decimal("3.14159265358979323846264338327950288"),
    Decimal("-0.00"),
    UUID("12345678-1234-5678-1234-567812345678"),
    (1, "a", (None,)),
    (),
    {1, 2, 3},
    set(),
    frozenset({"x", (1, 2)}),
    b"\x00\x01binary\xff",
    bytearray(b"abc"),
    [1, [2, [3, {"deep": {4}}]]],
    {"a": 1, "b": [date(2020, 1, 1)]},
    {1: "int key", (1, 2): "tuple key", None: "none key"},
    {"__ct__": "a user key that looks like a tag", "v": 1},
]


# Ids by position and type: a set's repr changes with the hash seed, and pytest-xdist's
# workers must collect the same ids.
@pytest.mark.parametrize(
    "value", VALUES, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(VALUES)]
)
def test_values_round_trip_exactly(value: Any) -> None:
    body = encode_envelope("t", (value,), {"kw": value})
    name, args, kwargs = decode_envelope(body)
    assert name == "t"
    for decoded in (args[0], kwargs["kw"]):
        assert decoded == value
        assert type(decoded) is type(value)
        if isinstance(value, datetime | time):
            assert decoded.utcoffset() == value.utcoffset()


def test_nested_containers_keep_inner_types() -> None:
    value = {"t": (Decimal("1.0"), {UUID(int=1)}), "l": [frozenset({b"x"})]}
    decoded = decode_value(json.loads(json.dumps(encode_value(value))))
    assert decoded == value
    assert type(decoded["t"]) is tuple
    assert type(next(iter(decoded["t"][1]))) is UUID


def test_zoneinfo_datetimes_keep_their_instant_and_offset() -> None:
    value = datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Zurich"))
    decoded = decode_value(encode_value(value))
    assert decoded == value
    assert decoded.utcoffset() == timedelta(hours=2)


def test_nan_round_trips() -> None:
    decoded = decode_value(json.loads(json.dumps(encode_value(float("nan")))))
    assert decoded != decoded


def test_enum_and_str_subclasses_travel_as_their_value() -> None:
    class Colour(str, enum.Enum):  # noqa: UP042 - str() of this enum is "Colour.RED"
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    assert encode_value(Colour.RED) == "red"
    assert encode_value(Order.Status.PAID) == "paid"
    assert encode_value(Level.HIGH) == 3


@pytest.mark.django_db
def test_model_instances_travel_as_references() -> None:
    customer = Customer.objects.create(name="Ada")
    encoded = encode_value(customer)
    assert encoded == {"__ct__": "model", "v": ["tests.customer", customer.pk]}
    Customer.objects.filter(pk=customer.pk).update(name="Grace")
    fetched = decode_value(encoded)
    assert isinstance(fetched, Customer)
    assert fetched.name == "Grace"


@pytest.mark.django_db(databases=["default", "other"])
def test_an_instance_is_fetched_from_the_database_it_came_from() -> None:
    # Same primary key on both databases, different rows: the task must get the one it was
    # given, from "other", not whatever the default database holds under that key.
    on_default = Customer.objects.create(name="on default")
    on_other = Customer(pk=on_default.pk, name="on other")
    on_other.save(using="other")
    encoded = encode_value(on_other)
    assert encoded == {"__ct__": "model", "v": ["tests.customer", on_other.pk, "other"]}
    fetched = decode_value(encoded)
    assert (fetched.name, fetched._state.db) == ("on other", "other")
    # An alias this site does not have is a malformed request, not a crash.
    with pytest.raises(InvalidTaskRequest, match="Unknown database 'replica'"):
        decode_value({"__ct__": "model", "v": ["tests.customer", on_other.pk, "replica"]})


@pytest.mark.django_db
def test_a_deleted_row_raises_object_deleted() -> None:
    customer = Customer.objects.create(name="Ada")
    encoded = encode_value(customer)
    customer.delete()
    with pytest.raises(ObjectDeleted, match=r"tests\.Customer with primary key"):
        decode_value(encoded)


def test_unsaved_instances_are_refused() -> None:
    with pytest.raises(InvalidTaskCall, match="unsaved Customer instance"):
        echo(Customer(name="x")).encode()


class Foo:
    pass


def test_unserializable_argument_names_task_and_argument() -> None:
    with pytest.raises(InvalidTaskCall) as caught:
        add(1, Foo()).delay()  # type: ignore[arg-type]
    assert str(caught.value) == "add() argument 'b': cannot serialize object of type Foo."
    assert isinstance(caught.value, TypeError)
    with pytest.raises(InvalidTaskCall, match="add\\(\\) argument 'a': cannot serialize"):
        add(a=[Foo()]).delay()  # type: ignore[arg-type]
    with pytest.raises(InvalidTaskCall, match="echo\\(\\) argument '#2'"):
        echo(1, {2: object()}).delay()


def test_oversize_payload_is_refused_before_sending(settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "MAX_PAYLOAD_SIZE": 1000}
    with pytest.raises(InvalidTaskCall) as caught:
        echo("x" * 2000).delay()
    message = str(caught.value)
    assert "echo() payload is 2" in message
    assert "1000-byte limit" in message
    assert "MAX_PAYLOAD_SIZE" in message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b'"string"',
        b'{"v": 1}',
        b'{"v": 1, "task": "t", "args": [{"__ct__": "uuid", "v": "no"}], "kwargs": {}}',
        b'{"v": 1, "task": "t", "args": [{"__ct__": "timedelta", "v": 3}], "kwargs": {}}',
        b'{"v": 1, "task": "t", "args": [{"__ct__": "bytes", "v": "!!"}], "kwargs": {}}',
        b'{"v": 1, "task": "t", "args": [{"__ct__": "model", "v": ["no.model", 1]}], "kwargs": {}}',
        b'{"v": 1, "task": "t", "args": [{"__ct__": "set", "v": 1, "x": 2}], "kwargs": {}}',
    ],
)
def test_malformed_envelopes_raise_invalid_task_request(body: bytes) -> None:
    with pytest.raises(InvalidTaskRequest):
        decode_envelope(body)


def test_envelope_is_versioned_json() -> None:
    uid = uuid4()
    body = encode_envelope("tests.tasks.add", (1,), {"u": uid})
    assert json.loads(body) == {
        "v": 1,
        "task": "tests.tasks.add",
        "args": [1],
        "kwargs": {"u": {"__ct__": "uuid", "v": str(uid)}},
    }
