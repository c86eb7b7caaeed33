"""The capability flags CloudTasksBackend declares, and Django's errors for what it does not
support."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask.backends import CloudTasksBackend, InvalidTask, task, task_backends

from .conftest import Runs
from .tasks import add, async_add

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_declared_capabilities() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, CloudTasksBackend)
    assert backend.supports_async_task is True
    assert backend.supports_priority is False  # Cloud Tasks has no priorities
    assert backend.supports_get_result is True  # execution records are on by default
    assert backend.supports_defer is False  # the immediate transport of the test settings


def test_a_priority_is_refused() -> None:
    with pytest.raises(InvalidTask, match="Backend does not support setting priority of tasks"):
        add.using(priority=10)


def test_a_queue_not_in_queues_is_refused() -> None:
    with pytest.raises(InvalidTask, match="Queue 'reports' is not valid for backend"):
        add.using(queue_name="reports")


def test_a_queue_id_cloud_tasks_refuses_is_refused_when_decorated(settings: Any) -> None:
    settings.TASKS = {"default": {"BACKEND": "cloudtask.backends.CloudTasksBackend", "QUEUES": []}}
    with pytest.raises(InvalidTask, match="queue id 'mail_out' is invalid"):
        add.using(queue_name="mail_out")


def test_async_tasks_are_accepted(runs: Runs) -> None:
    result = async_add.enqueue(2, b=3)

    (run,) = runs.of("async_add")
    assert (run["a"], run["b"], run["task_id"]) == (2, 3, result.id)


def test_without_records_results_cannot_be_retrieved(settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "RECORDS": False}
    backend = task_backends["default"]
    assert backend.supports_get_result is False
    result = add.enqueue(1)
    with pytest.raises(NotImplementedError, match='CLOUDTASK\\["RECORDS"\\]'):
        add.get_result(result.id)


def test_a_function_not_at_module_level_is_refused() -> None:
    def local() -> None:
        pass

    with pytest.raises(InvalidTask, match="Task function must be defined at a module level"):
        task(local)
