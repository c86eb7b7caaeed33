"""The one interface every backend implements: turn an encoded TaskMessage into a queued task."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class TaskMessage:
    """A task call, fully encoded at .delay() time: what a backend sends, byte for byte.

    Encoding happens before any transaction commits, so later changes to argument objects never
    leak in, and a durable outbox can store this object as it is.
    """

    #: Registered task name (the routing key the endpoint looks up).
    task_name: str
    #: Short Cloud Tasks queue id.
    queue: str
    #: Target URL of the handler endpoint.
    url: str
    #: The JSON envelope, exactly as POSTed.
    body: bytes
    #: HTTP headers to send (Content-Type, the signature header, the task's own headers).
    headers: dict[str, str] = field(default_factory=dict)
    #: Short task id, or None to let Cloud Tasks generate one.
    task_id: str | None = None
    #: When to deliver; None means now.
    schedule_time: datetime | None = None
    #: Per-attempt deadline; None means Cloud Tasks' default (10 minutes).
    dispatch_deadline: timedelta | None = None
    #: Service account whose OIDC token Cloud Tasks attaches (CLOUDTASK["SAE"]); None for none.
    oidc_service_account: str | None = None
    #: Audience of that token; None means the target URL.
    oidc_audience: str | None = None


@dataclass(frozen=True)
class EnqueuedTask:
    """What a backend reports back about a created task."""

    #: Full resource name: projects/P/locations/L/queues/Q/tasks/ID.
    name: str
    schedule_time: datetime | None = None

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class BaseBackend(abc.ABC):
    """A place tasks are sent to. Subclasses implement enqueue(); one instance serves a process."""

    #: The backend honours schedule_time (False: it runs at once and ignores the schedule).
    supports_schedule: bool = True
    #: The backend refuses a task id that was used recently (Cloud Tasks' name dedup).
    supports_named: bool = True

    def __init__(self, options: dict[str, object]) -> None:
        self.options = options

    @abc.abstractmethod
    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        """Create the task. Raises TaskAlreadyExists, QueueNotFound or EnqueueError."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and threads; called on setting_changed and at exit."""
