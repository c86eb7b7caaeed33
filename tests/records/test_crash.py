"""A process killed between a task's function and its "succeeded" record (SIGKILL, in a second
process on the same database: tests/records/crash_child.py).

With atomic=True the function's writes and the record are one transaction that never
committed: the database itself undoes the writes (PostgreSQL when the connection drops, SQLite
from its journal), and the next delivery runs the task again; its writes happen once. With
atomic=False the writes were committed before the record: the next delivery runs the task again
and they happen twice. Either way the claim (its own short transaction, committed before the
function ran) holds the task id for the delivery's lease, so a redelivery is first told to come
back later.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from cloudtask.models import TaskExecution
from tests.models import TaskRecord
from tests.tasks import records_atomic_write, records_plain_write

from .conftest import WAIT, delivery, replay, unique

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def killed_before_the_record(request: dict[str, Any]) -> None:
    """Deliver request in a second process, which dies before recording success."""
    headers = {k: v for k, v in request["headers"].items() if k.lower() != "content-type"}
    config = {
        # pytest-django renamed the connection to the test database; the child gets that name.
        "database": str(connections["default"].settings_dict["NAME"]),
        "body": request["body"].decode(),
        "headers": headers,
    }
    child = subprocess.run(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "tests.records.crash_child", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr


@pytest.mark.parametrize(
    ("task", "writes_before", "writes_after"),
    [(records_atomic_write, 0, 1), (records_plain_write, 1, 2)],
    ids=["atomic", "plain"],
)
def test_a_process_killed_between_function_and_record(
    live_server: Any, runs: Any, task: Any, writes_before: int, writes_after: int
) -> None:
    task_id = unique("crash")
    key = f"write-{task_id}"
    killed_before_the_record(delivery(task(key), task_id, attempt=1))

    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts) == ("running", 1)
    assert row.lease_until is not None and row.lease_until > timezone.now()
    assert TaskRecord.objects.filter(label=key).count() == writes_before

    # Cloud Tasks saw the connection drop and delivers again: within the lease (the dispatch
    # deadline: the dead process might still have been running) it is told to come back.
    url = str(live_server.url) + "/_tasks/"
    retry = delivery(task(key), task_id, attempt=2)
    busy = replay(url, retry)
    assert (busy.status, busy.text) == (503, "running elsewhere; try later")
    assert not runs.of(task.func.__name__)

    # 15 s later the lease has run out (moved into the past here rather than waited for).
    TaskExecution.objects.filter(pk=row.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    answer = replay(url, retry)

    assert answer.status == 200
    assert len(runs.of(task.func.__name__)) == 1
    assert TaskRecord.objects.filter(label=key).count() == writes_after
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("succeeded", 2)
