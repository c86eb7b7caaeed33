"""The capture transport: records task calls instead of sending them (cloudtask.testing).

A captured task runs on demand through this site's real endpoint (transports.local: signature
check, envelope decoding, registry lookup, the one executor, signals, response codes), so a test
exercises exactly what Cloud Tasks would trigger.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.http import HttpResponse

from .. import registry
from ..exceptions import TaskAlreadyExists
from ..message import delivery_headers, resource_name
from ..serialization import decode_envelope
from . import local
from .base import BaseTransport, EnqueuedTask, TaskMessage

__all__ = [
    "CaptureTransport",
    "CapturedTask",
    "TaskOutbox",
    "TaskRunFailed",
    "open_outboxes",
    "outbox",
]

# Guards the outboxes: on-commit tasks are sent from a thread pool.
lock = threading.RLock()


class TaskRunFailed(AssertionError):
    """TaskOutbox.run_all() ran tasks that answered something other than 2xx."""


@dataclass(eq=False)
class CapturedTask:
    """One task the CaptureBackend accepted: what would have been sent, and a way to run it."""

    #: The encoded message, byte for byte what a real backend would send.
    message: TaskMessage
    #: Full resource name, as Cloud Tasks reports it (projects/P/locations/L/queues/Q/tasks/ID).
    resource_name: str
    #: When the backend accepted it.
    enqueued_at: datetime
    #: Every response the endpoint gave to run(), oldest first.
    responses: list[HttpResponse] = field(default_factory=list)

    @property
    def task_name(self) -> str:
        """Registered name of the task."""
        return self.message.task_name

    @property
    def task(self) -> Any:
        """The registered task (looked up in the registry, as the endpoint does)."""
        return registry.get(self.message.task_name)

    @property
    def task_id(self) -> str:
        """Short Cloud Tasks task id: the one given at send time, or one the transport chose."""
        return self.resource_name.rsplit("/", 1)[-1]

    @property
    def id(self) -> str:
        """Alias of task_id."""
        return self.task_id

    @property
    def name(self) -> str:
        """Alias of resource_name."""
        return self.resource_name

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
        return delivery_headers(
            self.queue,
            self.task_id,
            eta=self.schedule_time or self.enqueued_at,
            retry_count=len(self.responses),
            # Cloud Tasks counts the responses the handler gave, leaving 5xx failures out.
            execution_count=sum(1 for r in self.responses if r.status_code < 500),
            previous_response=self.responses[-1].status_code if self.responses else None,
        )

    def run(self, *, propagate: bool = False) -> HttpResponse:
        """Deliver the task once through the real endpoint path and return its response.

        Each call is one attempt: the second run() carries retry count 1, like Cloud Tasks'
        first retry, so a task that reads ``request.retry_count`` can be tested attempt by
        attempt. An exception in the task becomes a 500 response, as in production; with
        ``propagate=True`` it is raised here instead, traceback and all.
        """
        try:
            response = local.deliver(self.message, self.delivery_headers(), propagate=propagate)
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

    def for_task(self, task: Any) -> list[CapturedTask]:
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
            with lock:
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


#: Every task a CaptureTransport accepted outside capture_tasks(), like django.core.mail.outbox.
#: Clear it in setUp() when CLOUDTASK["TRANSPORT"] is "capture" for the whole test run.
outbox = TaskOutbox()
open_outboxes: list[TaskOutbox] = []


class CaptureTransport(BaseTransport):
    """A transport that records tasks instead of sending them.

    Use it through ``cloudtask.testing.capture_tasks()``, or set ``CLOUDTASK["TRANSPORT"] =
    "capture"`` in test settings to capture everywhere. Like Cloud Tasks, it refuses a task id
    that was already used (TaskAlreadyExists), within the innermost open capture_tasks() block,
    or within ``outbox`` when none is open.
    """

    in_process = True
    #: Its dotted path (CLOUDTASK["TRANSPORT"] = "capture" names it too).
    path = "cloudtask.transports.capture.CaptureTransport"

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        project, location = self.project_location()
        task_id = message.task_id or uuid.uuid4().hex
        name = resource_name(project, location, message.queue, task_id)
        captured = CapturedTask(message=message, resource_name=name, enqueued_at=datetime.now(UTC))
        with lock:
            targets = [outbox, *open_outboxes]
            scope = targets[-1]
            if message.task_id is not None and any(c.task_id == task_id for c in scope):
                raise TaskAlreadyExists(
                    f"A task named {task_id!r} was already sent to queue {message.queue!r} "
                    f"(captured by cloudtask.testing)."
                )
            for box in targets:
                box.append(captured)
        return EnqueuedTask(resource_name=name, schedule_time=message.schedule_time)
