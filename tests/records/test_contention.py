"""A retry's claim while another connection writes: it waits for that write, as a lone write
waits on the database's busy timeout, and never fails with "database is locked".

SQLite has no row locks: a transaction that reads and then writes cannot wait for another
connection's write (waiting could deadlock), so SQLite fails it at once. A retry's claim reads
its record and then updates it; before it took the write lock first, a delivery of another
task writing in between turned the retry into a 500 (seen in CI).

The timing is placed with Django's execute_wrapper on the claim's connection: another
connection takes the write lock right after the claim's INSERT finds the id taken, and commits
once the claim's transaction has read (or, leading with a write, has asked for the lock).
PostgreSQL locks rows, so there the other write never stands in the way; the test runs on both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from cloudtask import records
from cloudtask.models import TaskExecution
from tests.models import TaskRecord

from .conftest import WAIT, unique

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = timedelta(seconds=30)


@contextmanager
def another_write_after_the_claims_insert(label: str) -> Iterator[None]:
    """Another connection writes a TaskRecord labelled label from the statement after this
    thread's next INSERT until this thread's next read or write, and commits then."""
    take_lock, holding, release = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_delivery() -> None:
        try:
            assert take_lock.wait(WAIT)
            with transaction.atomic():
                TaskRecord.objects.create(label=label)
                holding.set()
                assert release.wait(WAIT)
        except BaseException as exc:
            errors.append(exc)
            holding.set()
        finally:
            connection.close()

    inserted = False

    def between(execute: Callable[..., Any], sql: str, *rest: Any) -> Any:
        nonlocal inserted
        verb = sql.split(None, 1)[0].upper()
        # The statement after the INSERT: the INSERT's cursor is closed, its write committed.
        if inserted and not take_lock.is_set():
            take_lock.set()
            assert holding.wait(WAIT)
        inserted = inserted or verb == "INSERT"
        if verb == "UPDATE" and holding.is_set():
            release.set()  # a write waits for the other one: let it commit
        result = execute(sql, *rest)
        if verb == "SELECT" and holding.is_set():
            release.set()  # commit while this transaction has read
        return result

    writer = threading.Thread(target=other_delivery)
    writer.start()
    try:
        with connection.execute_wrapper(between):
            yield
    finally:
        take_lock.set()
        release.set()
        writer.join(WAIT)
    assert errors == []
    assert TaskRecord.objects.filter(label=label).exists()


def test_a_retry_claimed_while_another_connection_writes_waits_for_it_and_runs() -> None:
    task_id = unique("contended")
    started = timezone.now()
    records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=started)
    # The first attempt's process died: its lease ran out, and Cloud Tasks retries.
    retried = started + LEASE + timedelta(seconds=1)
    with another_write_after_the_claims_insert(f"other-{task_id}"):
        held = records.claim(
            task_id, "shop.tasks.charge", "orders", LEASE, retry_count=1, now=retried
        )
    assert held.run and held.attempts == 2
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts, row.lease_until) == ("running", 2, retried + LEASE)
