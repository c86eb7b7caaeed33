"""atomic=True: the function and its "succeeded" record commit in one transaction, so its
database effects happen once even when the success could not be recorded.

The fault: recording success fails once (records.finish raises) after the function returned.
No real part fails there on demand, so it is injected; a process killed at that very point is
tested in test_crash.py. Both tasks below meet the same fault, delivered by the emulator:

* atomic=True: the task's write rolls back with the failed record, the attempt is recorded as
  failed and answered 500, Cloud Tasks retries at once, and the retry runs it again: two runs,
  one write.
* atomic=False: the write was already committed; the record still says "running" under the
  delivery's lease (as after a process death), so Cloud Tasks' retries are answered 503 until
  the lease (the 15 s dispatch deadline) runs out; then it runs again: two runs, two writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtask import records
from cloudtask.models import TaskExecution
from tests.models import TaskRecord
from tests.tasks import records_atomic_write, records_plain_write

from .conftest import WAIT, poll, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)

#: The tasks' dispatch deadline, and so their lease.
DEADLINE = 15


class InjectedFault(Exception):
    """Recording success failed (a dropped connection, a full disk, a killed process)."""


@pytest.fixture
def success_not_recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """records.finish raises once per claim when it would record success; the claims it
    failed."""
    real = records.finish
    failed: list[int] = []
    lock = threading.Lock()

    def finish(held: records.Claim, status: str, **kwargs: Any) -> Any:
        with lock:
            fail = status == "succeeded" and held.pk not in failed
            if fail:
                failed.append(held.pk)  # type: ignore[arg-type]
        if fail:
            raise InjectedFault("the success record could not be written")
        return real(held, status, **kwargs)

    monkeypatch.setattr(records, "finish", finish)
    yield failed


def test_atomic_effects_happen_once_where_plain_ones_happen_twice(
    delivering: Any, runs: Any, success_not_recorded: list[int]
) -> None:
    atomic_id, plain_id = unique("atomic"), unique("plain")
    atomic_key, plain_key = f"write-{atomic_id}", f"write-{plain_id}"
    records_atomic_write(atomic_key).delay(task_id=atomic_id)
    records_plain_write(plain_key).delay(task_id=plain_id)

    # atomic=True: the failed record took the write with it; the retry came at once.
    runs.wait("records_atomic_write", 2)
    assert statuses(delivering, atomic_id, 2) == [500, 200]
    row = poll(lambda: TaskExecution.objects.filter(task_id=atomic_id, status="succeeded").first())
    assert TaskRecord.objects.filter(label=atomic_key).count() == 1
    assert row.attempts == 2
    (error,) = row.errors
    assert error["exception_class"] == f"{__name__}.InjectedFault"

    # atomic=False: the write stayed, and the lease kept the retries away until it ran out.
    runs.wait("records_plain_write", 2, timeout=DEADLINE + WAIT)
    plain = statuses(delivering, plain_id, 3)
    assert plain[0] == 500 and plain[-1] == 200
    assert set(plain[1:-1]) == {503}  # "running elsewhere; try later", with Retry-After
    row = poll(lambda: TaskExecution.objects.filter(task_id=plain_id, status="succeeded").first())
    assert TaskRecord.objects.filter(label=plain_key).count() == 2
    assert row.attempts == 2
    assert row.errors == []  # the first attempt's outcome was never recorded
    assert len(success_not_recorded) == 2
