"""get_result() and refresh() of the django.tasks backend, read from the execution records."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from cloudtask import records
from cloudtask.backends import (
    CloudTasksBackend,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)
from cloudtask.models import TaskExecution
from tests import tasks as seed_tasks
from tests.djangotasks.tasks import add, discard_me, explode, fails_first_attempt

from .conftest import BASE, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def backend() -> CloudTasksBackend:
    found = task_backends["default"]
    assert isinstance(found, CloudTasksBackend)
    return found


def test_get_result_is_supported_while_records_are_on(settings: Any) -> None:
    assert backend().supports_get_result is True

    settings.CLOUDTASK = {**BASE, "RECORDS": False}

    assert backend().supports_get_result is False


def test_the_result_of_a_task_that_ran() -> None:
    enqueued = add.enqueue(2, b=3)  # the immediate transport runs it inside enqueue()

    result = add.get_result(enqueued.id)

    assert result.id == enqueued.id
    assert result.task.func is add.func
    assert result.backend == "default"
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished
    assert result.return_value == 5
    assert result.attempts == 1
    assert result.errors == []
    assert result.started_at is not None and result.finished_at is not None
    assert result.last_attempted_at == result.started_at
    assert result.started_at <= result.finished_at
    # Not recorded: the arguments, and when the task was enqueued.
    assert (result.args, result.kwargs, result.enqueued_at) == ([], {}, None)


def test_refresh_brings_the_enqueued_result_up_to_date() -> None:
    result = add.enqueue(1, b=1)
    enqueued_status = result.status

    result.refresh()

    assert enqueued_status == TaskResultStatus.READY  # as enqueue() returned it
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.attempts == 1
    assert (result.args, result.kwargs) == ([1], {"b": 1})  # refresh() keeps these


def test_aget_result_and_arefresh() -> None:
    enqueued = add.enqueue(3, b=4)

    async def read() -> TaskResult[Any]:
        try:
            fetched = await add.aget_result(enqueued.id)
            await enqueued.arefresh()
            return fetched
        finally:
            # Django's sync_to_async ran the queries on asgiref's shared thread: close its
            # connection, or the test database cannot be dropped.
            await sync_to_async(connections.close_all)()

    fetched = asyncio.run(read())

    assert fetched.return_value == 7
    assert enqueued.status == TaskResultStatus.SUCCESSFUL
    assert enqueued.return_value == 7


def test_a_failed_attempt_that_cloud_tasks_will_retry_is_ready() -> None:
    with pytest.raises(ValueError, match="boom"):
        explode.enqueue("boom")  # the immediate transport raises what the task raised
    record = TaskExecution.objects.get(task_name=explode.module_path)

    result = explode.get_result(record.task_id)

    assert result.status == TaskResultStatus.READY
    assert not result.is_finished
    assert result.finished_at is None
    assert result.attempts == 1
    (error,) = result.errors
    assert error.exception_class is ValueError
    assert "ValueError: boom" in error.traceback
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value


def test_a_discarded_task_failed() -> None:
    enqueued = discard_me.enqueue("nothing to do")

    result = discard_me.get_result(enqueued.id)

    assert result.status == TaskResultStatus.FAILED
    assert result.finished_at is not None
    (error,) = result.errors
    assert error.exception_class_path == "cloudtask.exceptions.Discard"
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", TaskResultStatus.RUNNING),
        ("succeeded", TaskResultStatus.SUCCESSFUL),
        ("failed", TaskResultStatus.READY),
        ("discarded", TaskResultStatus.FAILED),
        ("dead", TaskResultStatus.FAILED),
    ],
)
def test_each_record_status(status: str, expected: TaskResultStatus) -> None:
    task_id = uuid.uuid4().hex
    held = records.claim(task_id, add.module_path, "default", timedelta(minutes=10))
    if status == "succeeded":
        records.finish(held, status, duration=0.01, value=42)
    elif status != "running":
        records.finish(held, status, duration=0.01, error=RuntimeError(status))

    result = add.get_result(task_id)

    assert result.status == expected
    assert result.attempts == 1
    assert len(result.errors) == (0 if status in ("running", "succeeded") else 1)
    assert (result.finished_at is not None) == result.is_finished
    if expected == TaskResultStatus.SUCCESSFUL:
        assert result.return_value == 42


def test_one_error_per_failed_attempt() -> None:
    task_id = uuid.uuid4().hex
    lease = timedelta(minutes=10)
    for kind in (KeyError, TimeoutError):
        held = records.claim(task_id, add.module_path, "default", lease)
        records.finish(held, "failed", duration=0.01, error=kind("no luck"))
    held = records.claim(task_id, add.module_path, "default", lease)
    records.finish(held, "succeeded", duration=0.01, value=3)

    result = add.get_result(task_id)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 3
    assert [e.exception_class for e in result.errors] == [KeyError, TimeoutError]


def test_a_retried_task_through_cloud_tasks(via_emulator: Any) -> None:
    enqueued = fails_first_attempt.enqueue("retry-me")

    wait_for(
        lambda: TaskExecution.objects.filter(
            task_id=enqueued.id, status=TaskExecution.Status.SUCCEEDED
        ).exists()
    )
    enqueued.refresh()

    assert enqueued.status == TaskResultStatus.SUCCESSFUL
    assert enqueued.return_value == "retry-me"
    assert enqueued.attempts == 2
    (error,) = enqueued.errors
    assert error.exception_class is RuntimeError
    assert "attempt 1 of retry-me fails" in error.traceback
    assert enqueued.started_at is not None and enqueued.last_attempted_at is not None
    assert enqueued.started_at < enqueued.last_attempted_at
    assert enqueued.finished_at is not None and enqueued.finished_at >= enqueued.last_attempted_at


def test_an_unknown_id_has_no_result() -> None:
    with pytest.raises(TaskResultDoesNotExist, match="has not started yet, the id is unknown"):
        add.get_result("no-such-task")


def test_a_seed_task_has_no_django_result_but_its_handle_has_one() -> None:
    handle = seed_tasks.add(1, 2).delay()
    assert handle.task_id is not None

    with pytest.raises(TaskResultDoesNotExist, match=r"not a django\.tasks task"):
        backend().get_result(handle.task_id)
    record = handle.get_result()
    assert record is not None
    assert (record.status, record.return_value, record.attempts) == ("succeeded", 3, 1)


def test_without_records_there_are_no_results(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "RECORDS": False}
    result = add.enqueue(1)

    with pytest.raises(NotImplementedError, match=r'CLOUDTASK\["RECORDS"\] off'):
        add.get_result(result.id)
    with pytest.raises(NotImplementedError, match="supports_get_result is False"):
        result.refresh()
