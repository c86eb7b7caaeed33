"""Execution records: one row per Cloud Tasks task id, written by the executor for every real
delivery (the emulator POSTing to a live server), and read back through TaskHandle.get_result().
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from cloudtask.models import TaskExecution
from tests.tasks import records_fails_twice, records_returns

from .conftest import poll, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)


def settled(task_id: str, status: str = TaskExecution.Status.SUCCEEDED) -> TaskExecution:
    """The record of task_id once it has the status (the answer may reach the emulator first)."""
    row: TaskExecution = poll(
        lambda: TaskExecution.objects.filter(task_id=task_id, status=status).first()
    )
    return row


def test_a_delivered_task_leaves_one_record(delivering: Any, runs: Any) -> None:
    task_id = unique("record")
    before = timezone.now()
    records_returns("json").delay(task_id=task_id)
    runs.wait("records_returns")
    assert statuses(delivering, task_id, 1) == [200]
    row = settled(task_id)
    assert TaskExecution.objects.filter(task_id=task_id).count() == 1
    assert (row.task_name, row.queue, row.attempts) == (records_returns.name, "default", 1)
    assert row.finished_at is not None and row.duration is not None
    assert before <= row.first_started_at == row.last_started_at <= row.finished_at
    assert 0 <= row.duration <= (row.finished_at - row.last_started_at).total_seconds() + 0.001
    assert row.lease_until is None
    assert row.return_value == {"kind": "json", "items": [1, 2, 3]}
    assert row.return_repr == ""
    assert (row.error_type, row.error_message, row.traceback, row.errors) == ("", "", "", [])


def test_a_value_json_cannot_hold_is_kept_as_its_repr(delivering: Any, runs: Any) -> None:
    task_id = unique("record-repr")
    records_returns("timedelta").delay(task_id=task_id)
    runs.wait("records_returns")
    row = settled(task_id)
    assert row.return_value is None
    assert row.return_repr == "datetime.timedelta(seconds=90)"


def test_every_failed_attempt_keeps_its_error(delivering: Any, runs: Any) -> None:
    task_id = unique("record-errors")
    records_fails_twice("k").delay(task_id=task_id)
    runs.wait("records_fails_twice", 3)
    assert statuses(delivering, task_id, 3) == [500, 500, 200]
    row = settled(task_id)
    assert row.attempts == 3
    assert row.first_started_at < row.last_started_at
    assert row.return_value == "third time lucky"
    first, second = row.errors
    assert (first["attempt"], first["exception_class"]) == (1, "builtins.ValueError")
    assert first["message"] == "k: first attempt"
    assert "records_fails_twice" in first["traceback"]
    assert first["traceback"].rstrip().endswith("ValueError: k: first attempt")
    assert (second["attempt"], second["exception_class"]) == (2, "builtins.KeyError")
    assert second["message"] == "'k: second attempt'"
    assert first["at"] < second["at"]
    # The last failure stays on the record after the success that followed it.
    assert (row.error_type, row.error_message) == ("builtins.KeyError", "'k: second attempt'")


def test_get_result_returns_the_record_after_delivery(delivering: Any, runs: Any) -> None:
    handle = records_returns("json").delay()
    runs.wait("records_returns")

    def succeeded() -> TaskExecution | None:
        result = handle.get_result()
        return result if result is not None and result.status == "succeeded" else None

    result = poll(succeeded)
    assert isinstance(result, TaskExecution)
    assert result.task_id == handle.task_id
    assert (result.attempts, result.return_value) == (1, {"kind": "json", "items": [1, 2, 3]})


def test_get_result_is_none_before_the_first_delivery(delivering: Any) -> None:
    handle = records_returns("json").schedule(countdown=3600)
    assert handle.task_id
    assert handle.get_result() is None
    delivering.client().delete_task(name=handle.resource_name)
