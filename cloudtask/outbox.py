"""The transactional outbox: nothing committed is lost on its way to Cloud Tasks.

Every call sent at commit (``@on_commit_task``, ``delay_on_commit()``, model-signal bindings,
Django's ``enqueue()`` on a backend with ``ON_COMMIT``) is written as an OutboxMessage row in
the same transaction, on the same database: a rollback removes it, a commit makes it durable.
After the commit the transaction's rows are sent concurrently and deleted once Cloud Tasks
accepted them; the commit waits at most CLOUDTASK["OUTBOX_FLUSH_TIMEOUT"] seconds. Whatever is
left (a crash, an outage, a slow API) is sent by the relay: opportunistically from every
process, by ``manage.py cloudtask_outbox --drain`` / ``--watch``, or through the endpoint's
authenticated drain route.

Each row's task id is fixed when it is written (the caller's, or a random one), so sending a row
twice creates one task: Cloud Tasks answers ALREADY_EXISTS to the second send, which deletes the
row. The one ambiguity is a caller-chosen id (a named task) that some other call already took:
ALREADY_EXISTS cannot tell the two apart; the row is deleted and the call is reported as
TaskAlreadyExists (logged, task_enqueue_failed), as a named duplicate always is.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.db import DatabaseError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from . import registry
from .conf import get_settings
from .dispatch import ConcurrentDispatcher, TaskHandle, report_failure
from .exceptions import TaskAlreadyExists, UnknownTask
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


def _row_fields(message: TaskMessage, named: bool, now: datetime) -> dict[str, object]:
    settings = get_settings()
    return {
        "created_at": now,
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
        # The committing process sends the row first; the relay only takes it once that send
        # has surely ended: the commit's bound, plus one call with all its retries.
        "next_attempt_at": now
        + timedelta(
            seconds=settings.outbox_flush_timeout
            + settings.client_timeout
            + settings.enqueue_retry_deadline
            + 1
        ),
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
    #: The caller chose the task id (else cloudtask generated it when writing the row).
    named: bool


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

    def prepare(self, handle: TaskHandle, using: str) -> None:
        if not get_settings().outbox or not router.allow_migrate_model(using, OutboxMessage):
            # No outbox on a database the router keeps cloudtask's tables off: the call is
            # sent after the commit without a row, as with CLOUDTASK["OUTBOX"] = False.
            return
        message = handle.message
        named = message.task_id is not None
        if not named:
            # Fixed now, so every send of this row is the same Cloud Tasks task.
            message = handle.message = replace(message, task_id=uuid.uuid4().hex)
        row = OutboxMessage.objects.using(using).create(
            **_row_fields(message, named, timezone.now())
        )
        handle.outbox = _Row(using, row.pk, named)

    def dispatch(self, handles: Sequence[TaskHandle]) -> None:
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
            row: _Row | None = handle.outbox
            if row is not None:
                by_alias.setdefault(row.alias, []).append(row.pk)
                handle.outbox = None
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
_last_relay = 0.0
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
