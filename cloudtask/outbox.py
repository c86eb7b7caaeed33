"""The transactional outbox: nothing committed is lost on its way to Cloud Tasks.

Every call sent at commit (``@on_commit_task``, ``delay_on_commit()``, model-signal bindings,
Django's ``enqueue()`` on a backend with ``ON_COMMIT``) is written as an OutboxMessage row in
the same transaction, on the same database, just before the transaction commits: a rollback
(or a rolled-back savepoint) leaves no row, a commit makes the rows durable together with the
data. The rows of one transaction are written together, in one statement per 1,000 rows (or
16 MB of bodies) on PostgreSQL, a few on SQLite, not one INSERT per call: that is what keeps
the outbox cheap.
After the commit the transaction's rows are sent concurrently and deleted once Cloud Tasks
accepted them; the commit waits at most CLOUDTASK["OUTBOX_FLUSH_TIMEOUT"] seconds. Whatever is
left (a crash, an outage, a slow API) is sent by the relay: opportunistically from every
process, by ``manage.py cloudtask_outbox --drain`` / ``--watch``, or through the endpoint's
authenticated drain route.

Each row's task id is fixed when the call is made (the caller's, or a random one), so sending a
row twice creates one task: Cloud Tasks answers ALREADY_EXISTS to the second send, which deletes
the row. The one ambiguity is a caller-chosen id (a named task) that some other call already
took: ALREADY_EXISTS cannot tell the two apart; the row is deleted and the call is reported as
TaskAlreadyExists (logged, task_enqueue_failed), as a named duplicate always is.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Q
from django.utils import timezone

from . import registry
from .conf import get_settings
from .dispatch import ConcurrentDispatcher, TaskHandle, report_failure
from .exceptions import ConfigurationError, TaskAlreadyExists, UnknownTask
from .message import EnqueuedTask, TaskMessage
from .models import OutboxMessage
from .transports import get_transport

__all__ = [
    "OutboxDispatcher",
    "RelayResult",
    "maybe_relay",
    "message_of",
    "outbox_aliases",
    "relay",
    "send_rows",
]

logger = logging.getLogger("cloudtask.outbox")

#: Backoff of a failing row: 2, 4, 8 ... seconds, at most this long, each with up to 25% jitter.
MAX_BACKOFF = 300.0
#: The shortest lease of a relay on the rows it claimed (another relay leaves them alone
#: meanwhile); a pass of many rows gets longer (see _lease).
LEASE = timedelta(minutes=2)
#: Rows one relay pass claims at most.
BATCH = 500


def _own_values(message: TaskMessage, named: bool) -> dict[str, object]:
    """The values of a row that come from its call."""
    return {
        "task_name": message.task_name,
        "queue": message.queue,
        "url": message.url,
        "body": message.body,
        "headers": message.headers,
        "task_id": message.task_id,
        "named": named,
        "schedule_time": message.schedule_time,
        "dispatch_deadline": message.dispatch_deadline,
        "oidc_service_account": message.oidc_service_account or "",
        "oidc_audience": message.oidc_audience or "",
    }


def _shared_values(now: datetime) -> dict[str, object]:
    """The values every row written at ``now`` shares (the model's defaults spelled out: a
    batched INSERT does not go through the model)."""
    settings = get_settings()
    return {
        "created_at": now,
        # The committing process sends the row first; the relay only takes it once that send
        # has surely ended: the commit's bound, plus one call with all its retries.
        "next_attempt_at": now
        + timedelta(
            seconds=settings.outbox_flush_timeout
            + settings.client_timeout
            + settings.enqueue_retry_deadline
            + 1
        ),
        "attempts": 0,
        "last_attempt_at": None,
        "last_error": "",
        "lease_until": None,
        "lease_owner": "",
    }


def message_of(row: OutboxMessage) -> TaskMessage:
    """The TaskMessage a row holds, byte for byte as it was encoded."""
    return TaskMessage(
        task_name=row.task_name,
        queue=row.queue,
        url=row.url,
        body=bytes(row.body),
        headers=dict(row.headers),
        task_id=row.task_id,
        schedule_time=row.schedule_time,
        dispatch_deadline=row.dispatch_deadline,
        oidc_service_account=row.oidc_service_account or None,
        oidc_audience=row.oidc_audience or None,
    )


def _sender(task_name: str) -> object:
    try:
        return registry.get(task_name)
    except UnknownTask:
        return None  # the relay may run in a process that never imported the task


def _resource_name(message: TaskMessage) -> str:
    project, location = get_transport().project_location()
    return f"projects/{project}/locations/{location}/queues/{message.queue}/tasks/{message.task_id}"


@dataclass(frozen=True)
class _Row:
    """A handle's outbox row."""

    alias: str
    pk: int
    #: The caller chose the task id (else cloudtask generated it when the call was made).
    named: bool


@dataclass(frozen=True)
class _Unwritten:
    """A handle's outbox row before its transaction commits (OutboxDispatcher.write writes it;
    without a real commit, in a TestCase, it never is)."""

    alias: str
    named: bool


# -- writing a transaction's rows together -----------------------------------------------------
#
# Per row, inside one PostgreSQL transaction, the ORM's create() costs about 350 us, a raw
# INSERT one round trip (~100 us over loopback) and bulk_create 150-190 us (model instances, SQL
# compilation); so the rows are written with prebuilt SQL and values adapted by the model's own
# fields, one statement for many rows. PostgreSQL: INSERT ... SELECT ... FROM UNNEST(arrays),
# one array per column, the shape Django's bulk_create uses there (a short query text, planned
# once, whatever the number of rows). SQLite: a multi-row VALUES, as many rows as its parameter
# limit allows (no round trips to save there). Both RETURN each new id with its row's task id,
# and each handle takes the id of its task id: SQLite documents the order of RETURNING rows as
# arbitrary, so the ids are not paired by position. Other databases get one ORM create() per
# call, at the line that made it.
#
# Nothing is written early for a large transaction: until the commit a call costs its handle
# (which the transaction's batch holds anyway, with or without the outbox) and a marker, so
# waiting adds no memory worth bounding; the values are adapted at the write, a statement at a
# time (at most WRITE_BATCH rows and WRITE_BYTES of bodies and headers).

#: Columns whose values come from each call, then the ones every row of one write shares.
_OWN = (
    "task_name",
    "queue",
    "url",
    "body",
    "headers",
    "task_id",
    "named",
    "schedule_time",
    "dispatch_deadline",
    "oidc_service_account",
    "oidc_audience",
)
_SHARED = (
    "created_at",
    "next_attempt_at",
    "attempts",
    "last_attempt_at",
    "last_error",
    "lease_until",
    "lease_owner",
)
#: Rows adapted and written at a time (one statement on PostgreSQL; a few on SQLite, whose
#: parameter limit is lower): bounds the size of one query and of the values it holds.
WRITE_BATCH = 1000
#: Bytes of bodies and headers written at a time, at most (a single larger row goes alone).
#: PostgreSQL receives a statement as one message of at most 1 GB, and psycopg sends the bytea
#: array hex-encoded in the query text: 1,000 bodies of 1 MB (Cloud Tasks' limit) would exceed
#: it and need gigabytes of client memory. 16 MB keeps a statement near 35 MB of text.
WRITE_BYTES = 16 * 1024 * 1024


def _field(name: str) -> Field[Any, Any]:
    field = OutboxMessage._meta.get_field(name)
    assert isinstance(field, Field), name
    return field


def _column(name: str) -> str:
    column = _field(name).column
    assert column, name
    return column


def _adapt(name: str, value: object, connection: BaseDatabaseWrapper) -> object:
    """value as the model field would send it to this database. Strings, booleans and None
    need nothing (CharField, BooleanField and a null field pass them as they are); bytes, JSON,
    datetimes (USE_TZ) and durations go through the field: each backend stores them its way."""
    if value is None or isinstance(value, str | bool):
        return value
    return _field(name).get_db_prep_save(value, connection)


def _names(connection: BaseDatabaseWrapper) -> tuple[str, str, str]:
    """The outbox table, its written columns and its id column, quoted for this database."""
    quote = connection.ops.quote_name
    meta = OutboxMessage._meta
    assert meta.pk is not None and meta.pk.column
    columns = ", ".join(quote(_column(name)) for name in _OWN + _SHARED)
    return quote(meta.db_table), columns, quote(meta.pk.column)


def _array_type(name: str, connection: BaseDatabaseWrapper) -> str:
    # Without the size (varchar, not varchar(500)): a cast never truncates, as in Django's own
    # UNNEST insert.
    return str(_field(name).db_type(connection)).split("(")[0]


#: (vendor, rows per statement or 0 for UNNEST) -> the INSERT, built once each.
_statements: dict[tuple[str, int], str] = {}


def _insert_sql(connection: BaseDatabaseWrapper, rows: int) -> str:
    key = (connection.vendor, rows)
    sql = _statements.get(key)
    if sql is None:
        table, columns, pk = _names(connection)
        quote = connection.ops.quote_name
        # Identifiers quoted by the backend, every value a parameter.
        if rows:
            row = "(" + ", ".join(["%s"] * (len(_OWN) + len(_SHARED))) + ")"
            source = "VALUES " + ", ".join([row] * rows)
        else:
            shared = ", ".join(f"%s::{_array_type(name, connection)}" for name in _SHARED)
            arrays = ", ".join(f"%s::{_array_type(name, connection)}[]" for name in _OWN)
            source = f"SELECT *, {shared} FROM UNNEST({arrays})"  # noqa: S608
        task_id = quote(_column("task_id"))
        sql = _statements[key] = (
            f"INSERT INTO {table} ({columns}) {source} RETURNING {pk}, {task_id}"
        )
    return sql


#: What an INSERT returns: (id, task id) of each new row, in no promised order.
_Written = list[tuple[int, str]]


def _write_postgresql(
    connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]], shared: list[Any]
) -> _Written:
    columns = [list(column) for column in zip(*rows, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection, 0), [*shared, *columns])
        return [(row[0], row[1]) for row in cursor.fetchall()]


def _write_values(
    connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]], shared: list[Any]
) -> _Written:
    limit = connection.features.max_query_params
    per_statement = max(1, limit // (len(_OWN) + len(_SHARED))) if limit else len(rows)
    written: _Written = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            cursor.execute(
                _insert_sql(connection, len(chunk)),
                [value for row in chunk for value in (*row, *shared)],
            )
            written.extend((row[0], row[1]) for row in cursor.fetchall())
    return written


_Writer = Callable[[BaseDatabaseWrapper, list[tuple[Any, ...]], list[Any]], _Written]


def _writer(connection: BaseDatabaseWrapper) -> _Writer | None:
    """How rows are written together on this database; None: one ORM create() per call."""
    if connection.vendor == "postgresql":
        return _write_postgresql
    if connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert:
        return _write_values
    return None


def _size(message: TaskMessage) -> int:
    """Roughly the bytes a row's values take in a statement (its body and headers dominate)."""
    headers = sum(len(name) + len(value) for name, value in message.headers.items())
    return len(message.body) + headers + len(message.url) + len(message.task_name)


def _chunks(handles: Sequence[TaskHandle]) -> Iterable[list[TaskHandle]]:
    """handles in runs of at most WRITE_BATCH rows and WRITE_BYTES bytes (or one row)."""
    chunk: list[TaskHandle] = []
    size = 0
    for handle in handles:
        row = _size(handle.message)
        if chunk and (len(chunk) >= WRITE_BATCH or size + row > WRITE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(handle)
        size += row
    if chunk:
        yield chunk


def _pair(chunk: Sequence[TaskHandle], written: _Written, using: str) -> list[int]:
    """The id of each handle's row, by task id. Generated ids are unique; a caller-chosen one
    used twice in a write gets its ids in ascending order, the order both databases number
    the rows of one statement in."""
    by_task_id: dict[str, list[int]] = {}
    for pk, task_id in sorted(written, reverse=True):
        by_task_id.setdefault(task_id, []).append(pk)
    try:
        ids = [by_task_id[str(handle.task_id)].pop() for handle in chunk]
    except (KeyError, IndexError):
        ids = []
    if len(written) != len(chunk) or len(ids) != len(chunk):
        raise DatabaseError(
            f"Writing {len(chunk)} outbox rows on database {using!r} returned {len(written)} "
            f"rows whose task ids do not match the calls'."
        )
    return ids


def _write_rows(handles: Sequence[TaskHandle], using: str) -> None:
    """Write the rows of handles that OutboxDispatcher.prepare() left unwritten, together, on
    the transaction open on ``using``; each handle then knows its row."""
    pending = [h for h in handles if isinstance(h.outbox, _Unwritten)]
    if not pending:
        return
    connection = connections[using]
    writer = _writer(connection)
    if writer is None:
        raise ConfigurationError(
            f"Outbox rows cannot be written together on database {using!r} "
            f"({connection.vendor}); OutboxDispatcher.prepare() writes them one by one there."
        )
    shared_values = _shared_values(timezone.now())
    shared = [_adapt(name, shared_values[name], connection) for name in _SHARED]
    for chunk in _chunks(pending):
        rows: list[tuple[Any, ...]] = []
        for handle in chunk:
            values = _own_values(handle.message, handle.outbox.named)
            rows.append(tuple(_adapt(name, values[name], connection) for name in _OWN))
        ids = _pair(chunk, writer(connection, rows, shared), using)
        del rows  # the adapted bodies of this statement go before the next one's are built
        for handle, pk in zip(chunk, ids, strict=True):
            handle.outbox = _Row(using, pk, handle.outbox.named)


def _already_sent(handle: TaskHandle, error: Exception | None, named: bool) -> bool:
    """Whether error says the row's own, generated task id exists: the row was already sent.

    Only a generated id proves it: a caller-chosen id may have been taken by another call.
    """
    if not isinstance(error, TaskAlreadyExists) or named:
        return False
    message = handle.message
    handle.error = None
    handle._sent(EnqueuedTask(_resource_name(message), message.schedule_time))
    return True


def _backoff(attempts: int) -> timedelta:
    delay = min(2.0**attempts, MAX_BACKOFF)
    return timedelta(seconds=delay * (1 + random.random() / 4))


def _delete(alias: str, ids: Iterable[int]) -> int:
    """Delete rows; how many were still there."""
    ids = list(ids)
    if not ids:
        return 0
    connection = connections[alias]
    if connection.vendor == "postgresql":
        # One array parameter instead of the ORM's thousand (pk IN (%s, %s, ...)), which the
        # client would quote one by one: a commit of 1,000 calls deletes its rows here.
        table, _, pk = _names(connection)
        # A DELETE that is a transaction of its own commits without waiting for the WAL flush
        # (set_config(..., true) is SET LOCAL; the statement evaluates it before the implicit
        # commit). A delete that a database crash loses leaves a row the relay sends again:
        # Cloud Tasks answers ALREADY_EXISTS for its task id, and the row goes (a named one is
        # then reported as a duplicate). A call more, never a task more. Inside a caller's
        # transaction the durability is the caller's: nothing changes. One result row either
        # way (the count), not one per deleted row.
        asynchronous = (
            "set_config('synchronous_commit', 'off', true), "
            if connection.get_autocommit() and not connection.in_atomic_block
            else ""
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH deleted AS (DELETE FROM {table} WHERE {pk} = ANY(%s) RETURNING 1) "  # noqa: S608
                f"SELECT {asynchronous}count(*) FROM deleted",
                [ids],
            )
            result = cursor.fetchone()
            return int(result[-1]) if result else 0
    deleted, _ = OutboxMessage.objects.using(alias).filter(pk__in=ids).delete()
    return deleted


def _record_failure(
    alias: str, row_id: int, error: BaseException, now: datetime, *, release: bool = False
) -> bool:
    """Count a failed send on the row and back it off; False if the row is gone (a relay
    elsewhere sent it, or an operator discarded it). ``release`` drops the relay's lease."""
    row = OutboxMessage.objects.using(alias).filter(pk=row_id).first()
    if row is None:
        return False
    attempts = row.attempts + 1
    last_error = f"{type(error).__name__}: {error}"[:2000]
    update: dict[str, object] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_error": last_error,
        "next_attempt_at": now + _backoff(attempts),
    }
    if release:
        update.update(lease_until=None, lease_owner="")
    # Conditional on the attempts read: a row deleted or counted by someone else meanwhile is
    # left as they left it.
    if (
        not OutboxMessage.objects.using(alias)
        .filter(pk=row_id, attempts=row.attempts)
        .update(**update)
    ):
        return False
    age = row.age(now)
    log = logger.error if age >= get_settings().outbox_alert_age else logger.warning
    log(
        "Outbox row %s (task %s, task id %s, schedule time %s) failed to send on attempt %d "
        "(%.0f s old): %s; the relay tries again after %s.",
        row.pk,
        row.task_name,
        row.task_id,
        row.schedule_time.isoformat() if row.schedule_time else "now",
        attempts,
        age,
        last_error,
        update["next_attempt_at"],
    )
    return True


class OutboxDispatcher(ConcurrentDispatcher):
    """The default dispatcher: rows in the transaction, a bounded send after the commit."""

    def prepare(self, handle: TaskHandle, using: str) -> bool:
        if not get_settings().outbox or not router.allow_migrate_model(using, OutboxMessage):
            # No outbox on a database the router keeps cloudtask's tables off: the call is
            # sent after the commit without a row, as with CLOUDTASK["OUTBOX"] = False.
            return False
        message = handle.message
        # Only an id the caller chose can have been taken by another call.
        named = message.task_id is not None and not handle.id_generated
        if message.task_id is None:
            # Fixed now, so every send of this row is the same Cloud Tasks task.
            message = handle.message = replace(message, task_id=uuid.uuid4().hex)
        if _writer(connections[using]) is not None:
            # Written with the transaction's other calls, just before it commits (write()).
            handle.outbox = _Unwritten(using, named)
            return True
        row = OutboxMessage.objects.using(using).create(
            **_own_values(message, named), **_shared_values(timezone.now())
        )
        handle.outbox = _Row(using, row.pk, named)
        return False

    def write(self, handles: Sequence[TaskHandle], using: str) -> None:
        _write_rows(handles, using)

    def dispatch(self, handles: Sequence[TaskHandle]) -> None:
        for handle in handles:
            if isinstance(handle.outbox, _Unwritten):
                # No real commit wrote it (a TestCase's captured callbacks): sent as without
                # the outbox; there is nothing durable to leave to the relay.
                handle.outbox = None
        boxed = [h for h in handles if h.outbox is not None]
        plain = [h for h in handles if h.outbox is None]
        if plain:
            super().dispatch(plain)
        if not boxed:
            return
        settings = get_settings()
        failures = self.send_all(
            boxed, timeout=settings.outbox_flush_timeout, on_late=self._settle_late
        )
        failed = {id(handle): error for handle, error in failures}
        sent: dict[str, list[int]] = {}
        for handle in boxed:
            row: _Row | None = handle.outbox
            if row is None:
                continue  # finished just after the bound and already settled by _settle_late
            error = failed.get(id(handle))
            if handle.state == "sent" or _already_sent(handle, error, row.named):
                sent.setdefault(row.alias, []).append(row.pk)
                handle.outbox = None
            elif error is not None:
                self._failed(handle, error)
            else:
                # Still in flight after the bound: the pool settles it (_settle_late); the row
                # is durable meanwhile.
                handle._outboxed(None)
        for alias, ids in sent.items():
            _delete(alias, ids)
        maybe_relay()

    def discard(self, handles: Sequence[TaskHandle]) -> None:
        by_alias: dict[str, list[int]] = {}
        for handle in handles:
            row = handle.outbox
            handle.outbox = None
            # A row not written (the usual case: write() skips superseded calls) needs nothing.
            if isinstance(row, _Row):
                by_alias.setdefault(row.alias, []).append(row.pk)
        for alias, ids in by_alias.items():
            _delete(alias, ids)

    def _failed(self, handle: TaskHandle, error: Exception) -> None:
        row: _Row = handle.outbox
        if isinstance(error, TaskAlreadyExists):
            # A named task whose id is taken: the point of naming it. Nothing to relay. (A row
            # already gone was sent, or reported, by a relay: nothing to say here.)
            handle.outbox = None
            if _delete(row.alias, [row.pk]):
                report_failure(handle, error)
            return
        # The row stays: the relay sends it when Cloud Tasks answers again.
        handle._outboxed(error)
        if _record_failure(row.alias, row.pk, error, timezone.now()):
            report_failure(handle, error)
        else:
            handle.outbox = None  # a relay elsewhere already sent (or reported) it

    def _settle_late(self, handle: TaskHandle, error: Exception | None) -> None:
        """A send that outlived the commit's bound finished (in a pool thread)."""
        row: _Row | None = handle.outbox
        if row is None:
            return
        if error is None or _already_sent(handle, error, row.named):
            _delete(row.alias, [row.pk])
            handle.outbox = None
        else:
            self._failed(handle, error)


# -- the relay ---------------------------------------------------------------------------------


@dataclass
class RelayResult:
    """What one relay pass did."""

    sent: int = 0
    #: Rows whose send failed; they back off and stay.
    failed: int = 0
    #: Rows deleted because their named task id was already taken by another call.
    duplicates: int = 0
    #: Databases that could not be read (no outbox table, unreachable), with the error.
    skipped: dict[str, str] = field(default_factory=dict)

    def __iadd__(self, other: RelayResult) -> RelayResult:
        self.sent += other.sent
        self.failed += other.failed
        self.duplicates += other.duplicates
        self.skipped.update(other.skipped)
        return self


def outbox_aliases() -> list[str]:
    """The databases that may hold outbox rows (where the router lets cloudtask migrate)."""
    return [alias for alias in connections if router.allow_migrate_model(alias, OutboxMessage)]


def _claim(
    alias: str, now: datetime, limit: int, pks: Sequence[int] | None = None
) -> list[OutboxMessage]:
    """Rows due now (or the rows pks, due or not) that no other relay holds, leased to this pass.

    PostgreSQL (and others with SKIP LOCKED) pick rows with SELECT ... FOR UPDATE SKIP LOCKED,
    so two relays never wait for or pick the same row, then lease them. Elsewhere (SQLite) one
    conditional UPDATE picks and leases at once: SQLite runs writes one at a time, so of two
    relays only one takes a row; and a lone UPDATE waits for a busy database, where a
    read-then-write transaction would fail at once with "database is locked".
    """
    owner = uuid.uuid4().hex
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    rows = OutboxMessage.objects.using(alias).filter(free)
    due = rows.filter(pk__in=pks) if pks is not None else rows.filter(next_attempt_at__lte=now)
    candidates = due.order_by("next_attempt_at", "pk")
    lease = {"lease_until": now + _lease(limit), "lease_owner": owner}
    if connections[alias].features.has_select_for_update_skip_locked:
        with transaction.atomic(using=alias):
            ids = list(
                candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)[:limit]
            )
            if not ids:
                return []
            OutboxMessage.objects.using(alias).filter(pk__in=ids).update(**lease)
    else:
        picked = candidates.values("pk")[:limit]
        if not OutboxMessage.objects.using(alias).filter(free, pk__in=picked).update(**lease):
            return []
    return list(OutboxMessage.objects.using(alias).filter(lease_owner=owner))


def _lease(limit: int) -> timedelta:
    """Long enough for a pass of limit rows when every send waits out its timeout and retries,
    so another relay never takes a row this one is still sending."""
    s = get_settings()
    waves = -(-limit // max(1, s.on_commit_workers))
    return max(LEASE, timedelta(seconds=waves * (s.client_timeout + s.enqueue_retry_deadline) + 60))


def relay(*, limit: int = BATCH, aliases: Sequence[str] | None = None) -> RelayResult:
    """Send every due outbox row once (at most limit per database); delete what was sent."""
    result = RelayResult()
    for alias in aliases if aliases is not None else outbox_aliases():
        try:
            result += _relay_alias(alias, limit)
        except DatabaseError as exc:
            result.skipped[alias] = f"{type(exc).__name__}: {exc}"
    return result


def _relay_alias(alias: str, limit: int, pks: Sequence[int] | None = None) -> RelayResult:
    result = RelayResult()
    now = timezone.now()
    rows = _claim(alias, now, limit, pks)
    if not rows:
        return result
    handles = [TaskHandle(message_of(row), sender=_sender(row.task_name)) for row in rows]
    by_handle = {id(h): row for h, row in zip(handles, rows, strict=True)}
    failures = dict((id(handle), error) for handle, error in _relay_dispatcher.send_all(handles))
    done: list[int] = []
    failed: list[tuple[OutboxMessage, Exception]] = []
    for handle in handles:
        row = by_handle[id(handle)]
        error = failures.get(id(handle))
        if error is None or _already_sent(handle, error, row.named):
            done.append(row.pk)
            result.sent += 1
        elif isinstance(error, TaskAlreadyExists):
            done.append(row.pk)
            result.duplicates += 1
            logger.error(
                "Outbox row %s: task id %r of task %s was already taken, by this call (sent "
                "before) or by another one; it is not sent again.",
                row.pk,
                row.task_id,
                row.task_name,
            )
            report_failure(handle, error)
        else:
            failed.append((row, error))
    # Sent rows go first: a database error while recording a failure must not leave them to
    # be sent again.
    _delete(alias, done)
    for row, error in failed:
        result.failed += 1
        _record_failure(alias, row.pk, error, timezone.now(), release=True)
    return result


#: The relay's own pool (a relay started from a commit must not wait behind that commit's
#: sends on the same pool).
_relay_dispatcher = ConcurrentDispatcher()

_relay_lock = threading.Lock()
#: -inf, not 0: time.monotonic() may start near 0 (a container booted seconds ago), and the
#: first relay of a process must not wait out a whole interval.
_last_relay = float("-inf")
_relay_thread: threading.Thread | None = None


def maybe_relay() -> None:
    """Relay rows left behind, in a background thread, at most every OUTBOX_RELAY_INTERVAL
    seconds per process: a site with traffic heals itself with no extra process."""
    global _last_relay, _relay_thread
    settings = get_settings()
    interval = settings.outbox_relay_interval
    if not settings.outbox or interval <= 0:
        return
    now = time.monotonic()
    # A first look without the lock: every request of the site ends here (request_finished),
    # and nearly all of them within the interval.
    if now - _last_relay < interval:
        return
    with _relay_lock:
        if now - _last_relay < interval or (_relay_thread and _relay_thread.is_alive()):
            return
        _last_relay = now
        _relay_thread = threading.Thread(
            target=_background_relay, name="cloudtask-outbox-relay", daemon=True
        )
        _relay_thread.start()


def _background_relay() -> None:
    try:
        result = relay()
        if result.sent or result.failed:
            logger.info(
                "Outbox relay: %d sent, %d failed, %d duplicates.",
                result.sent,
                result.failed,
                result.duplicates,
            )
    except Exception:
        logger.exception("The background outbox relay failed.")
    finally:
        connections.close_all()


def send_rows(alias: str, pks: Iterable[int]) -> RelayResult:
    """Send these rows now, due or not (the admin's "Send now"), exactly as the relay does; a row
    another relay holds at the moment is left to it."""
    ids = list(pks)
    return _relay_alias(alias, len(ids), ids) if ids else RelayResult()
