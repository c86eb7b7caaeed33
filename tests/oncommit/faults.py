"""The one fault no real part produces on demand: Cloud Tasks refusing every call."""

from __future__ import annotations

from cloudtask import EnqueueError
from cloudtask.transports.base import BaseTransport, EnqueuedTask, TaskMessage


class UnavailableTransport(BaseTransport):
    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        raise EnqueueError(f"Cloud Tasks is unavailable (task {message.task_name})")
