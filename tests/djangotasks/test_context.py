"""takes_context=True: the TaskContext a task receives, its attempt counted from Cloud Tasks'
retries (X-CloudTasks-TaskRetryCount + 1), and the TaskResult it carries."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask.backends import TaskResultStatus

from .conftest import Runs, statuses
from .tasks import add, fails_first_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_context_carries_the_running_result(runs: Runs) -> None:
    result = add.enqueue(1, b=1)

    (run,) = runs.of("add")  # the immediate transport ran it inside enqueue()
    assert run["task_id"] == result.id
    assert run["attempt"] == 1
    assert run["status"] == TaskResultStatus.RUNNING
    assert run["backend"] == "default"


def test_attempt_counts_cloud_tasks_retries(via_emulator: Any, runs: Runs) -> None:
    result = fails_first_attempt.enqueue("retry-me")

    first, second = runs.wait("fails_first_attempt", 2)
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["task_id"] == second["task_id"] == result.id
    # The first attempt raised: the endpoint answered 500 and Cloud Tasks tried again.
    assert statuses(via_emulator, result.id, 2) == [500, 200]
    assert via_emulator.wait_idle()
    assert len(runs.of("fails_first_attempt")) == 2
