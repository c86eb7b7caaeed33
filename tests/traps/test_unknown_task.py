"""Trap: a task defined outside an app's tasks.py, which nothing imported.

The endpoint answers 404 (a deploy may be rolling out the code that has the task) and says which
tasks modules discovery imported and how to register another; it never imports the name.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from django.test import Client

from cloudtask import registry
from cloudtask.encoding import encode_message
from cloudtask.models import DeadLetter

HINT = (
    "Task discovery imported these tasks modules: tests.tasks. A task defined in any other "
    "module is registered only once that module is imported: import it from its app's tasks.py "
    "(from . import jobs) or from the app's AppConfig.ready()."
)
ERROR = f"No task is registered as 'nowhere_shop.jobs.ping'. {HINT}"


def deliver_unknown(retry_count: int = 0) -> Any:
    message = encode_message("nowhere_shop.jobs.ping", "default", None, (), {}, label="ping")
    return Client().post(
        "/_tasks/",
        data=message.body,
        content_type="application/json",
        headers={**message.headers, "X-CloudTasks-TaskRetryCount": str(retry_count)},
    )


def test_discovery_imported_the_tasks_module_of_each_app_that_has_one() -> None:
    assert registry.discovered_modules() == ("tests.tasks",)


def test_the_404_and_the_log_name_the_discovered_modules(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudtask"):
        response = deliver_unknown()
    assert (response.status_code, response.content.decode()) == (404, f"unknown task: {ERROR}")
    assert [r.getMessage() for r in caplog.records if r.name == "cloudtask"] == [ERROR]
    assert "nowhere_shop" not in sys.modules  # the name from the request was never imported


@pytest.mark.django_db
def test_dead_lettering_keeps_the_hint(caplog: Any) -> None:
    with caplog.at_level(logging.ERROR, logger="cloudtask"):
        response = deliver_unknown(retry_count=9)  # the 10th delivery: UNKNOWN_TASK_ATTEMPTS
    assert (response.status_code, response.content) == (
        200,
        b"unknown task; dead-lettered, not retried",
    )
    assert [r.getMessage() for r in caplog.records if r.name == "cloudtask"] == [
        f"Dead-lettered task 'nowhere_shop.jobs.ping' after 10 deliveries: {ERROR}"
    ]
    (letter,) = DeadLetter.objects.all()
    assert letter.errors[0]["message"] == ERROR


def test_without_authentication_the_404_keeps_the_module_names_in_the_log(
    settings: Any, caplog: Any
) -> None:
    # ALLOW_UNAUTHENTICATED: anyone may have sent it, and the project's modules are not theirs
    # to read. The log still says everything.
    settings.CLOUDTASK = {**settings.CLOUDTASK, "SECRET": None, "ALLOW_UNAUTHENTICATED": True}
    with caplog.at_level(logging.WARNING, logger="cloudtask"):
        response = deliver_unknown()
    assert (response.status_code, response.content.decode()) == (
        404,
        "unknown task; see the log for why",
    )
    assert ERROR in [r.getMessage() for r in caplog.records if r.name == "cloudtask"]
    assert "tests.tasks" not in response.content.decode()
