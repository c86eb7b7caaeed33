"""Dispatch: the one way a task call leaves this process, now or when its transaction commits.

Every front-end (the seed API's ``delay``/``push``/``schedule``/``delay_on_commit``, Django's
``enqueue``, model-signal bindings) builds a TaskMessage and calls ``dispatch()`` (or
``adispatch()``); this module sends it through the transport and settles its TaskHandle.

Transaction-safe dispatch, how it works (Django 5.2 and 6.x share these semantics; see
run_and_clear_commit_hooks and savepoint_rollback in django/db/backends/base/base.py):

* Inside atomic(), each deferred handle registers its own small callable, a ``_Deferred``, with
  ``transaction.on_commit(..., robust=True)``. Django therefore keeps savepoint semantics for us:
  rolling back a savepoint (or the whole transaction) drops the callables registered inside it.
* The handles deferred in one outermost transaction on one connection share a ``_Batch``, which
  holds only WEAK references to their callables. Once Django drops a callable, nothing else
  refers to it and CPython frees it at once, so its weak reference goes dead (elsewhere the
  flush runs a garbage collection first).
* At commit, Django runs the callbacks one after another. The first ``_Deferred`` to run flushes
  the batch: every handle whose callable is still alive goes to the dispatcher, which sends them
  concurrently on a bounded pool (CLOUDTASK["ON_COMMIT_WORKERS"]) and waits, so the commit (and
  a request under ATOMIC_REQUESTS) returns after the tasks are sent. The later callables find
  the batch flushed and return.
* A handle whose callable Django drops without running it (rollback) settles as "dropped"
  through its weak reference's callback, so nobody waits on it forever.
* TestCase.captureOnCommitCallbacks(execute=True) calls the same callables, so it drives this
  exactly like a real commit.

Why not one callback per transaction: a callable registered by the first defer would be dropped
if that defer happened inside a savepoint that rolled back, taking the rest of the transaction's
tasks with it; and Django offers no way to register a callback outside the current savepoint.
Sending one task per callback keeps the guarantees but pays one API round trip per task, in
series, inside the commit.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import transaction as django_transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from . import records, signals
from .conf import get_settings
from .exceptions import ConfigurationError
from .message import EnqueuedTask, TaskMessage
from .models import TaskExecution
from .transports import BaseTransport, get_transport

__all__ = [
    "ConcurrentDispatcher",
    "Dispatcher",
    "TaskHandle",
    "adispatch",
    "asend",
    "defer",
    "dispatch",
    "get_dispatcher",
    "report_failure",
    "send",
    "send_batch",
    "set_dispatcher",
]

logger = logging.getLogger("cloudtask.dispatch")

State = Literal["pending", "sent", "failed", "dropped", "outboxed"]


class TaskHandle:
    """One dispatched task call: pending until it settles as sent, failed, dropped (its
    transaction or savepoint rolled back, or a later save of the same instance superseded it) or
    outboxed (committed to the transactional outbox, not yet accepted by Cloud Tasks: the relay
    sends it; a send still in flight may turn it sent later). Every handle settles, so wait()
    always returns."""

    def __init__(self, message: TaskMessage, *, call: Any = None, sender: Any = None) -> None:
        self.message = message
        #: The front-end's call object (a TaskCall, a django.tasks TaskResult), for signals.
        self.call = call
        #: The sender of cloudtask's signals about this call (the Task object).
        self.sender = sender
        self.state: State = "pending"
        #: Full resource name, projects/P/locations/L/queues/Q/tasks/ID, once sent.
        self.resource_name: str | None = None
        #: When Cloud Tasks will deliver it (as asked, or when it actually ran for a transport
        #: that does not schedule).
        self.schedule_time: datetime | None = message.schedule_time
        self.error: BaseException | None = None
        #: Its row in the transactional outbox (cloudtask.outbox), while it has one.
        self.outbox: Any = None
        self._done = threading.Event()

    @property
    def task_id(self) -> str | None:
        """Short Cloud Tasks task id: fixed at dispatch for a named call, else known once sent."""
        if self.resource_name:
            return self.resource_name.rsplit("/", 1)[-1]
        return self.message.task_id

    @property
    def id(self) -> str | None:
        """Alias of task_id (the seed API's spelling)."""
        return self.task_id

    @property
    def name(self) -> str | None:
        """Alias of resource_name (the seed API's spelling)."""
        return self.resource_name

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def get_result(self) -> TaskExecution | None:
        """What became of the task so far, from its execution record (CLOUDTASK["RECORDS"]):
        status, attempts, timestamps, return_value, errors. None until a delivery started."""
        task_id = self.task_id
        return records.lookup(task_id) if task_id else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until sent, failed or dropped (an on-commit call settles at commit or
        rollback); True once settled."""
        return self._done.wait(timeout)

    def _sent(self, enqueued: EnqueuedTask) -> None:
        self.resource_name = enqueued.resource_name
        if enqueued.schedule_time is not None:
            self.schedule_time = enqueued.schedule_time
        self.state = "sent"
        self._done.set()

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.state = "failed"
        self._done.set()

    def _dropped(self) -> None:
        if self.state == "pending":
            self.state = "dropped"
            self._done.set()

    def _outboxed(self, exc: BaseException | None) -> None:
        if self.state != "sent":
            self.error = exc
            self.state = "outboxed"
            self._done.set()

    def __repr__(self) -> str:
        where = f" {self.resource_name}" if self.resource_name else ""
        return f"<TaskHandle {self.message.task_name} {self.state}{where}>"


def _refuse_unsupported(transport: BaseTransport, message: TaskMessage) -> None:
    if message.task_id is not None and not transport.supports_named:
        raise ConfigurationError(
            f"Task {message.task_name!r} has task id {message.task_id!r}, but the "
            f"{type(transport).__name__} transport does not refuse reused ids "
            "(supports_named is False), so the call would not be deduplicated. Use a transport "
            'that does (CLOUDTASK["TRANSPORT"]), or send it without an id.'
        )


def _ran_early(transport: BaseTransport, message: TaskMessage, enqueued: EnqueuedTask) -> None:
    if (
        not transport.supports_schedule
        and message.schedule_time is not None
        and message.schedule_time > datetime.now(UTC)
    ):
        logger.info(
            "Task %s was scheduled for %s, but the %s transport runs tasks when they are sent; "
            "it ran at %s.",
            message.task_name,
            message.schedule_time.isoformat(),
            type(transport).__name__,
            enqueued.schedule_time.isoformat() if enqueued.schedule_time else "once",
        )


def send(handle: TaskHandle) -> TaskHandle:
    """Enqueue handle.message on the configured transport now (thread-safe); raises on failure."""
    transport = get_transport()
    try:
        _refuse_unsupported(transport, handle.message)
        enqueued = transport.enqueue(handle.message)
    except BaseException as exc:
        handle._failed(exc)
        raise
    _ran_early(transport, handle.message, enqueued)
    handle._sent(enqueued)
    signals.task_enqueued.send(sender=handle.sender, call=handle.call, handle=handle)
    return handle


async def asend(handle: TaskHandle) -> TaskHandle:
    """send() for the event loop: the transport's async path, never blocking the loop."""
    transport = get_transport()
    try:
        _refuse_unsupported(transport, handle.message)
        enqueued = await transport.aenqueue(handle.message)
    except BaseException as exc:
        handle._failed(exc)
        raise
    _ran_early(transport, handle.message, enqueued)
    handle._sent(enqueued)
    signals.task_enqueued.send(sender=handle.sender, call=handle.call, handle=handle)
    return handle


def dispatch(
    message: TaskMessage,
    *,
    call: Any = None,
    sender: Any = None,
    on_commit: bool = False,
    using: str | None = None,
) -> TaskHandle:
    """The one dispatch path: send message now, or when the transaction open on ``using``
    commits (``on_commit``; now if none is open). Returns its handle."""
    handle = TaskHandle(message, call=call, sender=sender)
    if on_commit:
        return defer(handle, using=using)
    return send(handle)


async def adispatch(
    message: TaskMessage,
    *,
    call: Any = None,
    sender: Any = None,
    on_commit: bool = False,
    using: str | None = None,
) -> TaskHandle:
    """dispatch() for the event loop: sent on the transport's async path, or, for an on-commit
    call made while a transaction is open, deferred like dispatch() does.

    Django's connections belong to threads: the transaction, if any, is open in the sync thread
    that awaits this coroutine (async_to_sync), not in the event loop's. The check and the
    deferral run there, through a thread-sensitive sync_to_async hop (on-commit calls only).
    """
    handle = TaskHandle(message, call=call, sender=sender)
    if on_commit and await sync_to_async(_defer_if_in_transaction, thread_sensitive=True)(
        handle, using or DEFAULT_DB_ALIAS
    ):
        return handle
    return await asend(handle)


def _defer_if_in_transaction(handle: TaskHandle, alias: str) -> bool:
    if not _in_transaction(alias):
        return False
    _register(handle, alias)
    return True


def send_batch(
    messages: Sequence[tuple[TaskMessage, Any, Any]], *, return_failures: bool = False
) -> list[TaskHandle]:
    """Send (message, call, sender) triples concurrently on the dispatch pool; handles in order.

    Every message is attempted. Unless return_failures, the first failure is raised once all
    have settled (each handle says sent or failed either way).
    """
    handles = [TaskHandle(message, call=call, sender=sender) for message, call, sender in messages]
    errors = _dispatcher.send_all(handles)
    if errors and not return_failures:
        raise errors[0][1]
    return handles


# -- the dispatcher seam ---------------------------------------------------------------------


class Dispatcher:
    """Where deferred task calls go. The default sends them when their transaction commits.

    A durable outbox slots in here without changing any public call: ``prepare`` runs inside
    the transaction when a call is deferred (store ``handle.message`` in the same transaction),
    ``dispatch`` runs after the commit with the handles that survived (send them, mark the rows
    sent; a relay sends whatever a crashed process left behind). TaskMessage is a plain frozen
    dataclass, so it stores as it is.
    """

    def prepare(self, handle: TaskHandle, using: str) -> None:
        """Called inside the transaction, at the line that deferred the call."""

    def dispatch(self, handles: Sequence[TaskHandle]) -> None:
        """Send handles after their transaction committed. Must not raise: report failures."""
        raise NotImplementedError

    def discard(self, handles: Sequence[TaskHandle]) -> None:
        """After the commit: handles that were prepared but will never be sent (superseded by
        a later save of the same instance). Forget whatever prepare() stored for them."""


_POOL_PREFIX = "cloudtask-on-commit"


class ConcurrentDispatcher(Dispatcher):
    """Sends a commit's task calls concurrently on a bounded pool and waits for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def _executor(self) -> ThreadPoolExecutor:
        workers = get_settings().on_commit_workers
        with self._lock:
            if self._pool is None or self._pool_size != workers:
                old = self._pool
                self._pool = ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix=_POOL_PREFIX
                )
                self._pool_size = workers
                if old is not None:
                    old.shutdown(wait=False)
            return self._pool

    def dispatch(self, handles: Sequence[TaskHandle]) -> None:
        # Reported from the committing thread: receivers may use its database connection.
        for handle, error in self.send_all(handles):
            report_failure(handle, error)

    def send_all(
        self,
        handles: Sequence[TaskHandle],
        *,
        timeout: float | None = None,
        on_late: Callable[[TaskHandle, Exception | None], None] | None = None,
    ) -> list[tuple[TaskHandle, Exception]]:
        """Send handles concurrently and wait; the ones that failed, with their errors.

        With a timeout, wait at most that long: a send still running then is left to finish in
        the pool, and on_late(handle, error or None) is called from the pool when it does.
        """
        errors: list[tuple[TaskHandle, Exception]] = []
        if (
            getattr(_worker_state, "active", False)
            or (len(handles) == 1 and timeout is None)
            or get_transport().in_process
        ):
            # One call needs no pool; an in-process transport does no I/O worth overlapping and
            # must run tasks on this thread's connection. And a flush started from a pool thread
            # (a task_enqueued receiver that commits its own transaction) must not wait on its
            # own pool.
            for handle in handles:
                error = _send_one(handle)
                if error is not None:
                    errors.append((handle, error))
        else:
            pool = self._executor()
            futures = [pool.submit(_pooled_send, handle) for handle in handles]
            wait_futures(futures, timeout=timeout)
            for handle, future in zip(handles, futures, strict=True):
                if not future.done():
                    # A send that has not started yet (a busy pool) is not started late: the
                    # caller's fallback (the outbox relay) takes it, and it holds no worker.
                    if on_late is not None and not future.cancel():
                        future.add_done_callback(_late(handle, on_late))
                    continue
                error = future.result()
                if error is not None:
                    errors.append((handle, error))
        return errors

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = None
            self._pool_size = 0


_worker_state = threading.local()


def _late(
    handle: TaskHandle, on_late: Callable[[TaskHandle, Exception | None], None]
) -> Callable[[Future[Exception | None]], None]:
    def done(future: Future[Exception | None]) -> None:
        try:
            on_late(handle, future.result())
        finally:
            # on_late may have opened a connection in this pool thread: close it. (A future
            # that finished just before add_done_callback runs this in the committing thread,
            # whose connections are not ours to close.)
            if threading.current_thread().name.startswith(_POOL_PREFIX):
                connections.close_all()

    return done


def _send_one(handle: TaskHandle) -> Exception | None:
    try:
        send(handle)
    except Exception as exc:
        return exc
    return None


def _pooled_send(handle: TaskHandle) -> Exception | None:
    _worker_state.active = True
    try:
        return _send_one(handle)
    finally:
        _worker_state.active = False
        # A task_enqueued receiver may have opened a connection in this pool thread; the pool
        # lives as long as the process, so close it instead of leaking one per thread.
        connections.close_all()


_dispatcher: ConcurrentDispatcher = ConcurrentDispatcher()


def get_dispatcher() -> ConcurrentDispatcher:
    return _dispatcher


def set_dispatcher(dispatcher: ConcurrentDispatcher) -> ConcurrentDispatcher:
    """Install a dispatcher (a durable outbox, say); returns the previous one."""
    global _dispatcher
    previous, _dispatcher = _dispatcher, dispatcher
    return previous


def report_failure(handle: TaskHandle, error: BaseException) -> None:
    """Log a send that failed after commit and send task_enqueue_failed: never silent."""
    message = handle.message
    logger.error(
        "Sending task %s (task id %s, schedule time %s) after commit failed: %s: %s. "
        "Arguments: args=%r kwargs=%r; message body=%r.",
        message.task_name,
        message.task_id or "chosen by Cloud Tasks",
        message.schedule_time.isoformat() if message.schedule_time else "now",
        type(error).__name__,
        error,
        getattr(handle.call, "args", None),
        getattr(handle.call, "kwargs", None),
        message.body,
        exc_info=error,
    )
    # send_robust: one broken receiver must neither stop the others nor the transaction's
    # other on-commit callbacks.
    responses = signals.task_enqueue_failed.send_robust(
        sender=handle.sender, call=handle.call, message=message, exception=error
    )
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "A task_enqueue_failed receiver raised for task %s: %r (receiver %r).",
                message.task_name,
                response,
                receiver,
                exc_info=response,
            )


# -- per-transaction batches -----------------------------------------------------------------


#: The callable Django holds for one deferred handle; Django drops it on rollback.
_Deferred = Callable[[], None]


@dataclass(eq=False)
class _Entry:
    """One deferred handle (or, for a coalesced binding, a cancellation) and its callable."""

    handle: TaskHandle | None
    ref: weakref.ref[_Deferred]
    #: Entries with the same key coalesce: only the latest alive one is sent.
    key: Hashable | None = None
    #: What a coalescing binding needs to merge the next save into this one.
    state: Any = None


def _make_callback(batch: _Batch) -> _Deferred:
    # A plain function: weak-referenceable, and Django can name it in a log line.
    def cloudtask_on_commit() -> None:
        batch.flush()

    return cloudtask_on_commit


class _Batch:
    """The task calls deferred in one outermost transaction of one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.entries: list[_Entry] = []
        self.keyed: dict[Hashable, list[_Entry]] = {}
        self.flushed = False

    def add(
        self, handle: TaskHandle | None, *, key: Hashable | None = None, state: Any = None
    ) -> _Deferred:
        callback = _make_callback(self)
        # When Django drops the callable (a rollback, or the transaction's end), a handle still
        # pending will never be sent: settle it as dropped, so wait() returns.
        on_drop = handle._dropped if handle is not None else None
        ref = weakref.ref(callback, (lambda _ref: on_drop()) if on_drop else None)
        entry = _Entry(handle, ref, key, state)
        self.entries.append(entry)
        if key is not None:
            self.keyed.setdefault(key, []).append(entry)
        return callback

    def latest(self, key: Hashable) -> _Entry | None:
        """The most recent entry for key whose callable Django still holds."""
        for entry in reversed(self.keyed.get(key, ())):
            if entry.ref() is not None:
                return entry
        return None

    def is_current(self) -> bool:
        """True while this batch belongs to the connection's open transaction."""
        if self.flushed:
            return False
        newest = next((e for e in reversed(self.entries) if e.ref() is not None), None)
        if newest is None:
            return False
        # A callable kept alive by someone else (a list captured in a test) after its
        # transaction ended must not pull later transactions into this batch, so check that
        # Django still holds it. Our newest callable is nearly always last: the scan is short.
        callback = newest.ref()
        # Django stores (savepoint ids, callable, robust) tuples.
        return any(item[1] is callback for item in reversed(self.connection.run_on_commit))

    def flush(self) -> None:
        if self.flushed:
            return
        self.flushed = True
        if _NEEDS_COLLECT:
            # Without reference counting a dropped callable lingers until a collection, and
            # its call would be sent although its savepoint rolled back.
            gc.collect()
        alive = [e for e in self.entries if e.ref() is not None]
        self.entries = []
        self.keyed = {}
        latest: dict[Hashable, _Entry] = {}
        for entry in alive:
            if entry.key is not None:
                latest[entry.key] = entry
        to_send: list[TaskHandle] = []
        superseded: list[TaskHandle] = []
        for entry in alive:
            if entry.handle is None:
                continue
            if entry.key is not None and latest[entry.key] is not entry:
                # Superseded by a later save of the same instance: that one carries the change.
                entry.handle._dropped()
                superseded.append(entry.handle)
            elif entry.handle.state == "pending":
                to_send.append(entry.handle)
        if superseded:
            get_dispatcher().discard(superseded)
        if to_send:
            try:
                get_dispatcher().dispatch(to_send)
            except Exception as exc:
                # The dispatcher should report its own failures; if it raised, report every
                # handle it did not settle, so nothing is lost without a trace.
                for handle in to_send:
                    if handle.state == "pending":
                        handle._failed(exc)
                        report_failure(handle, exc)


_batches = threading.local()
#: CPython frees an object when its last reference goes; other interpreters need a collection.
_NEEDS_COLLECT = sys.implementation.name != "cpython"


def _batch_for(connection: BaseDatabaseWrapper) -> _Batch:
    # Connections are per thread, and so is this table.
    table: dict[str, _Batch] | None = getattr(_batches, "by_alias", None)
    if table is None:
        table = _batches.by_alias = {}
    batch = table.get(connection.alias)
    if batch is None or batch.connection is not connection or not batch.is_current():
        batch = table[connection.alias] = _Batch(connection)
    return batch


def _in_transaction(using: str) -> bool:
    connection = connections[using]
    # Manual transaction management (autocommit off, no atomic block) counts too: the caller
    # has not committed yet, and Django's on_commit() refuses that mode with a clear error.
    return bool(
        connection.in_atomic_block
        or (connection.connection is not None and not connection.autocommit)
    )


def defer(handle: TaskHandle, using: str | None = None) -> TaskHandle:
    """Send handle when the transaction open on `using` commits; at once if none is open.

    Outside a transaction the call is sent now and errors are raised here, as .delay() does.
    Inside one, a rolled-back transaction or savepoint sends nothing; after the commit a failed
    send is logged and signalled (task_enqueue_failed) instead of raised.
    """
    alias = using or DEFAULT_DB_ALIAS
    if not _in_transaction(alias):
        return send(handle)
    _register(handle, alias)
    return handle


def _register(
    handle: TaskHandle | None, alias: str, *, key: Hashable | None = None, state: Any = None
) -> _Deferred:
    connection = connections[alias]
    batch = _batch_for(connection)
    if handle is not None:
        get_dispatcher().prepare(handle, alias)
    callback = batch.add(handle, key=key, state=state)
    django_transaction.on_commit(callback, using=alias, robust=True)
    return callback


def pending_state(key: Hashable, using: str) -> Any:
    """The merge state of the latest surviving deferral for key in the open transaction."""
    connection = connections[using]
    table: dict[str, _Batch] | None = getattr(_batches, "by_alias", None)
    batch = table.get(using) if table else None
    if batch is None or batch.connection is not connection or not batch.is_current():
        return None
    entry = batch.latest(key)
    return entry.state if entry is not None else None


def defer_keyed(handle: TaskHandle | None, using: str, *, key: Hashable, state: Any) -> None:
    """Defer handle so that it replaces earlier deferrals with the same key at commit.

    handle None cancels: the key sends nothing unless a later deferral brings a handle. Each
    deferral has its own on-commit callable, so a savepoint rollback restores the earlier one.
    """
    _register(handle, using, key=key, state=state)


def call_in_transaction(using: str) -> bool:
    """Whether a transaction is open on the alias (bindings coalesce only inside one)."""
    return _in_transaction(using)
