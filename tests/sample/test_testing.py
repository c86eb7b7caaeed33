"""cloudtask.testing: capture what code sends, run it through the real endpoint path."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

import cloudtask.testing
from cloudtask import TaskAlreadyExists
from cloudtask.testing import (
    CAPTURE_TRANSPORT,
    TaskRunFailed,
    capture_tasks,
    send_on_commit_tasks,
)
from tests.models import Order, TaskRecord

from .jobs import (
    describe_order,
    fails_first_attempt,
    fan_out,
    note_order,
    once_per_key,
    write_record,
)

pytestmark = pytest.mark.django_db


def test_capture_records_what_was_sent_and_runs_nothing() -> None:
    soon = timezone.now() + timedelta(minutes=5)
    with capture_tasks() as outbox:
        first = write_record("a", {"x": 1}).delay()
        write_record(label="b", payload={}).schedule(soon)

    assert [c.task for c in outbox] == [write_record, write_record]
    assert outbox.task_names == [write_record.name, write_record.name]
    a, b = outbox
    assert a.args == ("a", {"x": 1}) and a.kwargs == {}
    assert b.args == () and b.kwargs == {"label": "b", "payload": {}}
    assert a.queue == "default"
    assert a.url == django_settings.CLOUDTASK["URL"]
    assert a.schedule_time is None and b.schedule_time == soon
    assert not a.named
    # The handle the sender got names the captured task, as a real backend's would.
    assert first.state == "sent" and first.name == a.name and first.id == a.id
    assert a.name == f"projects/test-project/locations/europe-west6/queues/default/tasks/{a.id}"
    assert a.payload == {"v": 1, "task": write_record.name, "args": ["a", {"x": 1}], "kwargs": {}}
    # Captured, not run: the settings' immediate backend would have run them at .delay().
    assert not TaskRecord.objects.exists()


def test_run_delivers_through_the_endpoint() -> None:
    with capture_tasks() as outbox:
        write_record("ran", {"k": "v"}).delay()
    (captured,) = outbox

    response = captured.run()

    assert response.status_code == 200
    record = TaskRecord.objects.get(label="ran")
    # The task saw Cloud Tasks' headers: its queue and a first attempt.
    assert record.payload == {"k": "v", "retry_count": 0, "queue": "default"}
    assert captured.attempts == 1 and captured.succeeded


def test_run_checks_the_signature_like_the_endpoint() -> None:
    with capture_tasks() as outbox:
        write_record("signed", {}).delay()
    (captured,) = outbox
    assert "X-CloudTask-Signature" in captured.headers
    tampered = replace(
        captured,
        message=replace(captured.message, body=captured.message.body.replace(b"signed", b"forged")),
    )

    assert tampered.run().status_code == 403
    assert not TaskRecord.objects.exists()


def test_each_run_is_the_next_attempt() -> None:
    with capture_tasks() as outbox:
        fails_first_attempt("flaky").delay()
    (captured,) = outbox
    assert captured.queue == "flaky"

    assert captured.run().status_code == 500
    assert not captured.succeeded
    assert captured.run().status_code == 200

    seen = [r.payload["retry_count"] for r in TaskRecord.objects.order_by("id")]
    assert seen == [0, 1]
    assert captured.attempts == 2 and captured.succeeded
    assert captured.delivery_headers()["X-CloudTasks-TaskRetryCount"] == "2"
    assert captured.delivery_headers()["X-CloudTasks-TaskPreviousResponse"] == "200"


def test_propagate_raises_the_task_exception() -> None:
    with capture_tasks() as outbox:
        fails_first_attempt("loud").delay()
    (captured,) = outbox

    with pytest.raises(RuntimeError, match="loud: first attempt fails"):
        captured.run(propagate=True)
    # The failure still counts as an attempt: the next run is the retry.
    assert captured.run().status_code == 200
    assert captured.attempts == 2


def test_run_all_runs_tasks_sent_by_tasks() -> None:
    with capture_tasks() as outbox:
        fan_out(3).delay()
        responses = outbox.run_all()

    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    assert outbox.task_names == [fan_out.name] + [write_record.name] * 3
    assert sorted(TaskRecord.objects.values_list("label", flat=True)) == [
        "child-0",
        "child-1",
        "child-2",
    ]
    assert len(outbox.for_task(write_record)) == 3
    assert outbox.for_task(fan_out.name) == [outbox[0]]
    # Everything ran: a second run_all() has nothing to do.
    assert outbox.run_all() == []


def test_run_all_reports_failures() -> None:
    with capture_tasks() as outbox:
        fails_first_attempt("broken").delay()
        write_record("fine", {}).delay()

    with pytest.raises(TaskRunFailed, match=r"fails_first_attempt .* answered 500"):
        outbox.run_all()
    # The other task still ran.
    assert TaskRecord.objects.filter(label="fine").exists()


def test_run_all_without_check_returns_the_responses() -> None:
    with capture_tasks() as outbox:
        fails_first_attempt("quiet").delay()

    assert [r.status_code for r in outbox.run_all(check=False)] == [500]


def test_named_tasks_are_deduplicated_per_capture() -> None:
    with capture_tasks() as outbox:
        once_per_key("k").delay()
        with pytest.raises(TaskAlreadyExists):
            once_per_key("k").delay()
        once_per_key("other").delay()
    assert [c.named for c in outbox] == [True, True]
    assert len({c.id for c in outbox}) == 2

    # A new capture starts afresh, so tests do not leak names into each other.
    with capture_tasks() as again:
        once_per_key("k").delay()
    assert len(again) == 1


def test_model_arguments_are_read_when_accessed() -> None:
    order = Order.objects.create(note="before")
    with capture_tasks() as outbox:
        describe_order(order, "hello").delay()
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PAID)

    (captured,) = outbox
    fetched, note = captured.args
    # Fetched afresh, as the endpoint would when the task runs.
    assert fetched == order and fetched.status == Order.Status.PAID and note == "hello"


def test_on_commit_tasks_are_not_sent_in_a_testcase_by_default() -> None:
    order = Order.objects.create()
    with capture_tasks() as outbox:
        # pytest-django's db fixture (like TestCase) runs the test in a transaction that never
        # commits, so an on-commit task is never sent: the reason send_on_commit_tasks() exists.
        note_order(order, "never").delay()
        write_record("plain", {}).delay_on_commit()
    assert outbox == []


def test_send_on_commit_tasks_sends_them_when_the_block_ends() -> None:
    order = Order.objects.create()
    with capture_tasks() as outbox:
        with send_on_commit_tasks() as callbacks:
            note_order(order, "kept").delay()
            try:
                with transaction.atomic():
                    note_order(order, "rolled back").delay()
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
            assert outbox == [], "nothing leaves before the block ends (the 'commit')"
        assert callbacks
        assert [c.args[1] for c in outbox] == ["kept"]

        # A second block in the same test works the same way.
        with send_on_commit_tasks():
            write_record("second", {}).delay_on_commit()
        assert outbox.task_names == [note_order.name, write_record.name]

    outbox.run_all()
    order.refresh_from_db()
    assert order.note == "kept"
    assert TaskRecord.objects.filter(label="second").exists()


def test_capture_backend_in_settings_fills_the_module_outbox() -> None:
    cloudtask.testing.outbox.clear()
    with override_settings(CLOUDTASK={**django_settings.CLOUDTASK, "TRANSPORT": CAPTURE_TRANSPORT}):
        write_record("global", {}).delay()
        with capture_tasks() as outbox:
            write_record("inner", {}).delay()

    assert [c.args[0] for c in cloudtask.testing.outbox] == ["global", "inner"]
    assert [c.args[0] for c in outbox] == ["inner"]
    cloudtask.testing.outbox.clear()


def test_capture_keeps_the_rest_of_the_settings() -> None:
    custom: dict[str, Any] = {**django_settings.CLOUDTASK, "QUEUE": "custom-queue"}
    with override_settings(CLOUDTASK=custom), capture_tasks() as outbox:
        write_record("q", {}).delay()
    assert outbox[0].queue == "custom-queue"
    # Leaving the block restores the configured backend: .delay() runs at once again.
    write_record("after", {}).delay()
    assert TaskRecord.objects.filter(label="after").exists()
