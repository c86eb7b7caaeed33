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


# -- execution records, idempotent delivery, dead letters (tests/records) --

#: Opened by a test to let a records_blocking run finish.
RECORDS_GATE = threading.Event()


def record_delivery(label: str, request: CloudTaskRequest, **values: Any) -> None:
    """record(), plus the raw body, so a test can replay the very request that was delivered."""
    record(label, request, task_id=request.task_id, body=request.body, **values)


@task
def records_returns(request: CloudTaskRequest, kind: str) -> Any:
    """Returns a value JSON can hold ("json") or one it cannot ("timedelta")."""
    record_delivery("records_returns", request, kind=kind)
    if kind == "timedelta":
        return timedelta(seconds=90)
    return {"kind": kind, "items": [1, 2, 3]}


@task
def records_fails_twice(request: CloudTaskRequest, key: str) -> str:
    """Fails with ValueError, then KeyError, then succeeds."""
    record_delivery("records_fails_twice", request, key=key)
    if request.retry_count == 0:
        raise ValueError(f"{key}: first attempt")
    if request.retry_count == 1:
        raise KeyError(f"{key}: second attempt")
    return "third time lucky"


@task(dispatch_deadline=15)
def records_ping(request: CloudTaskRequest, key: str) -> str:
    """Runs once per delivery; its 15 s deadline (Cloud Tasks' minimum) is its lease."""
    record_delivery("records_ping", request, key=key)
    return key


@task(dispatch_deadline=15)
def records_blocking(request: CloudTaskRequest, key: str) -> str:
    """Holds its delivery open until RECORDS_GATE opens (at most 30 s)."""
    record_delivery("records_blocking", request, key=key)
    RECORDS_GATE.wait(timeout=30)
    return key


@task(max_attempts=3)
def records_dead_end(request: CloudTaskRequest, key: str) -> None:
    record_delivery("records_dead_end", request, key=key)
    raise RuntimeError(f"{key}: attempt {request.retry_count + 1} failed")


@task(atomic=True, dispatch_deadline=15)
def records_atomic_write(request: CloudTaskRequest, key: str) -> str:
    """Writes a TaskRecord in the transaction that records its success."""
    record_delivery("records_atomic_write", request, key=key)
    TaskRecord.objects.create(label=key)
    return key


@task(dispatch_deadline=15)
def records_plain_write(request: CloudTaskRequest, key: str) -> str:
    """Writes a TaskRecord in autocommit: kept even if the success record is never written."""
    record_delivery("records_plain_write", request, key=key)
    TaskRecord.objects.create(label=key)
    return key


@task(atomic=True, dispatch_deadline=15)
def records_atomic_slow(request: CloudTaskRequest, key: str) -> str:
    """atomic=True; its first attempt waits for RECORDS_GATE (at most 30 s) before writing."""
    record_delivery("records_atomic_slow", request, key=key)
    if request.retry_count == 0:
        RECORDS_GATE.wait(timeout=30)
    TaskRecord.objects.create(label=key)
    return key
