"""Seed-API tasks for the dead-letter tests: one that fails for good while BROKEN is set."""

from __future__ import annotations

import threading
from typing import Any

from cloudtask import CloudTaskRequest, task

#: While set, mended() fails on its only attempt (max_attempts=1): a dead letter.
BROKEN = threading.Event()
#: One entry per run that succeeded: (task id, the arguments).
RUNS: list[tuple[str | None, Any]] = []


@task(max_attempts=1, headers={"X-Shop-Tenant": "acme"})
def mended(request: CloudTaskRequest, order_id: int, note: str = "") -> str:
    if BROKEN.is_set():
        raise ConnectionError(f"order {order_id}: the warehouse API is down")
    RUNS.append((request.task_id, {"order_id": order_id, "note": note}))
    return f"order {order_id} shipped"
