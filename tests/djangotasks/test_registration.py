"""Registration: decorating a django.tasks task registers it under its module_path, and the
endpoint routes deliveries through that registry, never importing a path from a request."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from cloudtask import registry
from cloudtask.backends import DjangoTaskAdapter, task
from cloudtask.encoding import encode_message
from cloudtask.executor import Runnable
from cloudtask.message import TaskMessage

from . import tasks
from .conftest import Runs
from .tasks import add, send_welcome

pytestmark = pytest.mark.django_db


def post(message: TaskMessage, cloudtasks_headers: dict[str, str] | None = None) -> Any:
    """POST a message to the endpoint as Cloud Tasks would (encode_message signed it)."""
    headers = {k: v for k, v in message.headers.items() if k != "Content-Type"}
    return Client().post(
        "/_tasks/",
        data=message.body,
        content_type=message.headers["Content-Type"],
        headers={**headers, **(cloudtasks_headers or {})},
    )


def test_decorating_registers_the_task_by_module_path() -> None:
    entry = registry.get("tests.djangotasks.tasks.add")
    assert isinstance(entry, DjangoTaskAdapter)
    assert entry.func is add.func
    assert entry.task is add
    runnable: Runnable = entry  # what the executor runs
    assert runnable.name == add.module_path


def test_using_copies_keep_the_declared_task() -> None:
    add.using(queue_name="emails")
    assert registry.get(add.module_path).task is add


def test_decorating_the_same_function_again_is_not_a_clash() -> None:
    func: Any = tasks.add.func  # the function as written, with its context parameter
    again = task(takes_context=True)(func)
    assert again.module_path == add.module_path
    assert registry.get(add.module_path).func is add.func


def test_a_delivery_runs_with_the_attempt_cloud_tasks_reports(runs: Runs) -> None:
    message = encode_message(
        add.module_path, "default", None, [4], {"b": 1}, label="add", task_id="t-42"
    )
    response = post(
        message,
        {
            "X-CloudTasks-TaskName": "t-42",
            "X-CloudTasks-QueueName": "default",
            "X-CloudTasks-TaskRetryCount": "2",
        },
    )

    assert response.status_code == 200
    (run,) = runs.of("add")
    assert (run["a"], run["b"], run["task_id"], run["attempt"]) == (4, 1, "t-42", 3)


def test_arguments_that_do_not_fit_are_answered_400(runs: Runs) -> None:
    message = encode_message(send_welcome.module_path, "emails", None, [], {}, label="x")
    assert post(message).status_code == 400
    assert runs.of("send_welcome") == []


def test_an_unregistered_path_is_404_and_never_imported() -> None:
    path = "tests.djangotasks.never_imported.run"
    message = encode_message(path, "default", None, [], {}, label="run")
    assert post(message).status_code == 404
    assert "tests.djangotasks.never_imported" not in sys.modules


def test_cloudtask_tasks_lists_django_tasks_with_seed_tasks() -> None:
    out = io.StringIO()
    call_command("cloudtask_tasks", stdout=out)
    assert "  tests.djangotasks.tasks.send_welcome  queue=emails\n" in out.getvalue()
    assert "  tests.tasks.add  queue=default" in out.getvalue()
