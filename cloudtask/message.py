"""What travels: an encoded task call (TaskMessage), what Cloud Tasks reports back about it
(EnqueuedTask), Cloud Tasks' limits on ids and schedules, and the X-CloudTasks-* headers of a
delivery. Pure: no transport, no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings as django_settings
from django.utils import timezone

from .exceptions import InvalidSchedule

#: Cloud Tasks limits (cloud-tasks-facts.md).
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_URL_LENGTH = 2083
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
_QUEUE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class TaskMessage:
    """A task call, fully encoded when it is sent: what a transport delivers, byte for byte.

    Encoding happens before any transaction commits, so later changes to argument objects never
    leak in, and a durable outbox can store this object as it is.
    """

    #: Registered name of the task (the routing key the endpoint looks up).
    task_name: str
    #: Short Cloud Tasks queue id.
    queue: str
    #: Target URL of the handler endpoint.
    url: str
    #: The JSON envelope, exactly as POSTed.
    body: bytes
    #: HTTP headers to send (Content-Type, the signature header, the task's own headers).
    headers: dict[str, str] = field(default_factory=dict)
    #: Short Cloud Tasks task id, or None to let Cloud Tasks choose one.
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
    """What a transport reports back about a created task."""

    #: Full resource name: projects/P/locations/L/queues/Q/tasks/ID.
    resource_name: str
    #: When it will be delivered (as asked, or Cloud Tasks' own choice, about now).
    schedule_time: datetime | None = None

    @property
    def task_id(self) -> str:
        return self.resource_name.rsplit("/", 1)[-1]


def resource_name(project: str, location: str, queue: str, task_id: str) -> str:
    """projects/P/locations/L/queues/Q/tasks/ID."""
    return f"projects/{project}/locations/{location}/queues/{queue}/tasks/{task_id}"


def task_id_error(value: object) -> str | None:
    """Why value is not a valid Cloud Tasks task id, or None when it is."""
    if not isinstance(value, str):
        return f"a task id must be a string, not {value!r}"
    if _TASK_ID.fullmatch(value) is None:
        return (
            f"task id {value!r} is invalid: use 1 to 500 characters from A-Z, a-z, 0-9, '_' "
            f"and '-' (it has {len(value)})"
            if len(value) > 500 or not value
            else f"task id {value!r} is invalid: use only A-Z, a-z, 0-9, '_' and '-'"
        )
    return None


def queue_id_error(value: object) -> str | None:
    """Why value is not a valid Cloud Tasks queue id, or None when it is."""
    if not isinstance(value, str) or _QUEUE_ID.fullmatch(value) is None:
        return f"queue id {value!r} is invalid: use 1 to 100 characters from A-Z, a-z, 0-9 and '-'"
    return None


def derived_task_id(registered_name: str) -> str:
    """The fixed task id of ``named=True``: the registered name with invalid characters replaced."""
    return _NOT_ID_CHARS.sub("-", registered_name)[:500]


def check_schedule(when: datetime, now: datetime | None = None) -> datetime:
    """when, if Cloud Tasks accepts it as a schedule time (aware, at most 30 days ahead)."""
    if timezone.is_naive(when):
        raise InvalidSchedule(f"schedule time {when!r} must be timezone-aware.")
    if when - (now or datetime.now(UTC)) > MAX_SCHEDULE_AHEAD:
        raise InvalidSchedule(
            f"schedule time {when.isoformat()} is more than 30 days ahead; Cloud Tasks refuses it."
        )
    return when


def resolve_schedule(
    at: datetime | timedelta | None, countdown: timedelta | float | None
) -> datetime:
    """The aware delivery time meant by schedule()'s arguments.

    A naive datetime is read in Django's current time zone when USE_TZ is True, else in the
    machine's local time zone (what a naive datetime means in each Django mode).
    """
    now = datetime.now(UTC)
    if at is not None and countdown is not None:
        raise InvalidSchedule("schedule() takes at= or countdown=, not both.")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float | timedelta):
            raise InvalidSchedule(f"countdown= must be seconds or a timedelta, not {countdown!r}.")
        when = now + (
            countdown if isinstance(countdown, timedelta) else timedelta(seconds=countdown)
        )
    elif isinstance(at, datetime):
        if timezone.is_naive(at):
            at = (
                timezone.make_aware(at, timezone.get_current_timezone())
                if django_settings.USE_TZ
                else at.astimezone()
            )
        when = at
    elif isinstance(at, timedelta):
        when = now + at
    elif at is None:
        raise InvalidSchedule("schedule() needs at= (a datetime or timedelta) or countdown=.")
    else:
        raise InvalidSchedule(f"at= must be a datetime or a timedelta, not {at!r}.")
    return check_schedule(when, now)


def delivery_headers(
    queue: str,
    task_id: str,
    *,
    eta: datetime | None = None,
    retry_count: int = 0,
    execution_count: int = 0,
    previous_response: int | None = None,
) -> dict[str, str]:
    """The X-CloudTasks-* headers Cloud Tasks sends with an attempt (for in-process deliveries)."""
    when = eta or datetime.now(UTC)
    headers = {
        "X-CloudTasks-QueueName": queue,
        "X-CloudTasks-TaskName": task_id,
        "X-CloudTasks-TaskRetryCount": str(retry_count),
        "X-CloudTasks-TaskExecutionCount": str(execution_count),
        "X-CloudTasks-TaskETA": f"{when.timestamp():.6f}",
    }
    if previous_response is not None:
        headers["X-CloudTasks-TaskPreviousResponse"] = str(previous_response)
        headers["X-CloudTasks-TaskRetryReason"] = f"HTTP status code {previous_response}"
    return headers
