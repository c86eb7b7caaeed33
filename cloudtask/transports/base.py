"""The one interface every transport implements: turn an encoded TaskMessage into a queued task."""

from __future__ import annotations

import abc
import asyncio

from ..conf import CloudTaskSettings
from ..message import EnqueuedTask, TaskMessage

__all__ = ["BaseTransport", "EnqueuedTask", "TaskMessage"]


class BaseTransport(abc.ABC):
    """Where task calls are sent. Subclasses implement enqueue(); one instance serves a process.

    The capability flags are read by the dispatch layer and the django.tasks backend, which turn
    them into behaviour and errors; a transport only states what it does. A transport that can
    send from an event loop overrides aenqueue(); the base runs enqueue() in a worker thread.
    """

    #: Delivery waits for a message's schedule_time. False: the task runs when sent, and the
    #: handle's schedule_time says so.
    supports_schedule: bool = True
    #: A task id used recently is refused (Cloud Tasks' named-task dedup).
    supports_named: bool = True
    #: enqueue() delivers in this process, in the caller's thread (immediate, capture): the
    #: dispatch layer then sends a commit's calls one by one in the committing thread, so the
    #: task sees that thread's database connection, and never leaves one behind a time bound.
    in_process: bool = False

    def __init__(self, settings: CloudTaskSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        """Create the task. Raises TaskAlreadyExists, QueueNotFound or EnqueueError."""

    async def aenqueue(self, message: TaskMessage) -> EnqueuedTask:
        """enqueue() without blocking the event loop (in a worker thread unless overridden)."""
        return await asyncio.to_thread(self.enqueue, message)

    def project_location(self) -> tuple[str, str]:
        """The project and location task resource names are made of."""
        s = self.settings
        return s.project or "local-project", s.location or "local"

    def oidc_certs_url(self) -> str | None:
        """Where the certificates of this transport's OIDC tokens are served, if not Google."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release connections and threads; called when the settings change and at exit."""
