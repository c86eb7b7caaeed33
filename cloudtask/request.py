"""CloudTaskRequest: the Django request a task runs for, plus what Cloud Tasks said about it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from django.http import HttpRequest


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class CloudTaskRequest:
    """Passed as the first argument of every task.

    Attributes not defined here fall through to the wrapped Django ``HttpRequest`` (``.body``,
    ``.META``, ``.user`` if a middleware set it, ...). The Cloud Tasks attributes are read from
    the X-CloudTasks-* headers on first access, so a task that ignores them costs nothing.
    """

    def __init__(
        self,
        request: HttpRequest,
        *,
        task: Any,
        queue_name: str | None,
        task_id: str | None,
        retry_count: int = 0,
        execution_count: int = 0,
        eta: datetime | None = None,
        previous_response: int | None = None,
        retry_reason: str | None = None,
        headers: Mapping[str, str] | None = None,
        is_local: bool = False,
    ) -> None:
        self.request = request
        #: The registered task being run (a Task, or the adapter of a django.tasks task).
        self.task = task
        #: True for an inline run (.execute() / call()): no Cloud Tasks involved.
        self.is_local = is_local
        # Explicit values pre-fill the cached properties below.
        values = self.__dict__
        values["queue_name"] = queue_name
        values["task_id"] = task_id
        values["retry_count"] = retry_count
        values["execution_count"] = execution_count
        values["eta"] = eta if eta is not None else datetime.now(UTC)
        values["previous_response"] = previous_response
        values["retry_reason"] = retry_reason
        if headers is not None:
            values["headers"] = headers

    @classmethod
    def from_http(cls, request: HttpRequest, task: Any) -> CloudTaskRequest:
        """Wrap a delivery from Cloud Tasks; its headers are parsed lazily."""
        self = cls.__new__(cls)
        self.request = request
        self.task = task
        self.is_local = False
        return self

    @classmethod
    def from_schedule(
        cls, request: HttpRequest, task: Any, *, task_id: str, schedule_time: datetime | None
    ) -> CloudTaskRequest:
        """Wrap a firing Cloud Scheduler delivered (run inline, no Cloud Tasks queue): its task
        id is the firing's, its ETA the cron time it fired for."""
        self = cls.from_http(request, task)
        values = self.__dict__
        values["queue_name"] = None
        values["task_id"] = task_id
        values["given_eta"] = schedule_time
        return self

    @cached_property
    def schedule_name(self) -> str | None:
        """The schedule (Cloud Scheduler job id) that fired this task; None for a task sent
        any other way. Read from X-CloudScheduler-JobName, or from the header cloudtask puts
        on a task a firing enqueued."""
        meta = self.request.META
        name = meta.get("HTTP_X_CLOUDSCHEDULER_JOBNAME") or meta.get("HTTP_X_CLOUDTASK_SCHEDULE")
        return name.rsplit("/", 1)[-1] if name else None

    @cached_property
    def schedule_time(self) -> datetime | None:
        """The cron time the schedule fired for (aware); None when not fired by a schedule."""
        meta = self.request.META
        raw = meta.get("HTTP_X_CLOUDSCHEDULER_SCHEDULETIME") or meta.get(
            "HTTP_X_CLOUDTASK_SCHEDULE_TIME"
        )
        if not raw or self.schedule_name is None:
            return None
        try:
            when = datetime.fromisoformat(raw.strip())
        except ValueError:
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    @cached_property
    def queue_name(self) -> str | None:
        """Short queue id."""
        queue = self.request.META.get("HTTP_X_CLOUDTASKS_QUEUENAME")
        # Some emulators send the full resource path; the short id is the last segment.
        return queue.rsplit("/", 1)[-1] if queue else None

    @cached_property
    def task_id(self) -> str | None:
        """Short Cloud Tasks task id (None for an inline .execute())."""
        return self.request.META.get("HTTP_X_CLOUDTASKS_TASKNAME") or None

    @property
    def task_name(self) -> str | None:
        """Alias of task_id (the header's name, X-CloudTasks-TaskName)."""
        return self.task_id

    @cached_property
    def retry_count(self) -> int:
        """Attempts before this one (0 on the first)."""
        return _int(self.request.META.get("HTTP_X_CLOUDTASKS_TASKRETRYCOUNT"))

    @cached_property
    def execution_count(self) -> int:
        """Responses the handler gave before this one (5xx failures not counted)."""
        return _int(self.request.META.get("HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT"))

    @cached_property
    def eta(self) -> datetime:
        """When the task was scheduled to run (aware, UTC; now if Cloud Tasks did not say)."""
        return self.given_eta or datetime.now(UTC)

    @cached_property
    def given_eta(self) -> datetime | None:
        """The X-CloudTasks-TaskETA header as an aware datetime; None when absent or invalid."""
        raw = self.request.META.get("HTTP_X_CLOUDTASKS_TASKETA")
        if raw:
            try:
                return datetime.fromtimestamp(float(raw), UTC)
            except (ValueError, OverflowError, OSError):
                pass
        return None

    @cached_property
    def previous_response(self) -> int | None:
        """HTTP status of the previous attempt, on retries."""
        value = self.request.META.get("HTTP_X_CLOUDTASKS_TASKPREVIOUSRESPONSE")
        return int(value) if value and value.isdigit() else None

    @cached_property
    def retry_reason(self) -> str | None:
        """Why Cloud Tasks retried, on retries."""
        return self.request.META.get("HTTP_X_CLOUDTASKS_TASKRETRYREASON") or None

    @cached_property
    def headers(self) -> Mapping[str, str]:
        """Every request header (case-insensitive mapping)."""
        return self.request.headers

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on this object: fall through to the Django request.
        if name == "request":
            raise AttributeError(name)
        return getattr(self.request, name)

    def __repr__(self) -> str:
        return (
            f"<CloudTaskRequest queue={self.queue_name!r} task_id={self.task_id!r} "
            f"retry={self.retry_count} local={self.is_local}>"
        )
