"""The one executor: every way of running a task (the HTTP endpoint, the in-process transports,
cloudtask.testing and ``.execute()``) runs it here, with one outcome model.

=========== ========================================= ===================================
outcome     when                                      what the endpoint answers
=========== ========================================= ===================================
succeeded   the function returned                     200
discarded   it raised Discard, or a model argument    200 (retrying cannot help)
            no longer exists
retry       it raised Retry(after=...)                503 + Retry-After
failed      it raised, attempts remain                500 (Cloud Tasks retries)
exhausted   it raised on its last allowed attempt     200 (max_attempts: stop retrying)
rejected    the arguments do not fit the function     400 (Cloud Tasks retries it, like
                                                      any status outside 2xx: a deploy may
                                                      bring the matching code)
undecodable the arguments can never decode           (endpoint) dead letter + 200 with records,
                                                      else 400
duplicate   (records) the task id already succeeded, was  200, the function is not run again
            discarded or dead-lettered
busy        (records) another delivery of the id is   503 + Retry-After: the lease's rest
            running under a live lease
=========== ========================================= ===================================

With execution records on (CLOUDTASK["RECORDS"]), every delivery that carries a task id claims
it first (cloudtask.records) and settles it after; "exhausted" also keeps a dead letter. A task
declared ``atomic=True`` runs in a transaction that also writes its "succeeded" record, so its
database effects and the record commit together or not at all.

The signals task_started, task_succeeded and task_failed are sent from here and nowhere else.
"""

from __future__ import annotations

import enum
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from django.db import transaction

from . import records, signals
from .conf import get_settings
from .exceptions import Discard, InvalidTaskRequest, ObjectDeleted, Retry
from .request import CloudTaskRequest
from .serialization import decode_arguments

__all__ = [
    "ArgumentCheck",
    "Execution",
    "Outcome",
    "Runnable",
    "execute",
    "execute_encoded",
    "run_coroutine",
]

logger = logging.getLogger("cloudtask")


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    DISCARDED = "discarded"
    RETRY = "retry"
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    BUSY = "busy"
    UNDECODABLE = "undecodable"


#: Outcomes after which Cloud Tasks will not try again (a rejected request is a 4xx, which Cloud
#: Tasks retries like any other status outside 2xx).
FINAL = frozenset({Outcome.SUCCEEDED, Outcome.DISCARDED, Outcome.EXHAUSTED, Outcome.DUPLICATE})


@dataclass(frozen=True, slots=True)
class Execution:
    """What one attempt of a task came to."""

    outcome: Outcome
    #: The function's return value (succeeded only).
    value: Any = None
    #: The exception behind every outcome but succeeded.
    error: BaseException | None = None
    #: Seconds the task asked to wait before the next attempt (retry only).
    retry_after: float | None = None

    @property
    def final(self) -> bool:
        """True when no further attempt will follow."""
        return self.outcome in FINAL


class Runnable(Protocol):
    """What the executor needs of a registered task (seed-API Task or django.tasks adapter)."""

    @property
    def name(self) -> str: ...

    @property
    def max_attempts(self) -> int | None: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def dispatch_deadline(self) -> timedelta | None: ...

    @property
    def atomic(self) -> bool:
        """Run the function and its "succeeded" record in one database transaction."""

    @property
    def arguments(self) -> ArgumentCheck:
        """The function's signature check: the executor asks it first, and arguments_error()
        only for the message of a mismatch."""

    def arguments_error(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        """Why these arguments do not fit the function, or None."""

    def invoke(
        self, request: CloudTaskRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call the function (an async one through run_coroutine) and return its result."""


class ArgumentCheck:
    """Whether arguments fit a signature, without binding them (a bind costs every delivery
    several microseconds; the common all-positional-or-keyword signature needs two set
    comparisons).

    Checked before the call, so a mismatch is told apart from a TypeError the task raises,
    however many decorators wrap the function.
    """

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = list(signature.parameters.values())
        self.simple = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        self.names = tuple(p.name for p in params)
        self.name_set = frozenset(self.names)
        self.required = tuple(
            (i, p.name) for i, p in enumerate(params) if p.default is inspect.Parameter.empty
        )
        # Indexed by the number of positional arguments given (0 to all): the parameters still
        # open to a keyword, and the required ones among them, which a keyword must fill.
        self.open = tuple(frozenset(self.names[given:]) for given in range(len(params) + 1))
        self.still_required = tuple(
            frozenset(name for index, name in self.required if index >= given)
            for given in range(len(params) + 1)
        )

    def error(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        if not self.simple:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                return str(exc)
            return None
        count = len(args)
        if count < len(self.open):
            keywords = kwargs.keys()
            if keywords <= self.open[count] and self.still_required[count] <= keywords:
                return None  # the usual call: every argument fits
        # Something does not fit: the same messages, in the same order, as
        # inspect.Signature.bind().
        if count > len(self.names):
            return "too many positional arguments"
        for key in kwargs:
            if key not in self.name_set:
                return f"got an unexpected keyword argument {key!r}"
            if self.names.index(key) < count:
                return f"multiple values for argument {key!r}"
        for index, name in self.required:
            if index >= count and name not in kwargs:
                return f"missing a required argument: {name!r}"
        return None


def run_coroutine(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an ``async def`` task from the synchronous endpoint.

    Under ASGI the endpoint runs in a sync_to_async worker thread, and async_to_sync hands the
    coroutine back to the server's event loop, so it runs there natively; under WSGI it runs in
    an event loop of its own.
    """
    return async_to_sync(func)(*args, **kwargs)


def _exhausted(task: Runnable, request: CloudTaskRequest) -> bool:
    if request.is_local:
        return True  # an inline run (.execute()) has no queue behind it to retry
    limit = task.max_attempts
    return limit is not None and request.retry_count + 1 >= limit


def execute_encoded(
    task: Runnable, request: CloudTaskRequest, raw_args: list[Any], raw_kwargs: dict[str, Any]
) -> Execution:
    """Decode the arguments of a delivery, then execute()."""
    try:
        args, kwargs = decode_arguments(raw_args, raw_kwargs)
    except InvalidTaskRequest as exc:
        logger.warning("Malformed arguments for task %s: %s", task.name, exc)
        return Execution(Outcome.UNDECODABLE, error=exc)
    except ObjectDeleted as exc:
        # Retrying cannot bring a deleted row back.
        logger.warning("Task %s not run: %s", task.name, exc)
        signals.task_failed.send(sender=task, request=request, exception=exc, final=True)
        return Execution(Outcome.DISCARDED, error=exc)
    return execute(task, request, args, kwargs)


def _claim(task: Runnable, request: CloudTaskRequest) -> records.Claim | None:
    """The delivery's hold on its task id (records on, not an inline run); None for a delivery
    without a task id, which runs without a record."""
    task_id = request.task_id
    if not task_id:
        return None
    lease = task.dispatch_deadline or get_settings().dispatch_deadline or records.DEFAULT_LEASE
    return records.claim(
        task_id,
        task.name,
        request.queue_name or task.queue or "",
        lease,
        eta=request.given_eta,
        retry_count=request.retry_count,
    )


def execute(
    task: Runnable, request: CloudTaskRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Execution:
    """Run one attempt of task with decoded arguments and say what it came to."""
    # arguments_error() adds advice to the check's message (a missing request parameter):
    # asked only when the check finds a mismatch.
    if task.arguments.error(args, kwargs) is not None:
        mismatch = task.arguments_error(args, kwargs)
        error = InvalidTaskRequest(f"Arguments do not fit task {task.name}: {mismatch}")
        logger.warning("%s", error)
        signals.task_failed.send(sender=task, request=request, exception=error, final=False)
        return Execution(Outcome.REJECTED, error=error)
    # An inline run has no queue behind it to redeliver, so nothing to claim; the check of
    # the setting comes before the task id, which is read from the headers on first use.
    held = None if request.is_local or not get_settings().records else _claim(task, request)
    if held is not None and not held.run:
        if held.busy_for is not None:
            logger.info(
                "Task %s (%s) is running elsewhere under a lease; asked to retry in %.0f s.",
                task.name,
                request.task_id,
                held.busy_for,
            )
            return Execution(Outcome.BUSY, retry_after=held.busy_for)
        logger.info(
            "Duplicate delivery of task %s (%s), already %s: not run again.",
            task.name,
            request.task_id,
            held.finished_status,
        )
        return Execution(Outcome.DUPLICATE)
    # Signal.send with no receivers returns at once, but its call and keyword arguments cost
    # ten times this test of the receiver list it starts with.
    if signals.task_started.receivers:
        signals.task_started.send(sender=task, request=request, args=args, kwargs=kwargs)
    started = time.monotonic()
    try:
        if task.atomic:
            with transaction.atomic(using=records.records_database()):
                value = task.invoke(request, args, kwargs)
                if held is not None:
                    duration = time.monotonic() - started
                    if records.finish(held, SUCCEEDED, duration=duration, value=value) is None:
                        raise _LeaseLost
        else:
            value = task.invoke(request, args, kwargs)
    except _LeaseLost:
        logger.warning(
            "Task %s (%s) outlived its lease; a newer attempt took over, so this attempt's "
            "transaction was rolled back.",
            task.name,
            request.task_id,
        )
        return Execution(Outcome.DUPLICATE)
    except (Discard, ObjectDeleted) as exc:
        logger.info("Task %s (%s) stopped for good: %r", task.name, request.task_id, exc)
        if held is not None:
            _settle(task, request, held, DISCARDED, time.monotonic() - started, error=exc)
        signals.task_failed.send(sender=task, request=request, exception=exc, final=True)
        return Execution(Outcome.DISCARDED, error=exc)
    except Exception as exc:
        execution = _failed(task, request, exc)
        if held is not None:
            _record_failure(task, request, held, execution, time.monotonic() - started)
        return execution
    if held is not None and not task.atomic:
        _settle(task, request, held, SUCCEEDED, time.monotonic() - started, value=value)
    if signals.task_succeeded.receivers:
        signals.task_succeeded.send(sender=task, request=request, result=value)
    return Execution(Outcome.SUCCEEDED, value=value) if value is not None else SUCCESS


#: The usual success (no return value), built once (building a frozen dataclass costs about
#: half a microsecond); the endpoint answers it without looking further.
SUCCESS = Execution(Outcome.SUCCEEDED)


SUCCEEDED = "succeeded"
DISCARDED = "discarded"


class _LeaseLost(Exception):
    """An atomic attempt found its claim taken by a newer attempt: roll its work back."""


def _settle(
    task: Runnable,
    request: CloudTaskRequest,
    held: records.Claim,
    status: str,
    duration: float,
    *,
    value: Any = None,
    error: BaseException | None = None,
) -> list[dict[str, Any]] | None:
    """Finish the claim; warn when the attempt outlived its lease and lost its record."""
    errors = records.finish(held, status, duration=duration, value=value, error=error)
    if errors is None:
        logger.warning(
            "Task %s (%s) outlived its lease: a newer attempt owns the record, which keeps that "
            "attempt's outcome, not this one's (%s).",
            task.name,
            request.task_id,
            status,
        )
    return errors


def _record_failure(
    task: Runnable,
    request: CloudTaskRequest,
    held: records.Claim,
    execution: Execution,
    duration: float,
) -> None:
    assert execution.error is not None
    dead = execution.outcome is Outcome.EXHAUSTED
    errors = _settle(
        task, request, held, "dead" if dead else "failed", duration, error=execution.error
    )
    if dead and errors is not None:
        records.dead_letter(
            reason="exhausted",
            task_id=request.task_id or "",
            task_name=task.name,
            queue=request.queue_name or task.queue or "",
            body=request.request.body,
            headers=dict(request.headers),
            attempts=held.attempts,
            errors=errors,
        )


def _failed(task: Runnable, request: CloudTaskRequest, exc: Exception) -> Execution:
    final = _exhausted(task, request)
    attempt = request.retry_count + 1
    if final:
        logger.error(
            "Task %s (%s) failed for good on attempt %d of %s; not retried.",
            task.name,
            request.task_id,
            attempt,
            "1 (run inline)" if request.is_local else task.max_attempts,
            exc_info=exc,
        )
    elif isinstance(exc, Retry):
        # A retry the task asked for is expected (a timeout it knows to be transient): one line,
        # no traceback, so it does not read like a crash; an unexpected exception gets both.
        logger.warning(
            "Task %s (%s) asked for a retry on attempt %d: %s: %s",
            task.name,
            request.task_id,
            attempt,
            type(exc).__name__,
            exc,
        )
    else:
        logger.error(
            "Task %s (%s) failed on attempt %d; Cloud Tasks will retry.",
            task.name,
            request.task_id,
            attempt,
            exc_info=exc,
        )
    signals.task_failed.send(sender=task, request=request, exception=exc, final=final)
    if final:
        return Execution(Outcome.EXHAUSTED, error=exc)
    if isinstance(exc, Retry):
        return Execution(Outcome.RETRY, error=exc, retry_after=exc.after)
    return Execution(Outcome.FAILED, error=exc)
