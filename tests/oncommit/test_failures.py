"""A send that fails after the commit is logged and signalled, and stops nothing else."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction

from cloudtask import EnqueueError, signals
from cloudtask.models import OutboxMessage
from tests.models import Parcel

from .jobs import ping

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def unavailable(settings: Any) -> None:
    settings.CLOUDTASK = {
        **django_settings.CLOUDTASK,
        "TRANSPORT": "tests.oncommit.faults.UnavailableTransport",
    }


@pytest.fixture
def failures() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def failed(sender: Any, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    def broken_receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a receiver that raises must not stop the commit either")

    signals.task_enqueue_failed.connect(broken_receiver)
    signals.task_enqueue_failed.connect(failed)
    yield seen
    signals.task_enqueue_failed.disconnect(failed)
    signals.task_enqueue_failed.disconnect(broken_receiver)


def test_every_failed_call_is_reported_and_later_callbacks_run(
    unavailable: None, failures: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    after: list[str] = []
    with caplog.at_level(logging.ERROR, logger="cloudtask"), transaction.atomic():
        handles = [ping(f"call {i}", {"n": i}).delay() for i in range(3)]
        transaction.on_commit(lambda: after.append("ran"))

    assert after == ["ran"]
    # Not lost: each call stays in the transactional outbox for the relay.
    assert [h.state for h in handles] == ["outboxed"] * 3
    assert all(isinstance(h.error, EnqueueError) for h in handles)
    assert sorted(OutboxMessage.objects.values_list("attempts", flat=True)) == [1, 1, 1]
    assert sorted(f["call"].args[0] for f in failures) == ["call 0", "call 1", "call 2"]
    logged = [r.getMessage() for r in caplog.records if r.name == "cloudtask.dispatch"]
    assert any("tests.oncommit.jobs.ping" in m and "('call 1', {'n': 1})" in m for m in logged)
    assert any("task_enqueue_failed receiver raised" in m for m in logged)


def test_without_the_outbox_a_failed_call_is_failed_and_gone(
    unavailable: None, failures: list[dict[str, Any]], settings: Any
) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "OUTBOX": False}
    with transaction.atomic():
        handle = ping("no outbox", {}).delay()

    assert handle.state == "failed" and isinstance(handle.error, EnqueueError)
    assert not OutboxMessage.objects.exists()
    assert [f["call"].args[0] for f in failures] == ["no outbox"]


def test_in_autocommit_a_binding_that_cannot_send_does_not_fail_the_save(
    unavailable: None, failures: list[dict[str, Any]]
) -> None:
    parcel = Parcel.objects.create()  # parcel_created cannot be sent...
    parcel.refresh_from_db()  # ...but the row is saved

    assert [f["sender"].name for f in failures] == ["tests.oncommit.jobs.parcel_created"]
    assert isinstance(failures[0]["exception"], EnqueueError)


def test_outside_a_transaction_the_caller_gets_the_error(unavailable: None) -> None:
    with pytest.raises(EnqueueError, match="unavailable"):
        ping("no transaction").delay()
