"""Tasks the schedules tests fire (registered when this module is imported)."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

from cloudtask import CloudTaskRequest, task

#: What the tasks saw, in order.
RUNS: list[dict[str, Any]] = []
RUN_EVENT = threading.Condition()


def _record(label: str, request: CloudTaskRequest, **values: Any) -> None:
    with RUN_EVENT:
        RUNS.append(
            {
                "label": label,
                "task_id": request.task_id,
                "queue_name": request.queue_name,
                "schedule_name": request.schedule_name,
                "schedule_time": request.schedule_time,
                "user_agent": request.headers.get("User-Agent"),
                **values,
            }
        )
        RUN_EVENT.notify_all()


@task(name="schedules.report")
def report(request: CloudTaskRequest, day: date, *, kind: str = "daily") -> str:
    _record("report", request, day=day, kind=kind)
    return f"{kind} report for {day}"


@task(name="schedules.cleanup")
def cleanup(request: CloudTaskRequest) -> None:
    _record("cleanup", request)
