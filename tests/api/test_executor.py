"""One executor, one outcome model: a task behaves the same on every path that runs it.

The paths: the HTTP endpoint (a delivery from the emulator to a live server), the immediate
transport, cloudtask.testing's captured run(), and .execute(). Where a local path must differ
(nothing retries locally), the difference is the documented one.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtask import ConfigurationError, InvalidTaskCall, Retry, TaskAlreadyExists
from cloudtask.conf import get_settings
from cloudtask.serialization import dumps_envelope
from cloudtask.signing import HEADER as SIGNATURE_HEADER
from cloudtask.signing import sign
from cloudtask.testing import CapturedTask, capture_tasks
from cloudtask.transports import BaseTransport, EnqueuedTask, TaskMessage
from tests import tasks as test_tasks

from .conftest import poll

pytestmark = pytest.mark.django_db(transaction=True)


def test_discard_is_a_quiet_stop_everywhere(via_emulator: Any, runs: Any, settings: Any) -> None:
    # Over HTTP: 200, so Cloud Tasks stops; one attempt.
    handle = test_tasks.discard_me("over http").delay()
    records = poll(
        lambda: [d for d in via_emulator.dispatches if d.task == handle.task_id and d.status]
    )
    assert [r.status for r in records] == [200]

    # Captured and run through the endpoint: the same 200.
    with capture_tasks() as outbox:
        test_tasks.discard_me("captured").delay()
    assert outbox[0].run().status_code == 200

    # .execute(): no error, no value.
    assert test_tasks.discard_me("inline").execute() is None

    # The immediate transport: the call is sent, nothing is raised.
    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": "immediate"}
    assert test_tasks.discard_me("immediate").delay().state == "sent"
    assert len(runs.of("discard_me")) == 4


def test_retry_asks_for_a_later_attempt_or_raises_locally(runs: Any) -> None:
    with capture_tasks() as outbox:
        test_tasks.retry_me(until=1).delay()
    first = outbox[0].run()
    assert (first.status_code, first["Retry-After"]) == (503, "1")
    assert outbox[0].run().status_code == 200  # the retry (retry_count 1) succeeds

    # Nothing retries an inline run: the Retry reaches the caller.
    with pytest.raises(Retry, match="not yet"):
        test_tasks.retry_me(until=1).execute()


def test_a_requested_retry_is_one_warning_line_and_a_crash_an_error_with_traceback(
    runs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with capture_tasks() as outbox:
        test_tasks.retry_me(until=1).delay()
        test_tasks.fails_once().delay()
    retry, crash = outbox
    with caplog.at_level(logging.INFO, logger="cloudtask"):
        assert retry.run().status_code == 503
        assert crash.run().status_code == 500
    logged = [r for r in caplog.records if r.name == "cloudtask"]
    assert [(r.levelno, r.exc_info is not None) for r in logged] == [
        (logging.WARNING, False),
        (logging.ERROR, True),
    ]
    assert logged[0].getMessage() == (
        f"Task tests.tasks.retry_me ({retry.task_id}) asked for a retry on attempt 1: "
        "Retry: not yet"
    )
    assert logged[1].exc_info is not None and logged[1].exc_info[0] is KeyError


def test_exhausted_attempts_stop_retries_and_reach_a_local_caller(runs: Any) -> None:
    with capture_tasks() as outbox:
        test_tasks.always_fails().delay()
    assert outbox[0].run().status_code == 500  # attempt 1 of 2: retried
    assert outbox[0].run().status_code == 200  # attempt 2 of 2: failed for good, not retried
    with pytest.raises(ValueError, match="boom"):
        test_tasks.always_fails().execute()


def _delivery_of(call: Any, **raw_kwargs: Any) -> CapturedTask:
    """A correctly signed delivery of call's task carrying other keyword arguments: what a
    queued task looks like after the sender's code changed the function's parameters."""
    message = call.encode()
    body = dumps_envelope(call.task.name, [], raw_kwargs)
    signature = sign(body, get_settings())
    assert signature is not None
    headers = {**message.headers, SIGNATURE_HEADER: signature}
    return CapturedTask(
        replace(message, body=body, headers=headers),
        resource_name=f"projects/p/locations/l/queues/{message.queue}/tasks/changed",
        enqueued_at=datetime.now(UTC),
    )


@pytest.mark.parametrize("task", [test_tasks.add, test_tasks.wrapped_add], ids=["plain", "wrapped"])
def test_arguments_that_do_not_fit_are_a_400_for_plain_and_wrapped_tasks(
    task: Any, runs: Any
) -> None:
    response = _delivery_of(task(a=1, b=2), a=1, zz=2).run()
    assert response.status_code == 400
    assert runs.of(task.func.__name__) == []
    # The same task with fitting arguments runs on that path.
    assert _delivery_of(task(a=1, b=2), a=1, b=2).run().status_code == 200


def test_a_type_error_inside_the_task_is_a_failure_not_a_mismatch(runs: Any) -> None:
    with capture_tasks() as outbox:
        test_tasks.raises_type_error().delay()
    assert outbox[0].run().status_code == 500
    assert len(runs.of("raises_type_error")) == 1


def test_async_tasks_run_on_every_path(runs: Any) -> None:
    assert test_tasks.async_add(2, 3).execute() == 5
    with capture_tasks() as outbox:
        test_tasks.async_add(a=4, b=5).delay()
    assert outbox[0].run().status_code == 200
    assert [(r["a"], r["b"]) for r in runs.of("async_add")] == [(2, 3), (4, 5)]


def test_immediate_transport_says_when_a_scheduled_task_really_ran(runs: Any) -> None:
    asked = datetime.now(UTC) + timedelta(days=2)
    handle = test_tasks.add(a=1, b=1).schedule(at=asked)
    assert handle.state == "sent"
    # It ran now (the immediate transport cannot wait), and the handle says so.
    assert handle.schedule_time is not None
    assert abs((handle.schedule_time - datetime.now(UTC)).total_seconds()) < 60
    assert len(runs.of("add")) == 1


def test_immediate_dedup_window_is_the_emulators_setting(settings: Any, runs: Any) -> None:
    test_tasks.clean_expired().delay()
    with pytest.raises(TaskAlreadyExists, match="DEDUP_WINDOW"):
        test_tasks.clean_expired().delay()

    settings.CLOUDTASK = {**settings.CLOUDTASK, "EMULATOR": {"DEDUP_WINDOW": 0}}
    test_tasks.clean_expired().delay()
    test_tasks.clean_expired().delay()  # a zero window keeps no name
    assert len(runs.of("clean_expired")) == 3


def test_task_id_and_the_seed_spelling_name_are_one_option(runs: Any) -> None:
    with capture_tasks() as outbox:
        by_id = test_tasks.add(a=1, b=2).delay(task_id="chosen-id")
        by_name = test_tasks.add(a=1, b=2).delay(name="seed-spelling")
    assert [c.task_id for c in outbox] == ["chosen-id", "seed-spelling"]
    assert (by_id.task_id, by_id.id) == ("chosen-id", "chosen-id")
    assert by_id.resource_name is not None and by_id.resource_name.endswith("/chosen-id")
    assert by_id.name == by_id.resource_name
    assert by_name.task_id == "seed-spelling"
    with pytest.raises(InvalidTaskCall, match="not both"):
        test_tasks.add(a=1, b=2).delay(task_id="one", name="other")


def test_the_request_calls_the_cloud_tasks_id_task_id(runs: Any) -> None:
    with capture_tasks() as outbox:
        test_tasks.add(a=1, b=2).delay(task_id="seen-by-the-task")
    outbox[0].run()
    assert runs.of("add")[0]["task_name"] == "seen-by-the-task"


class NoDedupTransport(BaseTransport):
    """A transport that states it cannot refuse a reused task id."""

    supports_named = False

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        return EnqueuedTask(resource_name=f"projects/p/locations/l/queues/q/tasks/{id(message)}")


def test_a_named_call_on_a_transport_without_dedup_is_refused(settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": f"{__name__}.NoDedupTransport"}
    assert test_tasks.add(a=1, b=2).delay().state == "sent"
    with pytest.raises(ConfigurationError, match="supports_named is False"):
        test_tasks.clean_expired().delay()
