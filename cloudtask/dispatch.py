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
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
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

#: Guards making a handle's event (two threads waiting on one handle make one event).
_EVENT_LOCK = threading.Lock()


class TaskHandle:
    """One dispatched task call: pending until it settles as sent, failed, dropped (its
    transaction or savepoint rolled back, or a later save of the same instance superseded it) or
    outboxed (committed to the transactional outbox, not yet accepted by Cloud Tasks: the relay
    sends it; a send still in flight may turn it sent later). Every handle settles, so wait()
    always returns."""

    def __init__(
        self,
        message: TaskMessage,
        *,
        call: Any = None,
        sender: Any = None,
        on_sent: Callable[[TaskHandle], None] | None = None,
        id_generated: bool = False,
    ) -> None:
        self.message = message
        #: The front-end's call object (a TaskCall, a django.tasks TaskResult), for signals.
        self.call = call
        #: The sender of cloudtask's signals about this call (the Task object).
        self.sender = sender
        #: The front-end's own step once the call is sent (now or at commit), run just before
        #: cloudtask's task_enqueued: the django.tasks backend sends Django's signal there.
        self.on_sent = on_sent
        #: message.task_id was made up by a front-end (the django.tasks backend fixes its
        #: results' ids up front), not chosen by the caller: Cloud Tasks' ALREADY_EXISTS for it
        #: can only mean that this very call was sent already.
        self.id_generated = id_generated
        self.state: State = "pending"
        #: Full resource name, projects/P/locations/L/queues/Q/tasks/ID, once sent.
        self.resource_name: str | None = None
        #: When Cloud Tasks will deliver it (as asked, or when it actually ran for a transport
        #: that does not schedule).
        self.schedule_time: datetime | None = message.schedule_time
        self.error: BaseException | None = None
        #: Its row in the transactional outbox (cloudtask.outbox), while it has one.
        self.outbox: Any = None
        self._settled = False
        # Made by the first wait() on an unsettled handle: most handles settle before anyone
        # waits (a .delay() returns settled), and an Event (a Condition and its locks) would
        # cost each call more than the rest of the handle.
        self._event: threading.Event | None = None

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
        return self._settled

    def get_result(self) -> TaskExecution | None:
        """What became of the task so far, from its execution record (CLOUDTASK["RECORDS"]):
        status, attempts, timestamps, return_value, errors. None until a delivery started."""
        task_id = self.task_id
        return records.lookup(task_id) if task_id else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until sent, failed or dropped (an on-commit call settles at commit or
        rollback); True once settled."""
        if self._settled:
            return True
        event = self._event
        if event is None:
            made = threading.Event()  # made outside the lock: nothing runs under it but checks
            with _EVENT_LOCK:
                event = self._event
                if event is None:
                    event = self._event = made
        # Settled meanwhile, maybe before the event existed, so nobody will set it.
        if self._settled:
            return True
        return event.wait(timeout)

    def _settle(self) -> None:
        # The mirror of wait(): the flag is written before the event is read, wait() writes
        # the event before it reads the flag, so one of them sees the other. No lock here: a
        # rollback settles handles from a weakref callback, which the garbage collector may
        # run inside any allocation, wait()'s included.
        self._settled = True
        event = self._event
        if event is not None:
            event.set()

    def _sent(self, enqueued: EnqueuedTask) -> None:
        self.resource_name = enqueued.resource_name
        if enqueued.schedule_time is not None:
            self.schedule_time = enqueued.schedule_time
        self.state = "sent"
        self._settle()

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.state = "failed"
        self._settle()

    def _dropped(self) -> None:
        if self.state == "pending":
            self.state = "dropped"
            self._settle()

    def _outboxed(self, exc: BaseException | None) -> None:
        if self.state != "sent":
            self.error = exc
            self.state = "outboxed"
            self._settle()

    def __repr__(self) -> str:
        where = f" {self.resource_name}" if self.resource_name else ""
        return f"<TaskHandle {self.message.task_name} {self.state}{where}>"


def _refuse_unsupported(transport: BaseTransport, message: TaskMessage) -> None:
    """Raise for a call with a task id on a transport that would not deduplicate it. send()
    tests the flag itself first, so a call on a transport that supports ids pays no call."""
    if message.task_id is not None and not transport.supports_named:
        raise ConfigurationError(
            f"Task {message.task_name!r} has task id {message.task_id!r}, but the "
            f"{type(transport).__name__} transport does not refuse reused ids "
            "(supports_named is False), so the call would not be deduplicated. Use a transport "
            'that does (CLOUDTASK["TRANSPORT"]), or send it without an id.'
        )


def _ran_early(transport: BaseTransport, message: TaskMessage, enqueued: EnqueuedTask) -> None:
    """Log a call scheduled ahead that a transport without schedules ran at once."""
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
    message = handle.message
    try:
        if message.task_id is not None and not transport.supports_named:
            _refuse_unsupported(transport, message)
        enqueued = transport.enqueue(message)
    except BaseException as exc:
        handle._failed(exc)
        raise
    if not transport.supports_schedule:
        _ran_early(transport, message, enqueued)
    handle._sent(enqueued)
    if handle.on_sent is not None:
        handle.on_sent(handle)
    signals.task_enqueued.send(sender=handle.sender, call=handle.call, handle=handle)
    return handle


async def asend(handle: TaskHandle) -> TaskHandle:
    """send() for the event loop: the transport's async path, never blocking the loop."""
    transport = get_transport()
    message = handle.message
    try:
        if message.task_id is not None and not transport.supports_named:
            _refuse_unsupported(transport, message)
        enqueued = await transport.aenqueue(message)
    except BaseException as exc:
        handle._failed(exc)
        raise
    if not transport.supports_schedule:
        _ran_early(transport, message, enqueued)
    handle._sent(enqueued)
    if handle.on_sent is not None:
        handle.on_sent(handle)
    signals.task_enqueued.send(sender=handle.sender, call=handle.call, handle=handle)
    return handle


def dispatch(
    message: TaskMessage,
    *,
    call: Any = None,
    sender: Any = None,
    on_commit: bool = False,
    using: str | None = None,
    on_sent: Callable[[TaskHandle], None] | None = None,
    id_generated: bool = False,
) -> TaskHandle:
    """The one dispatch path: send message now, or when the transaction open on ``using``
    commits (``on_commit``; now if none is open). Returns its handle."""
    handle = TaskHandle(
        message, call=call, sender=sender, on_sent=on_sent, id_generated=id_generated
    )
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
    on_sent: Callable[[TaskHandle], None] | None = None,
    id_generated: bool = False,
) -> TaskHandle:
    """dispatch() for the event loop: sent on the transport's async path, or, for an on-commit
    call made while a transaction is open, deferred like dispatch() does.

    Django's connections belong to threads: the transaction, if any, is open in the sync thread
    that awaits this coroutine (async_to_sync), not in the event loop's. The check and the
    deferral run there, through a thread-sensitive sync_to_async hop (on-commit calls only).
    """
    handle = TaskHandle(
        message, call=call, sender=sender, on_sent=on_sent, id_generated=id_generated
    )
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
    the transaction when a call is deferred, ``write`` runs inside it just before its COMMIT
    with the calls that survived (store them in the same transaction, all together),
    ``dispatch`` runs after the commit (send them, mark the rows sent; a relay sends whatever a
    crashed process left behind). TaskMessage is a plain frozen dataclass, so it stores as it is.
    """

    def prepare(self, handle: TaskHandle, using: str) -> bool:
        """Called inside the transaction, at the line that deferred the call. True asks for
        write() with this handle just before the transaction commits, if the call survives."""
        return False

    def write(self, handles: Sequence[TaskHandle], using: str) -> None:
        """Called inside the transaction on ``using``, just before its COMMIT, with the handles
        prepare() asked for that survived (no rolled-back savepoint, not superseded). Not
        called without a real commit (a TestCase). An exception fails the commit: the caller's
        atomic block rolls back and raises it (a DatabaseError; any other is wrapped in one)."""

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
#
# Writing just before the commit. A dispatcher whose prepare() returns True (the outbox) gets
# write() called inside the transaction, right before its COMMIT, with the transaction's
# surviving calls, so that it stores them together in a few statements instead of one INSERT
# per call at the line that made it (a round trip, and the ORM's per-object work, each time).
# Django has no pre-commit hook, so cloudtask shadows the connection object's ``_commit``
# method with a _CommitHook (an instance attribute, installed once per connection object, the
# first time the connection gets a call to write). Why there:
#
# * Atomic.__exit__ calls connection.commit(), hence _commit(), for the outermost block only,
#   after leaving the atomic block and before Django runs the on_commit callables: the
#   transaction is still open, and connection.run_on_commit still lists the callables that
#   survived. A manual transaction (autocommit off) defers only inside an atomic block (outside
#   one, Django's on_commit() refuses), and Django keeps its callables through every
#   transaction.commit() until set_autocommit(True) runs them: calls made between two commits
#   join the same batch. So each commit writes the batch's surviving calls not written yet,
#   the survivors accumulate, and a call needing a write hands its batch to the hook again
#   whenever the hook is not watching it (each commit lets go of the batches it wrote).
# * A DatabaseError raised from _commit makes Atomic.__exit__ roll back and re-raise it: the
#   caller's ``with atomic()`` raises, nothing is committed, and the rollback drops every
#   callable, so nothing is sent. The hook turns any other failure of the write into a
#   DatabaseError, so that this holds whatever went wrong.
# * Savepoints release through _savepoint_commit, not _commit, and a TestCase never commits:
#   captureOnCommitCallbacks(execute=True) runs the callables without a commit. Its calls are
#   then sent without rows, which there was no commit to make durable (the dispatcher sees
#   handles that prepare() marked and write() never got).
#
# Which calls survive is read from connection.run_on_commit (a rolled-back savepoint's
# callables are removed from it), not from the weak references, which stay alive while anyone
# else holds a callable. A rolled-back transaction empties run_on_commit, so a batch it left
# behind writes nothing, whatever commit comes next on that connection; the hook forgets such
# batches as soon as it is handed a new one.


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
    #: The dispatcher asked to write this handle before the commit (its prepare() said so).
    write: bool = False
    #: A commit wrote it (a manual transaction's later commits must not write it again).
    written: bool = False
    #: Settles the handle when Django drops the callable (None without a handle).
    on_drop: _OnDrop | None = None


class _OnDrop:
    """The callback of an entry's weak reference: Django dropped the callable without running
    it (a rollback, or the transaction's end), so a handle still pending will not be sent by
    this process. Without a row it is dropped; with a row an earlier commit made durable (a
    manual transaction rolled back after a commit) it is outboxed: the relay sends it. (Not a
    closure over the entry: the entry holds the reference, and the cycle would keep both.)"""

    __slots__ = ("committed", "handle")

    def __init__(self, handle: TaskHandle) -> None:
        self.handle = handle
        self.committed = False

    def __call__(self, _ref: object) -> None:
        if not self.committed:
            self.handle._dropped()
        elif self.handle.state == "pending":
            self.handle._outboxed(None)


def _make_callback(batch: _Batch) -> _Deferred:
    # A plain function: weak-referenceable, and Django can name it in a log line.
    def cloudtask_on_commit() -> None:
        batch.flush()

    return cloudtask_on_commit


def _split(entries: Sequence[_Entry]) -> tuple[list[_Entry], list[TaskHandle]]:
    """The entries to send (the latest of each key, still pending), and the handles that a
    later entry with the same key superseded."""
    latest: dict[Hashable, _Entry] = {}
    for entry in entries:
        if entry.key is not None:
            latest[entry.key] = entry
    to_send: list[_Entry] = []
    superseded: list[TaskHandle] = []
    for entry in entries:
        if entry.handle is None:
            continue
        if entry.key is not None and latest[entry.key] is not entry:
            # Superseded by a later save of the same instance: that one carries the change.
            superseded.append(entry.handle)
        elif entry.handle.state == "pending":
            to_send.append(entry)
    return to_send, superseded


class _Batch:
    """The task calls deferred in one outermost transaction of one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.entries: list[_Entry] = []
        self.keyed: dict[Hashable, list[_Entry]] = {}
        self.flushed = False
        #: The dispatcher that asked for a write before the commit (None: nothing to write).
        self.writer: Dispatcher | None = None
        #: The entries that survived to the commit, as the write before it found them (in a
        #: manual transaction, to any of its commits so far); None until then (and for good
        #: without a real commit: the weak references tell).
        self.survivors: list[_Entry] | None = None
        #: The connection's _CommitHook holds this batch for its next commit.
        self.watched = False

    def add(
        self,
        handle: TaskHandle | None,
        *,
        key: Hashable | None = None,
        state: Any = None,
        write: bool = False,
    ) -> _Deferred:
        callback = _make_callback(self)
        # When Django drops the callable, a handle still pending must settle all the same, so
        # that wait() returns.
        on_drop = _OnDrop(handle) if handle is not None else None
        ref = weakref.ref(callback, on_drop)
        entry = _Entry(handle, ref, key, state, write, on_drop=on_drop)
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

    def before_commit(self) -> None:
        """Inside the transaction, just before a COMMIT (the _CommitHook): note which
        entries survived, and have the dispatcher write those that asked for it and that no
        earlier commit (of a manual transaction) wrote."""
        if self.flushed:
            return
        # Earlier survivors stay: their rows are committed, and Django still holds their
        # callables (a rollback since would have dropped them all, and this batch with them).
        known = {id(entry) for entry in self.survivors or ()}
        known.update(id(entry) for entry in self._held())
        survivors = [entry for entry in self.entries if id(entry) in known]
        to_send, _ = _split(survivors)
        to_write = [e for e in to_send if e.write and not e.written and e.handle is not None]
        if to_write and self.writer is not None:
            self.writer.write([e.handle for e in to_write if e.handle], self.connection.alias)
        for entry in to_write:
            entry.written = True
        self.survivors = survivors

    def committed(self) -> None:
        """The COMMIT after before_commit() succeeded: the rows written are durable, so a
        handle whose callable a later rollback drops (a manual transaction) is the relay's."""
        for entry in self.survivors or ():
            if entry.written and entry.on_drop is not None:
                entry.on_drop.committed = True

    def _held(self) -> list[_Entry]:
        """The entries whose callable Django holds. (A function of its own: a failing write
        keeps the frames below it in its traceback, and no callable may stay alive in one,
        or its handle would never settle as dropped.)"""
        # A dead weak reference is skipped before its id is looked up: no recycled id matches.
        held = {id(item[1]) for item in self.connection.run_on_commit}
        return [e for e in self.entries if (alive := e.ref()) is not None and id(alive) in held]

    def abandon(self) -> None:
        """The write before the commit failed: the transaction rolls back, nothing is sent.
        (Only what an earlier commit of a manual transaction wrote stays: its rows are
        committed.)"""
        earlier = self.survivors or []
        kept = {id(entry) for entry in earlier}
        for entry in self.entries:
            if entry.handle is not None and id(entry) not in kept:
                entry.handle._dropped()
        self.entries = list(earlier)
        self.keyed = {}
        for entry in earlier:
            if entry.key is not None:
                self.keyed.setdefault(entry.key, []).append(entry)
        if not earlier:
            self.flushed = True
            self.survivors = None

    def flush(self) -> None:
        if self.flushed:
            return
        self.flushed = True
        if self.survivors is not None:
            # A real commit: send exactly what was written before it. A call Django dropped
            # that someone else keeps alive is dropped here, not sent.
            alive = self.survivors
            kept = {id(entry) for entry in alive}
            for entry in self.entries:
                if entry.handle is not None and id(entry) not in kept:
                    entry.handle._dropped()
        else:
            if _NEEDS_COLLECT:
                # Without reference counting a dropped callable lingers until a collection,
                # and its call would be sent although its savepoint rolled back.
                gc.collect()
            alive = [e for e in self.entries if e.ref() is not None]
        self.entries = []
        self.keyed = {}
        self.survivors = None
        entries, superseded = _split(alive)
        for handle in superseded:
            handle._dropped()
        to_send = [entry.handle for entry in entries if entry.handle is not None]
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


class _CommitHook:
    """Stands in for one connection object's ``_commit`` (see the comment above _Deferred):
    writes the batches that asked for it, then commits as the original method does."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.commit: Callable[[], Any] = connection._commit  # type: ignore[attr-defined]
        self.batches: list[_Batch] = []

    def watch(self, batch: _Batch) -> None:
        # A batch whose transaction ended (rolled back, or a TestCase's) goes: it has nothing
        # left to write, and must not be held until a commit that may never come.
        kept = [b for b in self.batches if b is not batch and b.is_current()]
        for gone in self.batches:
            gone.watched = False
        self.batches = [*kept, batch]
        for held in self.batches:
            held.watched = True

    def __call__(self) -> Any:
        batches, self.batches = self.batches, []
        for batch in batches:
            batch.watched = False  # a later call of a manual transaction hands it back
        # No open connection: nothing to commit (the original does nothing), and a write would
        # open a new connection outside the transaction.
        if self.connection.connection is not None:
            try:
                for batch in batches:
                    batch.before_commit()
            except Exception as exc:
                for batch in batches:
                    batch.abandon()
                if isinstance(exc, DatabaseError):
                    raise
                # Atomic.__exit__ rolls back only on a DatabaseError: anything else would
                # leave the transaction open behind an exception.
                raise DatabaseError(
                    f"Writing the task calls of the transaction on database "
                    f"{self.connection.alias!r} before its commit failed: "
                    f"{type(exc).__name__}: {exc}. The transaction is rolled back."
                ) from exc
        result = self.commit()
        for batch in batches:
            batch.committed()
        return result


def _commit_hook(connection: BaseDatabaseWrapper) -> _CommitHook:
    # The instance's own attribute (vars(), not getattr, which would find the class's method).
    hook = vars(connection).get("_commit")
    if not isinstance(hook, _CommitHook):
        hook = _CommitHook(connection)
        vars(connection)["_commit"] = hook
    return hook


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
    dispatcher = get_dispatcher()
    write = handle is not None and dispatcher.prepare(handle, alias)
    callback = batch.add(handle, key=key, state=state, write=write)
    django_transaction.on_commit(callback, using=alias, robust=True)
    # Only once Django holds the callable: if on_commit() refused (autocommit off outside an
    # atomic block), there is nothing to write. Again after each commit of a manual
    # transaction that wrote this batch: its next commit writes this call.
    if write:
        if batch.writer is None:
            batch.writer = dispatcher
        if not batch.watched:
            _commit_hook(connection).watch(batch)
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
