"""run_after: Cloud Tasks' schedule_time. Honoured by a transport that schedules; refused, by
Django's own validation, on the immediate transport, which runs each task when it is sent."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pytest
from django.utils.timezone import now
from google.api_core.exceptions import NotFound

from cloudtask.backends import InvalidTask, TaskResultStatus, task_backends

from .conftest import Runs
from .tasks import add

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_task_waits_in_the_queue_until_run_after(via_emulator: Any, runs: Runs) -> None:
    at = now() + timedelta(days=2)
    result = add.using(run_after=at).enqueue(3, b=6)

    assert result.status == TaskResultStatus.READY
    client = via_emulator.client()
    name = f"{via_emulator.queue_path('default')}/tasks/{result.id}"
    try:
        queued = client.get_task(name=name)
        # The emulator keeps times as float seconds: equal to well under a millisecond.
        assert abs(queued.schedule_time - at) < timedelta(milliseconds=1)
        assert via_emulator.wait_idle(timeout=0.05) is False  # it is waiting, not delivered
        assert runs.of("add") == []
    finally:
        with contextlib.suppress(NotFound):
            client.delete_task(name=name)


def test_a_task_runs_once_run_after_has_passed(via_emulator: Any, runs: Runs) -> None:
    at = now() + timedelta(seconds=0.5)
    result = add.using(run_after=at).enqueue(1, b=2)

    (run,) = runs.wait("add")
    assert run["task_id"] == result.id
    assert run["at"] >= at


def test_more_than_30_days_ahead_is_refused(via_emulator: Any) -> None:
    with pytest.raises(InvalidTask, match="more than 30 days ahead; Cloud Tasks refuses it"):
        add.using(run_after=now() + timedelta(days=31))


def test_the_immediate_transport_refuses_run_after(runs: Runs) -> None:
    assert task_backends["default"].supports_defer is False
    with pytest.raises(InvalidTask, match="Backend does not support run_after"):
        add.using(run_after=now() + timedelta(minutes=5))
    assert runs.of("add") == []


def test_supports_defer_follows_the_transport(via_emulator: Any) -> None:
    assert task_backends["default"].supports_defer is True
