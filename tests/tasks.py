"""Tasks of the `tests` app (autodiscovered at start-up). Grouped by the suite that uses them."""

from __future__ import annotations

import functools
import threading
from datetime import timedelta
from typing import Any

from cloudtask import ARGS_HASH, CloudTaskRequest, Discard, Retry, task

from .models import Order, TaskRecord

# -- core API (tests/api) --

#: What api tasks saw when they ran: (task label, request attributes, arguments).
RUNS: list[dict[str, Any]] = []
RUNS_LOCK = threading.Lock()
RUN_EVENT = threading.Condition(RUNS_LOCK)


def record(label: str, request: CloudTaskRequest, **values: Any) -> None:
    entry = {
        "label": label,
        "queue_name": request.queue_name,
        "task_name": request.task_name,
        "retry_count": request.retry_count,
        "execution_count": request.execution_count,
        "eta": request.eta,
        "is_local": request.is_local,
        "headers": dict(request.headers),
        **values,
    }
    with RUN_EVENT:
        RUNS.append(entry)
        RUN_EVENT.notify_all()


@task(queue="default")
def add(request: CloudTaskRequest, a: int = 5, b: int = 4) -> int:
    record("add", request, a=a, b=b)
    return a + b


@task
def echo(request: CloudTaskRequest, *args: Any, **kwargs: Any) -> None:
    record("echo", request, args=args, kwargs=kwargs)


@task()
def touch_order(request: CloudTaskRequest, order: Order, note: str) -> None:
    order.note = note
    order.save(update_fields=["note"])
    record("touch_order", request, order_id=order.pk, status=order.status)


@task(named=True)
def clean_expired(request: CloudTaskRequest) -> None:
    record("clean_expired", request)


@task(named=ARGS_HASH)
def once_per_args(request: CloudTaskRequest, key: str, n: int = 0) -> None:
    record("once_per_args", request, key=key, n=n)


@task(named="fixed-name-task", queue="other-queue")
def fixed_name(request: CloudTaskRequest) -> None:
    record("fixed_name", request)


@task(name="api.renamed")
def renamed(request: CloudTaskRequest) -> str:
    record("renamed", request)
    return "renamed"


@task
def discard_me(request: CloudTaskRequest, reason: str) -> None:
    record("discard_me", request)
    raise Discard(reason)


@task
def retry_me(request: CloudTaskRequest, until: int = 1) -> None:
    """Asks for a retry until retry_count reaches until."""
    record("retry_me", request)
    if request.retry_count < until:
        raise Retry("not yet", after=timedelta(seconds=1))


@task(max_attempts=2)
def always_fails(request: CloudTaskRequest) -> None:
    record("always_fails", request)
    raise ValueError("boom")


@task
def fails_once(request: CloudTaskRequest) -> str:
    record("fails_once", request)
    if request.retry_count == 0:
        raise KeyError("first attempt fails")
    return "ok"


@task(headers={"X-Custom": "yes"}, dispatch_deadline=60)
def with_headers(request: CloudTaskRequest) -> None:
    record("with_headers", request, custom=request.headers.get("X-Custom"))


@task
def write_record(request: CloudTaskRequest, label: str, payload: dict[str, Any]) -> None:
    TaskRecord.objects.create(label=label, payload=payload)


def logged(func: Any) -> Any:
    """Another library's decorator around a task function (it keeps the signature visible)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@task
@logged
def wrapped_add(request: CloudTaskRequest, a: int, b: int) -> int:
    record("wrapped_add", request, a=a, b=b)
    return a + b


@task
def raises_type_error(request: CloudTaskRequest) -> None:
    """A TypeError raised inside the task is a task failure, not an argument mismatch."""
    record("raises_type_error", request)
    raise TypeError("a bug in the task")


@task
async def async_add(request: CloudTaskRequest, a: int, b: int) -> int:
    record("async_add", request, a=a, b=b)
    return a + b
