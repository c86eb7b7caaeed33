"""The immediate backend: the production encode/decode/handler path, run in the caller's thread."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cloudtask import InvalidTaskCall, Retry, TaskAlreadyExists
from cloudtask.transports import get_transport
from cloudtask.transports.immediate import ImmediateTransport
from tests.models import Order
from tests.tasks import add, always_fails, clean_expired, discard_me, echo, retry_me, touch_order

pytestmark = pytest.mark.django_db


def test_it_is_the_test_settings_backend() -> None:
    assert isinstance(get_transport(), ImmediateTransport)


def test_runs_at_once_with_decoded_arguments(runs: Any) -> None:
    handle = echo((1, 2), {3}, Decimal("1.5"), when=datetime(2026, 1, 1, tzinfo=UTC)).delay()
    (run,) = runs.of("echo")
    # The same types the endpoint would hand the task in production, not the caller's objects.
    assert run["args"] == ((1, 2), {3}, Decimal("1.5"))
    assert run["kwargs"] == {"when": datetime(2026, 1, 1, tzinfo=UTC)}
    assert run["is_local"] is False
    assert run["task_name"] == handle.id
    assert (
        handle.name
        == f"projects/test-project/locations/europe-west6/queues/default/tasks/{handle.id}"
    )


def test_model_arguments_are_fetched_fresh(runs: Any) -> None:
    order = Order.objects.create()
    stale = Order.objects.get(pk=order.pk)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.SHIPPED)
    touch_order(stale, note="n").delay()
    assert runs.of("touch_order")[0]["status"] == Order.Status.SHIPPED


def test_task_exceptions_reach_the_caller(runs: Any) -> None:
    with pytest.raises(ValueError, match="boom"):
        always_fails().delay()
    with pytest.raises(Retry):
        retry_me(until=1).delay()


def test_discard_does_not_propagate(runs: Any) -> None:
    handle = discard_me("no").delay()
    assert handle.state == "sent"
    assert len(runs.of("discard_me")) == 1


def test_same_call_errors_as_production() -> None:
    with pytest.raises(InvalidTaskCall):
        echo(object()).delay()
    with pytest.raises(InvalidTaskCall, match="unexpected keyword argument 'c'"):
        add(c=1)  # type: ignore[call-arg]


def test_named_duplicates_are_refused(settings: Any, runs: Any) -> None:
    settings.CLOUDTASK = dict(settings.CLOUDTASK)  # a fresh backend, a fresh dedup window
    clean_expired().delay()
    with pytest.raises(TaskAlreadyExists):
        clean_expired().delay()
    assert len(runs.of("clean_expired")) == 1


def test_it_works_with_no_authentication_configured(settings: Any, runs: Any) -> None:
    # In-process deliveries never cross a network, so the endpoint's unauthenticated-refusal
    # does not apply to them.
    settings.CLOUDTASK = {**settings.CLOUDTASK, "SECRET": None}
    add(a=1, b=1).delay()
    assert len(runs.of("add")) == 1


ARGS = ((1, 2), {3}, frozenset({"f"}), b"b", Decimal("1.50"), datetime(2026, 1, 1, tzinfo=UTC))


def _types(value: Any) -> Any:
    return [type(v) for v in value]


@pytest.mark.django_db(transaction=True)
def test_immediate_and_emulator_deliver_identical_arguments(
    settings: Any, via_emulator: Any, runs: Any
) -> None:
    echo(*ARGS, k={"n": (1,)}).delay()
    (through_emulator,) = runs.wait("echo")
    runs.clear()
    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": "immediate"}
    echo(*ARGS, k={"n": (1,)}).delay()
    (immediate,) = runs.of("echo")
    assert immediate["args"] == through_emulator["args"] == ARGS
    assert _types(immediate["args"]) == _types(through_emulator["args"]) == _types(ARGS)
    assert immediate["kwargs"] == through_emulator["kwargs"] == {"k": {"n": (1,)}}
