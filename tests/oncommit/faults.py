"""The one fault no real part produces on demand: Cloud Tasks refusing every call."""

from __future__ import annotations

from cloudtask import EnqueueError
from cloudtask.backends.base import BaseBackend, EnqueuedTask, TaskMessage


class UnavailableBackend(BaseBackend):
    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        raise EnqueueError(f"Cloud Tasks is unavailable (task {message.task_name})")
