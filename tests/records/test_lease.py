"""The lease: a delivery holds its task id for the dispatch deadline. A task that runs past it
is given up by Cloud Tasks, which delivers it again; the redelivery finds the lease run out and
runs the task while the first attempt still runs.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from cloudtask.models import TaskExecution
from tests.models import TaskRecord
from tests.tasks import records_atomic_slow

from .conftest import WAIT, Answer, delivery, replay, unique

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_atomic_attempt_that_outlived_its_lease_does_not_commit(
    live_server: Any, gate: threading.Event, runs: Any
) -> None:
    task_id = unique("outlived")
    key = f"write-{task_id}"
    url = str(live_server.url) + "/_tasks/"
    first: list[Answer] = []
    thread = threading.Thread(
        target=lambda: first.append(replay(url, delivery(records_atomic_slow(key), task_id, 1)))
    )
    thread.start()
    try:
        runs.wait("records_atomic_slow")  # the first attempt runs, still before its write
        # Its 15 s deadline passes (moved into the past here rather than waited for): Cloud
        # Tasks gives up on it and delivers again; the second attempt runs and succeeds.
        TaskExecution.objects.filter(task_id=task_id).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        second = replay(url, delivery(records_atomic_slow(key), task_id, 2))
        assert second.status == 200
        assert TaskRecord.objects.filter(label=key).count() == 1
    finally:
        gate.set()
        thread.join(WAIT)
    # The first attempt now finishes: its write must not commit, the record must stay the
    # second attempt's.
    assert len(runs.of("records_atomic_slow")) == 2
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert TaskRecord.objects.filter(label=key).count() == 1
    assert first and first[0].status == 200
