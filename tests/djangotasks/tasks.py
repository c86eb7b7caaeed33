"""Module-level django.tasks tasks (Django validates them against TASKS["default"], the
CloudTasksBackend, when this module is imported) and what they saw when they ran."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.utils import timezone

from cloudtask import Discard
from cloudtask.backends import TaskContext, task

#: One entry per run, from any thread (the live server's included).
RUNS: list[dict[str, Any]] = []
RUN_EVENT = threading.Condition()


def record(label: str, context: TaskContext | None = None, **values: Any) -> None:
    entry: dict[str, Any] = {"label": label, "at": timezone.now(), **values}
    if context is not None:
        result = context.task_result
        entry.update(
            task_id=result.id,
            attempt=context.attempt,
            status=result.status,
            backend=result.backend,
        )
    with RUN_EVENT:
        RUNS.append(entry)
        RUN_EVENT.notify_all()


@task(takes_context=True)
def add(context: TaskContext, a: int, b: int = 0) -> int:
    record("add", context, a=a, b=b)
    return a + b


@task(queue_name="emails")
def send_welcome(address: str, *, name: str = "") -> None:
    record("send_welcome", address=address, name=name)


@task
def echo(*args: Any, **kwargs: Any) -> None:
    record("echo", args=args, kwargs=kwargs)


@task(takes_context=True)
def fails_first_attempt(context: TaskContext, key: str) -> str:
    record("fails_first_attempt", context, key=key)
    if context.attempt == 1:
        raise RuntimeError(f"attempt 1 of {key} fails")
    return key


@task
def explode(message: str) -> None:
    record("explode", message=message)
    raise ValueError(message)


@task
def discard_me(reason: str) -> None:
    record("discard_me", reason=reason)
    raise Discard(reason)


@task(takes_context=True)
async def async_add(context: TaskContext, a: int, b: int = 0) -> int:
    await asyncio.sleep(0)  # a real suspension point: this needs a running event loop
    record("async_add", context, a=a, b=b)
    return a + b
