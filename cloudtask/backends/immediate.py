"""Run each task at once, in the caller's thread, through the endpoint's own code path."""

from __future__ import annotations

import threading
import time
import uuid

from ..exceptions import EnqueueError, TaskAlreadyExists
from .base import BaseBackend, EnqueuedTask, TaskMessage

#: How long a task id stays taken, like Cloud Tasks' dedup window (about an hour).
DEDUP_WINDOW = 3600.0


class ImmediateBackend(BaseBackend):
    """Encodes, signs, decodes and runs through cloudtask.handler.run_message, so a local run
    sees production's argument types and errors. A task's exception reaches the caller of
    .delay() (Discard does not); schedules are ignored (the task runs now); a task id used in
    the last hour raises TaskAlreadyExists, as Cloud Tasks would."""

    supports_schedule = False

    def __init__(self, options: dict[str, object]) -> None:
        super().__init__(options)
        self._taken: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _claim(self, queue: str, task_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._taken) > 10_000:
                self._taken = {k: t for k, t in self._taken.items() if t > now}
            expires = self._taken.get((queue, task_id))
            if expires is not None and expires > now:
                raise TaskAlreadyExists(
                    f"Task {task_id!r} already exists in queue {queue!r} (used in the last hour)."
                )
            self._taken[(queue, task_id)] = now + DEDUP_WINDOW

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        from ..conf import get_settings
        from ..handler import run_message

        settings = get_settings()
        task_id = message.task_id or uuid.uuid4().hex
        if message.task_id is not None:
            self._claim(message.queue, message.task_id)
        name = (
            f"projects/{settings.project or 'local-project'}/locations/"
            f"{settings.location or 'local'}/queues/{message.queue}/tasks/{task_id}"
        )
        response = run_message(
            message,
            propagate=True,
            cloudtasks_headers={
                "X-CloudTasks-QueueName": message.queue,
                "X-CloudTasks-TaskName": task_id,
                "X-CloudTasks-TaskRetryCount": "0",
                "X-CloudTasks-TaskExecutionCount": "0",
                "X-CloudTasks-TaskETA": f"{time.time():.6f}",
            },
        )
        if not 200 <= response.status_code < 300:
            raise EnqueueError(
                f"The endpoint answered {response.status_code} to task {message.task_name!r} "
                "run by the immediate backend (see the 'cloudtask' log)."
            )
        return EnqueuedTask(name=name, schedule_time=message.schedule_time)
