"""Every error cloudtask raises derives from CloudTaskError: one except clause catches them all."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


class CloudTaskError(Exception):
    """Base class of cloudtask's errors; not raised directly."""


class ConfigurationError(CloudTaskError, ImproperlyConfigured):
    """A CLOUDTASK setting or a task declaration is wrong; the message names the value to fix."""


class TaskRegistrationError(ConfigurationError):
    """Two tasks share a registered name, or a task was declared with invalid options."""


class InvalidTaskCall(CloudTaskError, TypeError):
    """A task call cannot be sent: an argument will not serialize, or the payload is too large."""


class InvalidSchedule(CloudTaskError, ValueError):
    """A schedule time outside what Cloud Tasks accepts (more than 30 days ahead)."""


class EnqueueError(CloudTaskError):
    """The backend refused or failed to create the task; the original error is __cause__."""


class TaskAlreadyExists(EnqueueError):
    """A task with this name exists, or ran or was deleted recently (Cloud Tasks' dedup window)."""


class QueueNotFound(EnqueueError):
    """The queue named by the task does not exist in the project and location."""


class UnknownTask(CloudTaskError, LookupError):
    """The endpoint was asked to run a task name that no installed app registered."""


class InvalidTaskRequest(CloudTaskError, SuspiciousOperation):
    """The endpoint received a request whose body or arguments cannot be decoded (answered 400)."""


class ObjectDeleted(CloudTaskError, LookupError):
    """A model instance passed to a task no longer exists when the task runs."""


class Discard(CloudTaskError):
    """Raise inside a task to stop it for good: answered 2xx, so Cloud Tasks does not retry it."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(CloudTaskError):
    """Raise inside a task to ask Cloud Tasks to try again later: answered 503 with Retry-After."""

    def __init__(self, reason: str = "", *, after: float | timedelta | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if isinstance(after, timedelta):
            after = after.total_seconds()
        if after is not None and after < 0:
            raise ValueError(f"Retry(after={after!r}) must not be negative.")
        self.after = after
