"""Duplicate deliveries from Cloud Tasks itself: a retry of a delivery whose answer was lost
(the task had run), and a second delivery while the first still runs under its lease."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.utils import timezone

from cloudtask.models import TaskExecution
from tests.tasks import records_blocking, records_ping

from .conftest import WAIT, HeldAnswers, replay, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)

#: The tasks' dispatch deadline (Cloud Tasks' minimum), which is also their lease.
DEADLINE = 15


def messages(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [m for m in (r.getMessage() for r in caplog.records) if m.startswith(start)]


def test_a_retry_after_a_lost_answer_is_a_duplicate(
    delivering: Any, held: HeldAnswers, runs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The endpoint ran the task and answered 200, but the answer never reaches Cloud Tasks
    # within the dispatch deadline (held back here, as a network or a stalled proxy would):
    # Cloud Tasks counts the attempt as failed and delivers the task again.
    caplog.set_level(logging.INFO, logger="cloudtask")
    task_id = unique("lost-answer")
    held.hold_first(task_id)
    records_ping("lost").delay(task_id=task_id)
    assert held.holding.wait(WAIT)
    assert TaskExecution.objects.get(task_id=task_id).status == "succeeded"

    # The one 15-second wait of the suite: Cloud Tasks' shortest dispatch deadline.
    assert statuses(delivering, task_id, 2, timeout=DEADLINE + WAIT) == [None, 200]
    held.released.set()

    first, second = [d for d in delivering.dispatches if d.task == task_id]
    assert first.error is not None and first.error.startswith("DEADLINE_EXCEEDED")
    assert second.attempt == 2
    assert held.held == [200]
    assert len(runs.of("records_ping")) == 1
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert messages(caplog, "Duplicate delivery") == [
        f"Duplicate delivery of task {records_ping.name} ({task_id}), already succeeded: "
        "not run again."
    ]


def test_a_delivery_while_the_task_runs_is_asked_to_come_back(
    delivering: Any,
    gate: Any,
    endpoint_url: str,
    runs: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cloudtask")
    task_id = unique("busy")
    records_blocking("slow").delay(task_id=task_id)
    (delivery,) = runs.wait("records_blocking")  # running now, blocked on the gate

    answer = replay(endpoint_url, delivery)

    assert answer.status == 503
    assert answer.text == "running elsewhere; try later"
    assert 1 <= int(answer.headers["Retry-After"]) <= DEADLINE
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts) == ("running", 1)
    assert row.lease_until is not None and row.lease_until > timezone.now()
    assert len(messages(caplog, f"Task {records_blocking.name} ({task_id}) is running")) == 1

    gate.set()
    assert statuses(delivering, task_id, 1) == [200]
    assert len(runs.of("records_blocking")) == 1
    assert replay(endpoint_url, delivery).status == 200  # now a duplicate
    assert len(runs.of("records_blocking")) == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("succeeded", 1)
