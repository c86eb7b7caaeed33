"""Record every task attempt in TaskLog, from cloudtask's signals.

The endpoint sends task_started just before a task runs and task_succeeded or task_failed right
after, on the same thread; the start time waits in a thread-local between the two.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from django.utils import timezone

from cloudtask import signals

from .models import TaskLog

_running = threading.local()


def _starts() -> dict[int, tuple[datetime, float]]:
    starts: dict[int, tuple[datetime, float]] | None = getattr(_running, "starts", None)
    if starts is None:
        starts = _running.starts = {}
    return starts


def on_started(sender: Any, request: Any, **kwargs: Any) -> None:
    _starts()[id(request)] = (timezone.now(), time.perf_counter())


def _record(sender: Any, request: Any, outcome: str, detail: str) -> None:
    started_at, t0 = _starts().pop(id(request), (timezone.now(), time.perf_counter()))
    TaskLog.objects.create(
        task=sender.name,
        task_id=request.task_name or "",
        queue=request.queue_name or "",
        attempt=request.retry_count + 1,
        outcome=outcome,
        started_at=started_at,
        duration_ms=(time.perf_counter() - t0) * 1000,
        delivered="inline" if request.is_local else "http",
        detail=detail[:2000],
    )


def on_succeeded(sender: Any, request: Any, result: Any = None, **kwargs: Any) -> None:
    _record(sender, request, TaskLog.Outcome.SUCCEEDED, "" if result is None else str(result))


def on_failed(
    sender: Any, request: Any, exception: BaseException, final: bool = True, **kwargs: Any
) -> None:
    outcome = TaskLog.Outcome.FAILED if final else TaskLog.Outcome.RETRYING
    _record(sender, request, outcome, f"{type(exception).__name__}: {exception}")


def connect() -> None:
    signals.task_started.connect(on_started, dispatch_uid="shop.tasklog.started")
    signals.task_succeeded.connect(on_succeeded, dispatch_uid="shop.tasklog.succeeded")
    signals.task_failed.connect(on_failed, dispatch_uid="shop.tasklog.failed")
