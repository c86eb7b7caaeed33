"""Helpers for testing code that sends tasks, without Cloud Tasks, an emulator or a network.

``capture_tasks()`` swaps the backend for ``CaptureBackend``, which records every task it is
given instead of sending it, the way Django's ``mail.outbox`` records e-mail. A captured task
runs on demand through the real endpoint path (``cloudtask.handler.run_message``: signature
check, envelope decoding, registry lookup, signals, response codes), so a test exercises exactly
what Cloud Tasks would trigger.

``send_on_commit_tasks()`` makes on-commit tasks leave inside a ``TestCase``, whose transaction
never commits.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS
from django.http import HttpResponse
from django.test import TestCase, override_settings

from .backends.base import BaseBackend, EnqueuedTask, TaskMessage
from .conf import get_settings
from .exceptions import TaskAlreadyExists

if TYPE_CHECKING:
    from .tasks import Task

__all__ = [
    "CAPTURE_BACKEND",
    "CaptureBackend",
    "CapturedTask",
    "TaskOutbox",
    "TaskRunFailed",
    "capture_tasks",
    "outbox",
    "send_on_commit_tasks",
]

#: The dotted path to put in CLOUDTASK["BACKEND"] to capture tasks in every test.
CAPTURE_BACKEND = "cloudtask.testing.CaptureBackend"

# Guards the outboxes: on-commit tasks are sent from a thread pool.
_lock = threading.RLock()


class TaskRunFailed(AssertionError):
    """TaskOutbox.run_all() ran tasks that answered something other than 2xx."""


@dataclass(eq=False)
class CapturedTask:
    """One task the CaptureBackend accepted: what would have been sent, and a way to run it."""

    #: The encoded message, byte for byte what a real backend would send.
    message: TaskMessage
    #: Full resource name, as a real backend reports it (projects/P/locations/L/queues/Q/tasks/ID).
    name: str
    #: When the backend accepted it.
    enqueued_at: datetime
    #: Every response the endpoint gave to run(), oldest first.
    responses: list[HttpResponse] = field(default_factory=list)

    @property
    def task_name(self) -> str:
        """Registered name of the task."""
        return self.message.task_name

    @property
    def task(self) -> Task[Any, Any]:
        """The Task object (looked up in the registry, as the endpoint does)."""
        from . import registry

        return registry.get(self.message.task_name)

    @property
    def id(self) -> str:
        """Short task id: the name given at send time, or the one the backend generated."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def named(self) -> bool:
        """True when the sender chose the task id (a named task, deduplicated)."""
        return self.message.task_id is not None

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def url(self) -> str:
        return self.message.url

    @property
    def schedule_time(self) -> datetime | None:
        """When delivery was asked for; None means as soon as possible."""
        return self.message.schedule_time

    @property
    def headers(self) -> dict[str, str]:
        return self.message.headers

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON envelope as sent, before argument decoding (tagged values left as they are)."""
        data: dict[str, Any] = json.loads(self.message.body)
        return data

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments, decoded as the endpoint would (model instances fetched afresh)."""
        return self._decoded()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments, decoded as the endpoint would (model instances fetched afresh)."""
        return self._decoded()[1]

    def _decoded(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Decoded on each access: a model argument reflects the database now, as at delivery.
        from .serialization import decode_envelope

        _, args, kwargs = decode_envelope(self.message.body)
        return args, kwargs

    @property
    def attempts(self) -> int:
        """How many times run() delivered this task."""
        return len(self.responses)

    @property
    def succeeded(self) -> bool:
        """True once a run answered 2xx (Cloud Tasks would then forget the task)."""
        return any(200 <= r.status_code < 300 for r in self.responses)

    def delivery_headers(self) -> dict[str, str]:
        """The X-CloudTasks-* headers Cloud Tasks would send with the next attempt."""
        eta = self.schedule_time or self.enqueued_at
        headers = {
            "X-CloudTasks-QueueName": self.queue,
            "X-CloudTasks-TaskName": self.id,
            "X-CloudTasks-TaskRetryCount": str(len(self.responses)),
            # Cloud Tasks counts the responses the handler gave, leaving 5xx failures out.
            "X-CloudTasks-TaskExecutionCount": str(
                sum(1 for r in self.responses if r.status_code < 500)
            ),
            "X-CloudTasks-TaskETA": f"{eta.timestamp():.6f}",
        }
        if self.responses:
            previous = self.responses[-1].status_code
            headers["X-CloudTasks-TaskPreviousResponse"] = str(previous)
            headers["X-CloudTasks-TaskRetryReason"] = f"HTTP status code {previous}"
        return headers

    def run(self, *, propagate: bool = False) -> HttpResponse:
        """Deliver the task once through the real endpoint path and return its response.

        Each call is one attempt: the second run() carries retry count 1, like Cloud Tasks'
        first retry, so a task that reads ``request.retry_count`` can be tested attempt by
        attempt. An exception in the task becomes a 500 response, as in production; with
        ``propagate=True`` it is raised here instead, traceback and all.
        """
        from .handler import run_message

        try:
            response = run_message(
                self.message, cloudtasks_headers=self.delivery_headers(), propagate=propagate
            )
        except Exception:
            # Still one failed attempt: the next run() is the retry, as after a 500.
            self.responses.append(HttpResponse("task failed", status=500))
            raise
        self.responses.append(response)
        return response

    def __repr__(self) -> str:
        when = f" at {self.schedule_time.isoformat()}" if self.schedule_time else ""
        return f"<CapturedTask {self.task_name} id={self.id!r} queue={self.queue!r}{when}>"


class TaskOutbox(list[CapturedTask]):
    """The tasks captured while it was open, in the order they were sent."""

    @property
    def task_names(self) -> list[str]:
        return [captured.task_name for captured in self]

    def for_task(self, task: Task[Any, Any] | str) -> list[CapturedTask]:
        """The captured calls of one task (a Task object or its registered name)."""
        name = task if isinstance(task, str) else task.name
        return [captured for captured in self if captured.task_name == name]

    def run_all(self, *, check: bool = True, limit: int = 1000) -> list[HttpResponse]:
        """Run every captured task that has not run yet, including tasks those tasks send.

        Schedules are ignored: a task scheduled for next week runs now. With ``check`` (the
        default), raise TaskRunFailed after the run if any response was not 2xx. ``limit`` stops a
        task that keeps sending itself.
        """
        responses: list[HttpResponse] = []
        failures: list[str] = []
        while True:
            with _lock:
                pending = next((c for c in self if not c.responses), None)
            if pending is None:
                break
            if len(responses) >= limit:
                raise TaskRunFailed(
                    f"run_all() stopped after {limit} runs: tasks keep sending tasks "
                    f"(last: {pending.task_name}). Raise limit= if that is intended."
                )
            response = pending.run()
            responses.append(response)
            if not 200 <= response.status_code < 300:
                failures.append(
                    f"{pending.task_name} (id {pending.id}) answered {response.status_code}: "
                    f"{response.content[:300].decode(errors='replace')}"
                )
        if check and failures:
            raise TaskRunFailed("Captured tasks failed:\n" + "\n".join(failures))
        return responses


#: Every task a CaptureBackend accepted outside capture_tasks(), like django.core.mail.outbox.
#: Clear it in setUp() when CLOUDTASK["BACKEND"] is CaptureBackend for the whole test run.
outbox = TaskOutbox()
_open_outboxes: list[TaskOutbox] = []


class CaptureBackend(BaseBackend):
    """A backend that records tasks instead of sending them.

    Use it through ``capture_tasks()``, or set ``CLOUDTASK["BACKEND"] =
    "cloudtask.testing.CaptureBackend"`` in test settings to capture everywhere. Like Cloud Tasks,
    it refuses a task id that was already used (TaskAlreadyExists), within the innermost open
    capture_tasks() block, or within ``outbox`` when none is open.
    """

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        settings = get_settings()
        task_id = message.task_id or uuid.uuid4().hex
        name = (
            f"projects/{settings.project or 'local-project'}/locations/"
            f"{settings.location or 'local'}/queues/{message.queue}/tasks/{task_id}"
        )
        captured = CapturedTask(message=message, name=name, enqueued_at=datetime.now(UTC))
        with _lock:
            targets = [outbox, *_open_outboxes]
            scope = targets[-1]
            if message.task_id is not None and any(c.id == task_id for c in scope):
                raise TaskAlreadyExists(
                    f"A task named {task_id!r} was already sent to queue {message.queue!r} "
                    f"(captured by cloudtask.testing)."
                )
            for box in targets:
                box.append(captured)
        return EnqueuedTask(name=name, schedule_time=message.schedule_time)


@contextmanager
def capture_tasks() -> Iterator[TaskOutbox]:
    """Capture every task sent inside the block instead of sending it.

    ::

        with capture_tasks() as outbox:
            place_order(...)
        assert outbox.task_names == ["shop.tasks.send_confirmation"]
        outbox.run_all()

    The backend is switched with override_settings, so the rest of CLOUDTASK (SECRET, URL,
    QUEUE...) stays as configured and captured tasks carry the same signature and headers as
    real ones. Blocks nest; each sees the tasks sent while it was open.
    """
    box = TaskOutbox()
    with _lock:
        _open_outboxes.append(box)
    try:
        if get_settings().backend_path == CAPTURE_BACKEND:
            yield box
        else:
            current = getattr(django_settings, "CLOUDTASK", None) or {}
            with override_settings(CLOUDTASK={**current, "BACKEND": CAPTURE_BACKEND}):
                yield box
    finally:
        with _lock:
            _open_outboxes.remove(box)


@contextmanager
def send_on_commit_tasks(using: str = DEFAULT_DB_ALIAS) -> Iterator[list[Callable[[], Any]]]:
    """When the block ends, send the on-commit tasks deferred so far, as a commit would.

    Django's TestCase runs each test in a transaction that is rolled back, so on_commit
    callbacks, and with them on-commit tasks, never fire. This block runs the callbacks
    registered inside it when it ends (``TestCase.captureOnCommitCallbacks(execute=True)``), and
    cloudtask's callback sends every task still pending in the test's transaction, as a real
    commit sends all of them; tasks deferred in a savepoint that rolled back stay unsent, as in
    production. Blocks may follow one another in one test. Yields the callbacks run.
    """
    with TestCase.captureOnCommitCallbacks(using=using, execute=True) as callbacks:
        yield callbacks
