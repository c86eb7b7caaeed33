"""Execution records and dead letters: what ran, once, and what failed for good.

The executor claims a task id before running it and settles the claim after, each in a short
write of its own (an INSERT for a first delivery, or a locked UPDATE for a retry, then one UPDATE
at the end), so a delivery costs two small writes. A failed-for-good delivery also writes a
DeadLetter row with its raw body, headers and errors.

On PostgreSQL and SQLite the two writes of the common case (the claim's INSERT and the settling
UPDATE) are prebuilt SQL run through Django's cursor: the ORM's per-call work cost about as much
as the database round trips. Their values are adapted by the model's own fields, as the ORM
adapts them, but only the values a call gives: the INSERT leaves out the fields whose default
is NULL and sends the others' defaults adapted once, and the UPDATE writes a NULL as NULL.
On PostgreSQL a write that is a transaction of its own also commits without waiting for the
WAL flush (CLOUDTASK["RECORDS_SYNCHRONOUS_COMMIT"]; docs/exactly-once.md says what a database
crash can then lose). Other vendors, and the rare branches (a retry, a duplicate, a reused
id), go through the ORM.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Field, QuerySet
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
    connection = connections[db]
    # The common case, a first delivery: one INSERT. Inside a caller's transaction (an
    # in-process delivery) a savepoint keeps a failed INSERT from breaking it.
    if _prebuilt(connection):
        if connection.in_atomic_block:
            with transaction.atomic(using=db):
                pk = _insert(connection, {"task_id": task_id, **fields})
        else:
            pk = _insert(connection, {"task_id": task_id, **fields})
        if pk is not None:
            return Claim(run=True, pk=pk, attempts=1)
        # None: the id has a record (a retry, a duplicate, or a concurrent delivery of it).
    else:
        try:
            if connection.in_atomic_block:
                with transaction.atomic(using=db):
                    row = TaskExecution.objects.using(db).create(task_id=task_id, **fields)
            else:
                row = TaskExecution.objects.using(db).create(task_id=task_id, **fields)
            return Claim(run=True, pk=row.pk, attempts=1)
        except IntegrityError:
            pass  # a retry, a duplicate, or a concurrent delivery of the same id
    with transaction.atomic(using=db):
        rows = TaskExecution.objects.using(db).filter(task_id=task_id)
        _write_first(db, rows)  # the read below is followed by a write
        row = rows.select_for_update().get()
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


def _write_first(db: str, rows: QuerySet[TaskExecution]) -> None:
    """Open the current transaction with a write (to rows, changing nothing) on a database
    without row locks (SQLite), so what the transaction then reads and writes is safe.

    There a transaction that reads and then writes fails at once with "database is locked"
    when another connection wrote in between (waiting could deadlock), whereas one that writes
    first waits for the database's write lock on the busy timeout, like a lone write. The
    claim's transaction is a few statements long, so holding the lock from its start costs
    nothing. (An atomic=True task's transaction is left alone: holding the lock for a whole
    run would stop every other write on the site for that long; docs/exactly-once.md.)
    """
    if not connections[db].features.has_select_for_update:
        rows.update(attempts=F("attempts"))


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
    db = records_database()
    connection = connections[db]
    if _prebuilt(connection):
        settled = _update(connection, held.pk, held.attempts, update)
    else:
        settled = (
            TaskExecution.objects.using(db)
            .filter(pk=held.pk, attempts=held.attempts)
            .update(**update)
        )
    return errors if settled else None


# -- The two writes of a first delivery, as prebuilt SQL ---------------------------------------

#: Vendors whose claim INSERT and settling UPDATE skip the ORM. Both have INSERT ... ON CONFLICT
#: DO NOTHING RETURNING, so a claim is one statement, and an id that has a record already is no
#: error to catch but an INSERT that returns no row.
_PREBUILT_VENDORS = frozenset({"postgresql", "sqlite"})

#: Sets synchronous_commit for the statement's own transaction only (set_config's is_local is
#: SET LOCAL), from the statement's RETURNING list, which is evaluated before the statement's
#: implicit transaction commits. No extra round trip, and one statement with one result, which
#: psycopg 2 and 3 read alike with client- or server-side binding (a "SET LOCAL ...; INSERT ..."
#: string is refused by server-side binding, and psycopg 2 and 3 leave different results of it
#: to read). Where the statement writes no row, nothing is committed that could wait.
_ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true)"


#: A record's fields by name, and its columns (looked up on every write).
_FIELDS: dict[str, Field[Any, Any]] = {f.name: f for f in TaskExecution._meta.concrete_fields}
_COLUMNS: dict[str, str] = {name: f.column for name, f in _FIELDS.items() if f.column}
#: The fields a claim's INSERT fills from its defaults rather than from the call: the ones whose
#: default is not NULL ("" for the texts, [] for errors). A field whose default is NULL is left
#: out of the INSERT, so the column's own default (NULL: the table has no other) fills it.
_DEFAULTED = tuple(
    f
    for f in _FIELDS.values()
    if not f.primary_key and f.has_default() and f.get_default() is not None
)

#: (vendor, "insert" or "update", its fields or columns, asynchronous) -> SQL, built once each.
#: An UPDATE's columns are those set from parameters, then "", then those set to NULL.
_statements: dict[tuple[str, str, tuple[str, ...], bool], str] = {}
#: (database alias, vendor) -> the _DEFAULTED fields' defaults, adapted once for that database:
#: the same values on every claim, so adapting them per claim (as the ORM does) was waste.
_defaults: dict[tuple[str, str], list[Any]] = {}


def _prebuilt(connection: BaseDatabaseWrapper) -> bool:
    return (
        connection.vendor in _PREBUILT_VENDORS
        and connection.features.can_return_columns_from_insert
    )


def _asynchronous(connection: BaseDatabaseWrapper) -> bool:
    """Whether a record write may commit without waiting for the WAL flush: on PostgreSQL,
    unless RECORDS_SYNCHRONOUS_COMMIT, and only when the statement is a transaction of its own.
    Inside a caller's transaction (an atomic block, or autocommit turned off) it never is: that
    transaction's durability is the caller's."""
    return (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and not get_settings().records_synchronous_commit
        and connection.get_autocommit()
    )


def _insert_sql(connection: BaseDatabaseWrapper, given: tuple[str, ...], asynchronous: bool) -> str:
    key = (connection.vendor, "insert", given, asynchronous)
    sql = _statements.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        names = [*given, *(f.name for f in _DEFAULTED if f.name not in given)]
        columns = ", ".join(quote(_COLUMNS[name]) for name in names)
        marks = ", ".join(["%s"] * len(names))
        returning = quote(_COLUMNS["id"]) + (f", {_ASYNC_COMMIT}" if asynchronous else "")
        table = quote(TaskExecution._meta.db_table)
        # Identifiers quoted by the backend, values passed as parameters.
        sql = _statements[key] = (
            f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({quote(_COLUMNS['task_id'])}) DO NOTHING RETURNING {returning}"
        )
    return sql


def _update_sql(
    connection: BaseDatabaseWrapper,
    columns: tuple[str, ...],
    nulls: tuple[str, ...],
    asynchronous: bool,
) -> str:
    """The settling UPDATE: each of columns takes a parameter; each of nulls is set to NULL in
    the statement itself."""
    key = (connection.vendor, "update", (*columns, "", *nulls), asynchronous)
    sql = _statements.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        assignments = ", ".join(
            [*(f"{quote(c)} = %s" for c in columns), *(f"{quote(c)} = NULL" for c in nulls)]
        )
        returning = f" RETURNING {_ASYNC_COMMIT}" if asynchronous else ""
        # Identifiers quoted by the backend, values passed as parameters.
        sql = _statements[key] = (
            f"UPDATE {quote(TaskExecution._meta.db_table)} SET {assignments} "  # noqa: S608
            f"WHERE {quote(_COLUMNS['id'])} = %s AND {quote(_COLUMNS['attempts'])} = %s{returning}"
        )
    return sql


def _adapted_defaults(connection: BaseDatabaseWrapper) -> list[Any]:
    key = (connection.alias, connection.vendor)
    defaults = _defaults.get(key)
    if defaults is None:
        defaults = _defaults[key] = [
            f.get_db_prep_save(f.get_default(), connection) for f in _DEFAULTED
        ]
    return defaults


def _insert(connection: BaseDatabaseWrapper, values: dict[str, Any]) -> int | None:
    """INSERT a record unless its task id has one: the new row's id, or None."""
    # What the ORM's INSERT sends for each field: the value given, adapted by the field for this
    # connection (aware datetimes under USE_TZ, this vendor's JSON), else the field's default.
    given = tuple(values)
    params = [_FIELDS[name].get_db_prep_save(value, connection) for name, value in values.items()]
    params += (
        default
        for f, default in zip(_DEFAULTED, _adapted_defaults(connection), strict=True)
        if f.name not in values
    )
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection, given, _asynchronous(connection)), params)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _update(connection: BaseDatabaseWrapper, pk: int, attempts: int, values: dict[str, Any]) -> int:
    """UPDATE record pk with values while it is still at attempts: the rows updated (0 or 1)."""
    # update() adapts each value with the field's get_db_prep_save too; a None is NULL in the
    # statement (no parameter to adapt and send).
    given = {name: value for name, value in values.items() if value is not None}
    params = [_FIELDS[name].get_db_prep_save(value, connection) for name, value in given.items()]
    columns = tuple(_COLUMNS[name] for name in given)
    nulls = tuple(_COLUMNS[name] for name in values if name not in given)
    with connection.cursor() as cursor:
        cursor.execute(
            _update_sql(connection, columns, nulls, _asynchronous(connection)),
            [*params, pk, attempts],
        )
        return int(cursor.rowcount)


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
    """Delete records and dead letters older than the retention; (records, letters).

    A running record goes only once its lease, too, ran out before the cutoff: an attempt whose
    process died (or whose settlement a database crash lost) and that no delivery came back for
    within the retention. One still under its lease is kept, whatever its age.
    """
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
        .exclude(status=TaskExecution.Status.RUNNING, lease_until__gte=cutoff)
        .delete()
    )
    letters, _ = DeadLetter.objects.using(db).filter(created_at__lt=cutoff).delete()
    return records, letters
