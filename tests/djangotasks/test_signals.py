"""Django's task signals: task_enqueued when the queue accepted the call, task_started and
task_finished around every attempt the endpoint runs."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask.backends import (
    CloudTasksBackend,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)

from .conftest import Runs, SignalLog, statuses
from .tasks import add, discard_me, explode, fails_first_attempt

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def django_signals(signal_log: SignalLog) -> SignalLog:
    signal_log.listen("enqueued", task_enqueued)
    signal_log.listen("started", task_started)
    signal_log.listen("finished", task_finished)
    return signal_log


def test_a_successful_call(django_signals: SignalLog, runs: Runs) -> None:
    result = add.enqueue(1, b=2)

    (enqueued,) = django_signals.of("enqueued")
    assert enqueued["task_result"] is result
    assert result.enqueued_at is not None
    (started,) = django_signals.of("started")
    (finished,) = django_signals.of("finished")
    assert started["task_result"] is finished["task_result"]
    ran = finished["task_result"]
    assert (ran.id, ran.status, ran.return_value) == (result.id, TaskResultStatus.SUCCESSFUL, 3)
    assert ran.started_at <= ran.finished_at
    assert set(django_signals.senders("enqueued") + django_signals.senders("finished")) == {
        CloudTasksBackend
    }


def test_a_failing_call(django_signals: SignalLog, runs: Runs) -> None:
    # The immediate transport runs the task inside enqueue(): its exception reaches the caller.
    with pytest.raises(ValueError, match="boom"):
        explode.enqueue("boom")

    (finished,) = django_signals.of("finished")
    failed = finished["task_result"]
    assert failed.status == TaskResultStatus.FAILED
    (error,) = failed.errors
    assert error.exception_class is ValueError
    assert "ValueError: boom" in error.traceback
    assert django_signals.of("enqueued") == []  # the call was not accepted


def test_every_attempt_is_signalled(
    via_emulator: Any, django_signals: SignalLog, runs: Runs
) -> None:
    result = fails_first_attempt.enqueue("signals")

    first, second = django_signals.wait("finished", 2)
    assert [s["task_result"].attempts for s in django_signals.wait("started", 2)] == [1, 2]
    assert [first["task_result"].status, second["task_result"].status] == [
        TaskResultStatus.FAILED,
        TaskResultStatus.SUCCESSFUL,
    ]
    assert second["task_result"].return_value == "signals"
    assert {f["task_result"].id for f in (first, second)} == {result.id}
    (enqueued,) = django_signals.of("enqueued")
    assert enqueued["task_result"] is result


def test_discard_stops_the_task_without_a_retry(
    via_emulator: Any, django_signals: SignalLog, runs: Runs
) -> None:
    result = discard_me.enqueue("nothing to do")

    (finished,) = django_signals.wait("finished")
    assert finished["task_result"].status == TaskResultStatus.FAILED
    assert finished["task_result"].errors[0].exception_class_path == "cloudtask.exceptions.Discard"
    # cloudtask.Discard is answered 200: Cloud Tasks does not try again.
    assert statuses(via_emulator, result.id, 1) == [200]
    assert via_emulator.wait_idle()
    assert len(runs.of("discard_me")) == 1
