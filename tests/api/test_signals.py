"""Signals around a task's life, with the Task as sender."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask import signals
from tests.tasks import add, always_fails, renamed

from .conftest import Waiter

pytestmark = pytest.mark.django_db


@pytest.fixture
def received() -> Any:
    waiters = {
        name: Waiter()
        for name in ("task_enqueued", "task_started", "task_succeeded", "task_failed")
    }
    for name, waiter in waiters.items():
        getattr(signals, name).connect(waiter)
    yield waiters
    for name, waiter in waiters.items():
        getattr(signals, name).disconnect(waiter)


def test_a_successful_delay(received: Any, runs: Any) -> None:
    call = add(a=1, b=2)
    handle = call.delay()
    (enqueued,) = received["task_enqueued"].calls
    assert enqueued["sender"] is add and enqueued["call"] is call and enqueued["handle"] is handle
    (started,) = received["task_started"].calls
    assert started["sender"] is add and started["kwargs"] == {"a": 1, "b": 2}
    (succeeded,) = received["task_succeeded"].calls
    assert succeeded["result"] == 3
    assert succeeded["request"].task_name == handle.id


def test_a_failing_task(received: Any) -> None:
    with pytest.raises(ValueError):
        always_fails().delay()
    (failed,) = received["task_failed"].calls
    assert failed["sender"] is always_fails
    assert isinstance(failed["exception"], ValueError)
    assert failed["final"] is False  # attempt 1 of 2: Cloud Tasks would retry
    assert received["task_enqueued"].calls == []


def test_inline_execution_sends_started_and_succeeded(received: Any) -> None:
    assert renamed().execute() == "renamed"
    (started,) = received["task_started"].calls
    assert started["request"].is_local is True
    assert received["task_succeeded"].calls[0]["result"] == "renamed"
