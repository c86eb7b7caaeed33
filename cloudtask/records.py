"""Execution records and dead letters: what ran, once, and what failed for good.

The executor claims a task id before running it and settles the claim after, each in a short
write of its own (an INSERT for a first delivery, or a locked UPDATE for a retry, then one UPDATE
at the end), so a delivery costs two small writes. A failed-for-good delivery also writes a
DeadLetter row with its raw body, headers and errors.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .conf import get_settings
from .models import DeadLetter, TaskExecution

__all__ = [
    "DEFAULT_LEASE",
    "Claim",
    "claim",
    "dead_letter",
    "enabled",
    "error_entry",
    "finish",
    "lookup",
    "prune",
    "records_database",
]

#: Cloud Tasks' default dispatch deadline for HTTP targets: a delivery's lease lasts this long
#: unless the task (or CLOUDTASK["DISPATCH_DEADLINE"]) sets its own.
DEFAULT_LEASE = timedelta(minutes=10)
_FINISHED = frozenset(
    {
        TaskExecution.Status.SUCCEEDED,
        TaskExecution.Status.DISCARDED,
        TaskExecution.Status.DEAD,
    }
)


def enabled() -> bool:
    return get_settings().records


def records_database() -> str:
    """The database execution records and dead letters are written to (the router's choice)."""
    return router.db_for_write(TaskExecution)


@dataclass
class Claim:
    """The executor's hold on one task id for one delivery."""

    #: Run the function (False: a duplicate, or busy elsewhere).
    run: bool
    pk: int | None = None
    attempts: int = 0
    #: Errors of earlier attempts (appended to at the end).
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Not run because the id already finished with this status.
    finished_status: str | None = None
    #: Not run because another delivery of the id holds a live lease: seconds it has left.
    busy_for: float | None = None


def claim(
    task_id: str,
    task_name: str,
    queue: str,
    lease: timedelta,
    eta: datetime | None = None,
    retry_count: int = 0,
    now: datetime | None = None,
) -> Claim:
    """Take task_id for this delivery, or say why it must not run.

    A finished record met by a first attempt (retry count 0) with another ETA is a new task
    reusing the id (a named task, once Cloud Tasks' dedup window let its name go): it runs, on a
    fresh record. Every other delivery of a finished id is a duplicate: a retry after a lost
    answer (retry count > 0, whatever its ETA, which Cloud Tasks moves on retries) or a replayed
    request (the same headers).
    """
    now = now or timezone.now()
    db = records_database()
    fields = {
        "task_name": task_name,
        "queue": queue,
        "status": TaskExecution.Status.RUNNING,
        "attempts": 1,
        "first_started_at": now,
        "last_started_at": now,
        "lease_until": now + lease,
        "eta": eta,
    }
    try:
        # The common case, a first delivery: one INSERT. Inside a caller's transaction (an
        # in-process delivery) a savepoint keeps a duplicate-key error from breaking it.
        if connections[db].in_atomic_block:
            with transaction.atomic(using=db):
                row = TaskExecution.objects.using(db).create(task_id=task_id, **fields)
        else:
            row = TaskExecution.objects.using(db).create(task_id=task_id, **fields)
        return Claim(run=True, pk=row.pk, attempts=1)
    except IntegrityError:
        pass  # a retry, a duplicate, or a concurrent delivery of the same id
    with transaction.atomic(using=db):
        row = TaskExecution.objects.using(db).select_for_update().get(task_id=task_id)
        if row.status in _FINISHED and (retry_count > 0 or _same_task(row.eta, eta)):
            return Claim(run=False, pk=row.pk, finished_status=row.status)
        if row.status in _FINISHED:
            # A new task that reuses a finished task's id: a fresh record.
            for name, value in fields.items():
                setattr(row, name, value)
            row.finished_at = row.duration = row.return_value = None
            row.return_repr = row.error_type = row.error_message = row.traceback = ""
            row.errors = []
            row.save(using=db)
            return Claim(run=True, pk=row.pk, attempts=1)
        if row.status == TaskExecution.Status.RUNNING and row.lease_until and row.lease_until > now:
            return Claim(run=False, pk=row.pk, busy_for=(row.lease_until - now).total_seconds())
        row.status = TaskExecution.Status.RUNNING
        row.attempts += 1
        row.last_started_at = now
        row.lease_until = now + lease
        row.save(using=db, update_fields=["status", "attempts", "last_started_at", "lease_until"])
        return Claim(run=True, pk=row.pk, attempts=row.attempts, errors=list(row.errors))


def _same_task(recorded: datetime | None, delivered: datetime | None) -> bool:
    """Whether two deliveries' ETAs say they are one task (unknown ETAs: assume so)."""
    if recorded is None or delivered is None:
        return True
    return abs((recorded - delivered).total_seconds()) < 0.001


def error_entry(exc: BaseException, attempt: int, at: datetime) -> dict[str, Any]:
    """One failed attempt, as records and dead letters keep it."""
    kind = type(exc)
    return {
        "attempt": attempt,
        "at": at.isoformat(),
        "exception_class": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-20000:],
    }


def _json_value(value: Any) -> tuple[Any, str]:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None, repr(value)[:2000]
    return value, ""


def finish(
    held: Claim,
    status: str,
    *,
    duration: float,
    value: Any = None,
    error: BaseException | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]] | None:
    """Settle a claim with the attempt's outcome (one UPDATE); the errors it now holds, or None
    when the claim was lost: the attempt outlived its lease and a newer attempt took the id."""
    now = now or timezone.now()
    update: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "duration": duration,
        "lease_until": None,
    }
    errors = held.errors
    if error is not None:
        kind = type(error)
        entry = error_entry(error, held.attempts, now)
        errors = [*held.errors, entry]
        update.update(
            error_type=f"{kind.__module__}.{kind.__qualname__}",
            error_message=entry["message"],
            traceback=entry["traceback"],
            errors=errors,
        )
    else:
        update["return_value"], update["return_repr"] = _json_value(value)
    assert held.pk is not None, "only a claim that ran is finished"
    settled = (
        TaskExecution.objects.using(records_database())
        .filter(pk=held.pk, attempts=held.attempts)
        .update(**update)
    )
    return errors if settled else None


def dead_letter(
    *,
    reason: str,
    task_id: str,
    task_name: str,
    queue: str,
    body: bytes,
    headers: Mapping[str, str],
    attempts: int,
    errors: list[dict[str, Any]],
) -> DeadLetter:
    """Keep a delivery that failed for good, with its raw body, headers and every error."""
    return DeadLetter.objects.using(records_database()).create(
        created_at=timezone.now(),
        reason=reason,
        task_id=task_id,
        task_name=task_name[:500],
        queue=queue[:100],
        body=body,
        headers=dict(headers),
        attempts=attempts,
        errors=errors,
    )


def lookup(task_id: str) -> TaskExecution | None:
    """The execution record of task_id, if it ran (or runs) with records on."""
    return TaskExecution.objects.using(records_database()).filter(task_id=task_id).first()


def prune(older_than: timedelta | None = None, now: datetime | None = None) -> tuple[int, int]:
    """Delete finished records and dead letters older than the retention; (records, letters)."""
    if older_than is None:
        days = get_settings().records_retention
        if days == 0:
            return 0, 0
        older_than = timedelta(days=days)
    cutoff = (now or timezone.now()) - older_than
    db = records_database()
    records, _ = (
        TaskExecution.objects.using(db)
        .filter(last_started_at__lt=cutoff)
        .exclude(status=TaskExecution.Status.RUNNING)
        .delete()
    )
    letters, _ = DeadLetter.objects.using(db).filter(created_at__lt=cutoff).delete()
    return records, letters
