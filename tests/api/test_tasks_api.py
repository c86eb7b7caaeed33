"""The task API: declaring, registering, calling, sending and running tasks inline."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cloudtask
from cloudtask import (
    CloudTaskRequest,
    InvalidTaskCall,
    Task,
    TaskCall,
    TaskHandle,
    TaskRegistrationError,
    registry,
    task,
)
from tests import tasks as test_tasks
from tests.tasks import add, renamed, with_headers

pytestmark = pytest.mark.django_db


@pytest.fixture
def scratch() -> Any:
    """Unregister tasks a test declares."""
    before = {t.name for t in registry.all_tasks()}
    yield
    for t in registry.all_tasks():
        if t.name not in before:
            registry.unregister(t.name)


def test_tasks_modules_are_autodiscovered() -> None:
    assert registry.get("tests.tasks.add") is add
    assert registry.get("api.renamed") is renamed


def test_decorator_forms(scratch: None) -> None:
    @task
    def bare(request: CloudTaskRequest) -> int:
        return 1

    @task()
    def empty(request: CloudTaskRequest) -> int:
        return 2

    @task(name="custom.name", queue="q-1", url="https://x.test/t/", max_attempts=3)
    def full(request: CloudTaskRequest, x: int) -> int:
        return x

    assert isinstance(bare, Task) and isinstance(empty, Task)
    assert bare.name == f"{__name__}.test_decorator_forms.<locals>.bare"
    assert (full.name, full.queue, full.url, full.max_attempts) == (
        "custom.name",
        "q-1",
        "https://x.test/t/",
        3,
    )
    assert full.__name__ == "full" and full.__wrapped__ is not None  # type: ignore[attr-defined]
    assert bare().execute() == 1 and empty()() == 2 and full(7).execute() == 7


def test_two_tasks_with_one_name_fail_at_import(scratch: None) -> None:
    @task(name="api.clash")
    def first(request: CloudTaskRequest) -> None:
        pass

    with pytest.raises(TaskRegistrationError, match=r"Two tasks are registered as 'api\.clash'"):

        @task(name="api.clash")
        def second(request: CloudTaskRequest) -> None:
            pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": "bad_queue"}, "queue id 'bad_queue' is invalid"),
        ({"named": "bad name"}, "task id 'bad name' is invalid"),
        ({"named": 5}, "named= must be True, False, a task id or cloudtask.ARGS_HASH"),
        ({"max_attempts": 0}, "max_attempts= must be a positive integer"),
        ({"dispatch_deadline": timedelta(hours=1)}, "Cloud Tasks accepts 15 s to 30 minutes"),
        ({"headers": {"Authorization": "x"}}, "header 'Authorization' is set by cloudtask"),
        ({"url": ""}, "url= must be a non-empty string"),
    ],
)
def test_bad_declarations_fail_at_decoration(
    scratch: None, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaskRegistrationError, match=message.replace("(", r"\(")):

        @task(**options)
        def t(request: CloudTaskRequest) -> None:
            pass


def test_a_task_needs_a_request_parameter(scratch: None) -> None:
    with pytest.raises(
        TaskRegistrationError, match="first parameter receives the CloudTaskRequest"
    ):

        @task  # type: ignore[arg-type]
        def no_request() -> None:
            pass


def test_calling_a_task_returns_a_call() -> None:
    call = add(1, b=2)
    assert isinstance(call, TaskCall)
    assert (call.task, call.args, call.kwargs) == (add, (1,), {"b": 2})
    assert call.queue == "default"
    assert call.url is None


def test_wrong_arguments_fail_at_the_call() -> None:
    with pytest.raises(InvalidTaskCall, match="add\\(\\): got an unexpected keyword argument 'c'"):
        add(c=3)  # type: ignore[call-arg]
    with pytest.raises(InvalidTaskCall, match="too many positional arguments"):
        add(1, 2, 3)  # type: ignore[call-arg]


def test_url_changes_per_call_queue_does_not(settings: Any) -> None:
    call = add()
    call.url = "https://elsewhere.test/_tasks/"
    assert call.encode().url == "https://elsewhere.test/_tasks/"
    assert add().encode().url == settings.CLOUDTASK["URL"]
    with pytest.raises(AttributeError):
        call.queue = "other"  # type: ignore[misc]


def test_default_queue_comes_from_settings(settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "QUEUE": "mail"}
    assert renamed().queue == "mail"
    assert renamed().encode().queue == "mail"
    assert add().queue == "default"


def test_encode_builds_the_message(settings: Any) -> None:
    message = with_headers().encode()
    assert message.task_name == "tests.tasks.with_headers"
    assert message.headers["Content-Type"] == "application/json"
    assert message.headers["X-Custom"] == "yes"
    assert message.headers["X-CloudTask-Signature"].startswith("sha256=")
    assert message.dispatch_deadline == timedelta(seconds=60)
    assert message.oidc_service_account == settings.CLOUDTASK["SAE"]
    assert message.task_id is None and message.schedule_time is None


def test_delay_returns_a_sent_handle(runs: Any) -> None:
    handle = add(a=1, b=2).delay()
    assert isinstance(handle, TaskHandle)
    assert handle.state == "sent" and handle.error is None
    assert handle.wait(0) is True
    assert handle.queue == "default"
    assert handle.name is not None and handle.name.endswith(f"/tasks/{handle.id}")


def test_a_failed_send_marks_the_handle(runs: Any) -> None:
    from cloudtask.dispatch import TaskHandle as Handle
    from cloudtask.dispatch import send

    call = test_tasks.always_fails()
    handle = Handle(call.encode(), call=call, sender=call.task)
    with pytest.raises(ValueError):
        send(handle)
    assert handle.state == "failed" and isinstance(handle.error, ValueError)
    assert handle.wait(0) is True


def test_execute_runs_inline_with_a_local_request(runs: Any) -> None:
    assert add(a=5, b=3).execute() == 8
    assert add(a=5, b=3)() == 8
    (run, _) = runs.of("add")
    assert run["is_local"] is True
    assert run["queue_name"] == "default"
    assert run["task_name"] is None
    assert (run["retry_count"], run["execution_count"]) == (0, 0)
    assert run["eta"].tzinfo is not None


def test_execute_propagates_exceptions() -> None:
    with pytest.raises(ValueError, match="boom"):
        test_tasks.always_fails().execute()


def test_public_names() -> None:
    for name in ("task", "Task", "TaskCall", "TaskHandle", "CloudTaskRequest", "ARGS_HASH"):
        assert name in cloudtask.__all__
    assert repr(cloudtask.ARGS_HASH) == "cloudtask.ARGS_HASH"
    assert repr(add) == "<Task tests.tasks.add>"
    assert repr(add(1, b=2)) == "<TaskCall tests.tasks.add(1, b=2)>"


def test_overlong_url_is_refused() -> None:
    call = add()
    call.url = "https://example.com/" + "x" * 2100
    with pytest.raises(InvalidTaskCall, match="Cloud Tasks accepts at most 2083"):
        call.delay()
