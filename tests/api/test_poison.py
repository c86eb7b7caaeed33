"""Poison-proof decoding: one nesting bound on both sides, and no input the decoder cannot turn
into InvalidTaskRequest (or ObjectDeleted for a row that is gone)."""

from __future__ import annotations

import inspect
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, time, timedelta, timezone
from typing import Any

import pytest
from django.db import connection, models, transaction
from django.test import Client
from django.test.utils import isolate_apps

from cloudtask import InvalidTaskCall, InvalidTaskRequest, ObjectDeleted, serialization
from cloudtask.conf import get_settings
from cloudtask.serialization import (
    MAX_DEPTH,
    MAX_JSON_DEPTH,
    decode_envelope,
    decode_value,
    encode_arguments,
    encode_envelope,
    encode_value,
    json_depth,
)
from cloudtask.signing import HEADER, sign
from tests.models import Customer
from tests.tasks import add, echo


def in_tuple(value: Any) -> Any:
    return (value,)


def in_list(value: Any) -> Any:
    return [value]


def in_dict(value: Any) -> Any:
    return {"k": value}


def nested(depth: int, wrap: Any = in_tuple, leaf: Any = 1) -> Any:
    """leaf in depth containers, each made by wrap(the one inside)."""
    for _ in range(depth):
        leaf = wrap(leaf)
    return leaf


def tagged(tag: Any, payload: Any) -> dict[str, Any]:
    return {"__ct__": tag, "v": payload}


def envelope(*args: Any, **kwargs: Any) -> bytes:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # json's encoder recurses, as its parser does
    try:
        return json.dumps({"v": 1, "task": "t", "args": list(args), "kwargs": kwargs}).encode()
    finally:
        sys.setrecursionlimit(limit)


# -- the nesting bound -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_value_as_deep_as_the_bound_is_sent_and_arrives_exactly(runs: Any) -> None:
    deepest = nested(MAX_DEPTH, in_tuple)
    echo(deepest).delay()
    (run,) = runs.of("echo")
    assert run["args"] == (deepest,)


def test_the_encoder_refuses_a_value_nested_deeper_than_the_bound_at_delay() -> None:
    with pytest.raises(InvalidTaskCall) as caught:
        echo(nested(330, in_tuple)).delay()
    assert str(caught.value) == (
        f"echo() argument '#1': nested more than {MAX_DEPTH} deep (or it contains itself)."
    )
    with pytest.raises(InvalidTaskCall, match=r"add\(\) argument 'b': nested more than 100"):
        add(1, nested(101, in_list)).delay()


def test_a_value_that_contains_itself_is_refused_too() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidTaskCall, match="'loop': nested more than 100 deep"):
        echo(loop=loop).delay()


WRAPS = {
    "tuple": in_tuple,
    "list": in_list,
    "frozenset": lambda v: frozenset([v]),
    "set": lambda v: {v} if type(v) is not set else {frozenset(v)},
    "dict": in_dict,
    "tagged-dict": lambda v: {1: v},
}


@pytest.mark.parametrize("wrap", WRAPS.values(), ids=WRAPS.keys())
def test_every_container_nests_one_level_on_both_sides(
    wrap: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    deepest = nested(MAX_DEPTH, wrap)
    assert decode_envelope(encode_envelope("t", (deepest,), {}))[1] == (deepest,)
    with pytest.raises(InvalidTaskCall, match="nested more than 100 deep"):
        encode_envelope("t", (wrap(deepest),), {})
    # One level deeper, from a sender with a higher bound: refused by the decoder.
    monkeypatch.setattr(serialization, "MAX_DEPTH", MAX_DEPTH + 1)
    deeper = encode_envelope("t", (wrap(deepest),), {})
    monkeypatch.undo()
    with pytest.raises(InvalidTaskRequest, match="nest more than 100 deep"):
        decode_envelope(deeper)


@pytest.mark.parametrize("wrap", WRAPS.values(), ids=WRAPS.keys())
def test_the_deepest_value_decodes_within_half_the_recursion_limit(wrap: Any) -> None:
    # Whatever the server and Django hold on the stack, the decoder leaves them room.
    body = encode_envelope("t", (nested(MAX_DEPTH, wrap),), {})
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 450)
    try:
        decode_envelope(body)
    finally:
        sys.setrecursionlimit(limit)


def test_the_deepest_call_fits_the_json_bound() -> None:
    # The most brackets per level (a dict with a non-str key) around a tagged leaf...
    deepest = nested(MAX_DEPTH, lambda v: {None: v}, leaf=uuid.UUID(int=1))
    body = encode_envelope("t", (deepest,), {})
    assert decode_envelope(body)[1] == (deepest,)
    assert json_depth(body) == MAX_JSON_DEPTH - 4
    # ... or around the deepest leaf: a model reference with a composite key holding a UUID.
    leaf = json.dumps(encode_value(uuid.UUID(int=1)), separators=(",", ":"))
    reference = f'{{"__ct__":"model","v":["tests.pair",{{"__ct__":"tuple","v":[{leaf}]}}]}}'
    assert json_depth(body.replace(leaf.encode(), reference.encode())) == MAX_JSON_DEPTH


@pytest.mark.parametrize("opener", ["[", '{"a":'])
@pytest.mark.parametrize("depth", [600, 5_000, 100_000])
def test_deeply_nested_bodies_are_refused(opener: str, depth: int) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * depth + "1" + closer * depth
    body = f'{{"v":1,"task":"t","args":[{deep}],"kwargs":{{}}}}'.encode()
    with pytest.raises(InvalidTaskRequest, match="nest"):
        decode_envelope(body)


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b'{"a": ["[[[", "\\"[", "\\\\", [{}]]}') == 4
    assert json_depth(b"") == 0
    assert json_depth(b'"[[[') == 0  # an unterminated string runs to the end


def test_a_too_full_stack_is_not_blamed_on_a_valid_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # json's parser recurses, and guards that itself with RecursionError. If it runs out of
    # stack on a body within the bound, the body is not poison: the error stays a RecursionError
    # (a 500, retried), never a bad request (a dead letter).
    def out_of_stack(text: str) -> Any:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(serialization, "_loads", out_of_stack)
    with pytest.raises(RecursionError):
        decode_envelope(encode_envelope("t", (nested(MAX_DEPTH, in_list),), {}))
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidTaskRequest, match=f"nests {MAX_JSON_DEPTH + 1} deep"):
        decode_envelope(deep)


# -- every malformed payload is a bad request --------------------------------------------------

MALFORMED: list[tuple[Any, str]] = [
    (tagged("uuid", 5), r"Malformed 'uuid' value 5 in task arguments: expected a string"),
    (tagged("uuid", "nope"), r"Malformed 'uuid' value 'nope'.*badly formed"),
    (tagged("decimal", []), r"Malformed 'decimal' value \[\].*expected a string"),
    (tagged("decimal", "1.2.3"), r"Malformed 'decimal' value '1.2.3'"),
    (tagged("datetime", {}), r"Malformed 'datetime' value \{\}.*expected a string"),
    (tagged("date", "2026-13-01"), r"Malformed 'date' value '2026-13-01'.*month"),
    (tagged("time", 12), r"Malformed 'time' value 12"),
    (tagged("timedelta", "x"), r"Malformed 'timedelta' value 'x'.*expected a list"),
    (tagged("timedelta", [1, 2]), r"three integers"),
    (tagged("timedelta", [1e308, 0, 0]), r"three integers"),
    (tagged("timedelta", [True, 0, 0]), r"three integers"),
    (tagged("timedelta", [10**12, 0, 0]), r"Malformed 'timedelta' value \[1000000000000, 0, 0\]"),
    (tagged("bytes", 5), r"Malformed 'bytes' value 5.*expected a string"),
    (tagged("bytes", "!!"), r"Malformed 'bytes' value '!!'"),
    (tagged("bytearray", "\u00e9"), r"Malformed 'bytearray' value"),
    (tagged("set", [[1]]), r"Malformed 'set' value \[\[1\]\].*unhashable type: 'list'"),
    (tagged("frozenset", [{"a": 1}]), r"unhashable type: 'dict'"),
    (tagged("set", [tagged("set", [])]), r"unhashable type: 'set'"),
    (tagged("set", "abc"), r"Malformed 'set' value 'abc'.*expected a list"),
    (tagged("tuple", {"a": 1}), r"Malformed 'tuple' value \{'a': 1\}.*expected a list"),
    (tagged("dict", [[[1], 2]]), r"Malformed 'dict' value.*unhashable type: 'list'"),
    (tagged("dict", [[1]]), r"expected \[key, value\] pairs, not \[1\]"),
    (tagged("dict", {"ab": 1}), r"Malformed 'dict' value \{'ab': 1\}.*expected a list"),
    (tagged("float", "x"), r"Malformed 'float' value 'x'.*expected 'inf', '-inf' or 'nan'"),
    (tagged("float", "1.5"), r"expected 'inf', '-inf' or 'nan'"),
    (tagged("float", 5), r"Malformed 'float' value 5.*expected a string"),
    (tagged("model", 5), r"Malformed 'model' value 5.*expected a list"),
    (tagged("model", ["tests.customer"]), r"expected \[model label, primary key\]"),
    (tagged("model", ["tests.customer", 1, "default", 4]), r"expected \[model label"),
    (tagged("model", [5, 1]), r"the model label 5 is not a string"),
    (tagged("model", [None, 1]), r"the model label None is not a string"),
    (tagged("model", [[], 1]), r"the model label \[\] is not a string"),
    (tagged("model", ["nolabel", 1]), r"Unknown model 'nolabel'"),
    (tagged("model", ["a.b.c", 1]), r"Unknown model 'a.b.c'"),
    (tagged("model", ["no.model", 1]), r"Unknown model 'no.model'"),
    (tagged("model", ["tests.customer", 1, 5]), r"Unknown database 5 for tests.customer"),
    (tagged("model", ["tests.customer", 1, ["x"]]), r"Unknown database \['x'\]"),
    (tagged("model", ["tests.customer", 1, "replica"]), r"Unknown database 'replica'"),
    (
        tagged("model", ["tests.customer", "abc", "default"]),
        r"Primary key 'abc' does not fit tests.Customer.id in task arguments: .*must be an integer",
    ),
    (tagged("model", ["tests.customer", None]), r"Primary key None does not fit"),
    (tagged("model", ["tests.customer", [1]]), r"Primary key \[1\] in task arguments is not a"),
    (
        tagged("model", ["tests.customer", tagged("model", ["tests.customer", 1])]),
        r"Primary key \{'__ct__': 'model', 'v': \[.*\]\} in task arguments is not a value",
    ),
    (
        nested(400, lambda v: tagged("model", ["tests.customer", v])),
        r"Primary key .* in task arguments is not a value",
    ),
    (
        tagged("model", ["tests.customer", tagged("tuple", [tagged("tuple", [1])])]),
        r"Primary key \{'__ct__': 'tuple', 'v': \[1\]\} in task arguments is not a value",
    ),
    (tagged("model", ["tests.customer", tagged("tuple", [1])]), r"Primary key \(1,\)"),
    (tagged("model", ["tests.customer", tagged("float", "inf")]), r"Primary key inf"),
    ({"__ct__": "uuid", "v": str(uuid.UUID(int=1)), "x": 1}, r"needs exactly the keys"),
    ({"__ct__": "uuid"}, r"Malformed tagged value \{'__ct__': 'uuid'\}.*needs exactly"),
    (tagged("nope", 1), r"Unknown tagged value type 'nope'"),
    (tagged([1], 1), r"Unknown tagged value type \[1\]"),
    (tagged(None, 1), r"Unknown tagged value type None"),
    (nested(600, in_list), r"nest more than 100 deep"),
    (nested(600, in_dict), r"nest more than 100 deep"),
    (nested(200, lambda v: tagged("tuple", [v])), r"nest more than 100 deep"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_values_are_bad_requests_that_name_the_value(value: Any, message: str) -> None:
    with pytest.raises(InvalidTaskRequest, match=message):
        decode_value(value)
    # The same through a whole body, as the endpoint reads it.
    with pytest.raises(InvalidTaskRequest, match=message):
        decode_envelope(envelope(value))


def test_messages_show_a_bounded_preview_of_the_bad_value() -> None:
    with pytest.raises(InvalidTaskRequest) as caught:
        decode_value(tagged("uuid", "x" * 100_000))
    assert len(str(caught.value)) < 200
    with pytest.raises(InvalidTaskRequest) as caught:
        decode_value(tagged("nope" * 10_000, [list(range(10_000))]))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "body",
    [
        # Python's int-to-str digit limit, hit by the JSON parser.
        b'{"v": 1, "task": "t", "args": [' + b"1" * 5000 + b'], "kwargs": {}}',
        b'{"v": true, "task": "t"}',
        b'{"v": [1], "task": "t"}',
        b'{"v": 1, "task": 5}',
        b'{"v": 1, "task": "t", "args": {}}',
        b'{"v": 1, "task": "t", "kwargs": []}',
        b"[1]",
        b"NaN",
        b"\xc3",
    ],
)
def test_malformed_envelopes_are_bad_requests(body: bytes) -> None:
    with pytest.raises(InvalidTaskRequest):
        decode_envelope(body)


def test_non_finite_float_strings_still_round_trip() -> None:
    assert decode_value(tagged("float", "-inf")) == float("-inf")
    nan = decode_value(tagged("float", "nan"))
    assert nan != nan


# -- model references --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_bad_key_leaves_the_transaction_usable() -> None:
    # A key of the wrong type is refused before any query: one that reached PostgreSQL would
    # fail with a DataError that also aborts the transaction around it.
    customer = Customer.objects.create(name="Ada")
    with transaction.atomic():
        for raw in ("abc", "1.5x", "", tagged("date", "2026-01-01")):
            with pytest.raises(InvalidTaskRequest, match=r"does not fit tests\.Customer\.id"):
                decode_value(tagged("model", ["tests.customer", raw]))
        assert decode_value(encode_value(customer)) == customer


@pytest.mark.django_db
@pytest.mark.parametrize("pk", [2**63, -(2**63) - 1, 2**70, -1, 0])
def test_a_key_no_row_can_have_reads_as_a_deleted_row(pk: int) -> None:
    with transaction.atomic():
        with pytest.raises(ObjectDeleted, match=rf"tests\.Customer with primary key {pk}"):
            decode_value(tagged("model", ["tests.customer", pk]))
        assert Customer.objects.count() == 0  # the connection is still usable


@pytest.mark.django_db
def test_a_key_as_a_string_of_digits_still_finds_the_row() -> None:
    # What to_python() accepts: the row exists, so the task runs with it.
    customer = Customer.objects.create(name="Ada")
    assert decode_value(tagged("model", ["tests.customer", str(customer.pk)])) == customer


@pytest.mark.django_db
def test_a_swapped_out_model_is_a_bad_request(settings: Any) -> None:
    settings.AUTH_USER_MODEL = "tests.Customer"
    with pytest.raises(InvalidTaskRequest, match=r"auth\.user in task arguments is swapped out"):
        decode_value(tagged("model", ["auth.user", 1]))


@pytest.fixture
def composite_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[models.Model]]:
    with isolate_apps("tests") as registry:

        class Pair(models.Model):
            pk = models.CompositePrimaryKey("left", "right")
            left = models.IntegerField()
            right = models.UUIDField()

            class Meta:
                app_label = "tests"

        monkeypatch.setattr(serialization, "apps", registry)
        yield Pair


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('[1, "x"]', r"Primary key '\[1, \"x\"\]' of tests.Pair in task arguments is not a tuple"),
        (tagged("tuple", [1]), r"Primary key \(1,\) of tests.Pair .* not a tuple of 2 values"),
        (tagged("tuple", [1, "x"]), r"Primary key \(1, 'x'\) does not fit tests.Pair.right"),
        (tagged("tuple", ["a", str(uuid.UUID(int=1))]), r"does not fit tests.Pair.left"),
    ],
)
def test_a_composite_key_is_checked_part_by_part(
    composite_model: type[models.Model], raw: Any, message: str
) -> None:
    with pytest.raises(InvalidTaskRequest, match=message):
        decode_value(tagged("model", ["tests.pair", raw]))


@pytest.mark.django_db(transaction=True)
def test_a_text_key_the_driver_cannot_send_is_a_bad_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with isolate_apps("tests") as registry:

        class Slugged(models.Model):
            slug = models.CharField(primary_key=True, max_length=20)

            class Meta:
                app_label = "tests"

        monkeypatch.setattr(serialization, "apps", registry)
        with connection.schema_editor() as editor:
            editor.create_model(Slugged)
        try:
            Slugged._default_manager.create(slug="a")
            with transaction.atomic():
                # A lone surrogate cannot be encoded for any driver.
                with pytest.raises(InvalidTaskRequest, match=r"cannot be queried: .*surrogates"):
                    decode_value(tagged("model", ["tests.slugged", "\ud800"]))
                # PostgreSQL text cannot hold NUL (elsewhere no row has it).
                expected = (
                    InvalidTaskRequest if connection.vendor == "postgresql" else ObjectDeleted
                )
                with pytest.raises(expected, match=r"NUL|no longer exists"):
                    decode_value(tagged("model", ["tests.slugged", "a\x00"]))
                assert decode_value(tagged("model", ["tests.slugged", "a"])).pk == "a"
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(Slugged)


# -- at the endpoint ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_endpoint_never_answers_poison_with_a_server_error(runs: Any) -> None:
    client = Client()
    poison = [
        envelope(nested(330, lambda v: tagged("tuple", [v]))),
        envelope(nested(600, in_list)),
        envelope(nested(600, in_dict)),
        envelope(tagged("uuid", 5)),
        envelope(tagged("model", [5, 1])),
        envelope(tagged("model", [None, 1])),
        envelope(tagged("model", [[], 1])),
        envelope(tagged("model", ["tests.customer", "abc"])),
        b'{"v":1,"task":"tests.tasks.echo","args":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ]
    for body in poison:
        body = body.replace(b'"task": "t"', b'"task": "tests.tasks.echo"')
        signature = sign(body, get_settings())
        assert signature is not None
        response = client.post(
            "/_tasks/", data=body, content_type="application/json", headers={HEADER: signature}
        )
        assert response.status_code < 500, (body[:80], response.status_code)
    assert runs.of("echo") == []


def test_a_utc_offset_with_a_fraction_of_a_second_is_refused_at_the_call() -> None:
    odd = timezone(timedelta(microseconds=1))
    for value in (time(0, 0, tzinfo=odd), datetime(2026, 1, 1, tzinfo=odd)):
        with pytest.raises(InvalidTaskCall, match="UTC offset has a fraction of a second"):
            encode_arguments("t", (value,), {}, label="t")
