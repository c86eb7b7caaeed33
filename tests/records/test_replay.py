"""A replayed request: the very signed body and X-CloudTasks-TaskName of a real delivery, POSTed
again over HTTP. The signature is valid (it signs the body, and the body is the same), so only
the execution record stands between a replay and a second run."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cloudtask.models import TaskExecution
from tests.tasks import records_ping

from .conftest import poll, replay, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_replayed_request_does_not_run_the_task_again(
    delivering: Any, endpoint_url: str, runs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudtask")
    task_id = unique("replay")
    records_ping("once").delay(task_id=task_id)
    (delivery,) = runs.wait("records_ping")
    assert statuses(delivering, task_id, 1) == [200]
    poll(lambda: TaskExecution.objects.filter(task_id=task_id, status="succeeded").exists())
    assert delivery["task_id"] == task_id
    assert delivery["headers"]["X-Cloudtask-Signature"].startswith("sha256=")

    answers = [replay(endpoint_url, delivery) for _ in range(3)]

    assert [a.status for a in answers] == [200, 200, 200]
    assert {a.text for a in answers} == {"duplicate delivery; already done, not run again"}
    assert len(runs.of("records_ping")) == 1
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    duplicates = [r for r in caplog.records if r.getMessage().startswith("Duplicate delivery")]
    assert [r.getMessage() for r in duplicates] == [
        f"Duplicate delivery of task {records_ping.name} ({task_id}), already succeeded: "
        "not run again."
    ] * 3
    assert {r.levelname for r in duplicates} == {"INFO"}


def test_a_replay_with_a_forged_body_is_refused(
    delivering: Any, endpoint_url: str, runs: Any
) -> None:
    # The record is keyed on the task id, but a replay cannot change the body to run something
    # else under a used id: the signature covers the body.
    task_id = unique("replay-forged")
    records_ping("original").delay(task_id=task_id)
    (delivery,) = runs.wait("records_ping")
    forged = {**delivery, "body": delivery["body"].replace(b"original", b"modified")}
    assert replay(endpoint_url, forged).status == 403
    assert len(runs.of("records_ping")) == 1


def test_a_replay_under_another_task_id_runs_again(
    delivering: Any, endpoint_url: str, runs: Any
) -> None:
    # The limit of the defence: the signature covers the body, not the X-CloudTasks-* headers
    # (Cloud Tasks may choose the task id after the body was signed), so the same body under a
    # task id never seen before is a new task as far as the records can tell.
    task_id, other_id = unique("replay-renamed"), unique("replay-other")
    records_ping("renamed").delay(task_id=task_id)
    (delivery,) = runs.wait("records_ping")
    headers = {k: v for k, v in delivery["headers"].items() if k.lower() != "x-cloudtasks-taskname"}
    renamed = {**delivery, "headers": {**headers, "X-CloudTasks-TaskName": other_id}}

    answer = replay(endpoint_url, renamed)

    assert (answer.status, answer.text) == (200, "ok")
    assert len(runs.of("records_ping")) == 2
    assert set(TaskExecution.objects.values_list("task_id", flat=True)) == {task_id, other_id}
