"""Schedules: tasks that Cloud Scheduler fires on a cron schedule.

A schedule is a CLOUDTASK["SCHEDULES"] entry or an ``@schedule`` stacked on ``@task``. Each one
becomes one Cloud Scheduler job (:func:`job_for`), which POSTs the encoded task call to the
endpoint on its cron schedule; the endpoint routes a firing through the registry like any task
delivery (:func:`firing_of`, :func:`enqueue_firing`). ``manage.py cloudtask_sync`` creates,
updates and deletes the jobs; the embedded emulator fires them locally.

google-cloud-scheduler is the optional extra ``dj-cloud-task[scheduler]``; only
:func:`job_for` needs it.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from .conf import (
    MANAGED_MARKER,
    CloudTaskSettings,
    Schedule,
    ScheduleRetry,
    ScheduleSettingError,
    get_settings,
    parse_schedule,
)
from .dispatch import TaskHandle, dispatch
from .emulator import cron
from .encoding import encode_message
from .exceptions import ConfigurationError, TaskRegistrationError
from .message import derived_task_id
from .request import CloudTaskRequest
from .serialization import decode_arguments

if TYPE_CHECKING:
    from django.http import HttpRequest
    from google.cloud.scheduler_v1 import CloudSchedulerClient

# google-cloud-scheduler, when installed (the one import of it is in cloudtask.emulator.cron).
if cron.HAVE_SCHEDULER or TYPE_CHECKING:
    from .emulator.cron import scheduler_v1

__all__ = [
    "MANAGED_MARKER",
    "QUEUE_HEADER",
    "Firing",
    "Schedule",
    "ScheduleRetry",
    "collect",
    "enqueue_firing",
    "firing_of",
    "get_schedules",
    "is_managed",
    "job_for",
    "make_scheduler_client",
    "next_run",
    "schedule",
    "scheduler_available",
    "scheduler_v1",
    "unregister",
]

#: Set on a job whose schedule names a queue: the endpoint enqueues each firing there.
QUEUE_HEADER = "X-CloudTask-Schedule-Queue"
#: The same header as Django exposes it in request.META.
QUEUE_META = "HTTP_X_CLOUDTASK_SCHEDULE_QUEUE"
#: A task a firing enqueued carries the schedule's name and time in these, so its
#: CloudTaskRequest still says which firing it came from.
NAME_HEADER = "X-CloudTask-Schedule"
TIME_HEADER = "X-CloudTask-Schedule-Time"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)

_decorated: dict[str, Schedule] = {}
_lock = threading.Lock()


def schedule(
    cron_expression: str,
    *,
    name: str | None = None,
    time_zone: str = "UTC",
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    url: str | None = None,
    deadline: timedelta | float | None = None,
    retry: Mapping[str, Any] | None = None,
    description: str = "",
) -> Callable[[T], T]:
    """Fire a task on a cron schedule; stack it on ``@task``::

        @schedule("0 3 * * *", time_zone="Europe/Zurich")
        @task
        def nightly_report(request): ...

    The schedule is named after the task (its registered name with characters a job id cannot
    have replaced by "-") unless ``name=`` says otherwise; the options are a SCHEDULES entry's.
    A bad cron line or time zone fails here, at import time.
    """

    def register(task: T) -> T:
        task_name = getattr(task, "name", None)
        if not isinstance(task_name, str):
            raise TaskRegistrationError(
                f"@schedule({cron_expression!r}) decorates a task: put it above @task, not on "
                f"{task!r}."
            )
        chosen = name if name is not None else derived_task_id(task_name)
        options = {
            "task": task_name,
            "cron": cron_expression,
            "time_zone": time_zone,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
            "queue": queue,
            "url": url,
            "deadline": deadline,
            "retry": retry,
            "description": description,
        }
        try:
            parsed = parse_schedule(chosen, options, f"@schedule on {task_name}")
        except ScheduleSettingError as exc:
            raise TaskRegistrationError(str(exc)) from None
        with _lock:
            existing = _decorated.get(chosen)
            if existing is not None and existing.task != task_name:
                raise TaskRegistrationError(
                    f"Two @schedule declarations are named {chosen!r} (tasks {existing.task} and "
                    f"{task_name}): give one of them name=."
                )
            _decorated[chosen] = parsed
        return task

    return register


def unregister(name: str) -> None:
    """Forget the @schedule named ``name`` (tests that declare one clean up with this)."""
    with _lock:
        _decorated.pop(name, None)


def collect(
    settings: CloudTaskSettings | None = None,
) -> tuple[dict[str, Schedule], list[ScheduleSettingError]]:
    """Every schedule (the setting's, then the decorators'), and every mistake in them."""
    schedules, problems = (settings or get_settings()).schedules
    merged = dict(schedules)
    problems = list(problems)
    with _lock:
        decorated = dict(_decorated)
    for name, declared in decorated.items():
        if name in merged:
            problems.append(
                ScheduleSettingError(
                    f'CLOUDTASK["SCHEDULES"][{name!r}] has the name of the @schedule on task '
                    f"{declared.task}: a name is one Cloud Scheduler job. Rename one (name=).",
                    rule="shape",
                    schedule=name,
                )
            )
        else:
            merged[name] = declared
    return merged, problems


def get_schedules() -> dict[str, Schedule]:
    """Every schedule by name; ConfigurationError if CLOUDTASK["SCHEDULES"] has a mistake."""
    schedules, problems = collect()
    if problems:
        raise problems[0]
    return schedules


def next_run(schedule: Schedule, after: datetime | None = None) -> datetime:
    """When the schedule fires next after ``after`` (aware; default now), as an aware UTC
    datetime. Read by croniter in the schedule's time zone; see docs/schedules.md for
    daylight-saving days."""
    return cron.next_fire(schedule.cron, schedule.time_zone, after or datetime.now(UTC))


def job_for(schedule: Schedule, *, parent: str) -> scheduler_v1.Job:
    """The complete Cloud Scheduler job that fires ``schedule``, as it should be: name
    ``parent/jobs/<name>``, cron and time zone, an HTTP target POSTing the encoded call to the
    endpoint (signed when CLOUDTASK["SECRET"] is set, with an OIDC token for CLOUDTASK["SAE"]),
    attempt deadline, retry config (every field, Google's defaults filled in, so a job read
    back compares equal) and a description marked as cloudtask's.

    ``parent`` is ``projects/PROJECT/locations/LOCATION``. InvalidTaskCall when the arguments
    do not serialize; ConfigurationError without an endpoint URL or without
    google-cloud-scheduler.
    """
    if not cron.HAVE_SCHEDULER:
        raise ConfigurationError(
            f"Cloud Scheduler jobs need google-cloud-scheduler: pip install '{cron.EXTRA}'."
        )
    v1 = scheduler_v1
    settings = get_settings()
    message = encode_message(
        schedule.task,
        schedule.queue or settings.queue,
        schedule.url,
        schedule.args,
        dict(schedule.kwargs),
        label=schedule.task,
        headers={QUEUE_HEADER: schedule.queue} if schedule.queue else None,
    )
    if not message.url:
        raise ConfigurationError(
            f'Schedule {schedule.name!r} has no url and CLOUDTASK["URL"] is not set: Cloud '
            "Scheduler needs the endpoint's full URL."
        )
    target = v1.HttpTarget(
        uri=message.url,
        http_method=v1.HttpMethod(v1.HttpMethod.POST),
        headers=message.headers,
        body=message.body,
    )
    if message.oidc_service_account:
        # The audience the endpoint verifies, by the rule tasks follow too: a schedule with a
        # url of its own still gets OIDC_AUDIENCE, else URL (refused with 403 otherwise).
        target.oidc_token = v1.OidcToken(
            service_account_email=message.oidc_service_account,
            audience=settings.token_audience(message.url, message.oidc_audience),
        )
    retry = schedule.retry
    description = f"{schedule.description} {MANAGED_MARKER}".lstrip()
    return v1.Job(
        name=f"{parent}/jobs/{schedule.name}",
        description=description,
        schedule=schedule.cron,
        time_zone=schedule.time_zone,
        http_target=target,
        attempt_deadline=schedule.deadline,
        retry_config=v1.RetryConfig(
            retry_count=retry.retry_count,
            max_retry_duration=retry.max_retry_duration,
            min_backoff_duration=retry.min_backoff,
            max_backoff_duration=retry.max_backoff,
            max_doublings=retry.max_doublings,
        ),
    )


def scheduler_available() -> bool:
    """Whether google-cloud-scheduler (the extra ``dj-cloud-task[scheduler]``) is installed."""
    return cron.HAVE_SCHEDULER


def make_scheduler_client(emulator_host: str | None = None) -> CloudSchedulerClient:
    """A CloudSchedulerClient: plain gRPC to an emulator at ``host:port``, else Google's API
    with the application default credentials. Close it with ``client.transport.close()``."""
    if not cron.HAVE_SCHEDULER:
        raise ConfigurationError(
            f"Cloud Scheduler needs google-cloud-scheduler: pip install '{cron.EXTRA}'."
        )
    if emulator_host:
        # Over plain gRPC: client_options alone would make a TLS channel (and hang).
        channel = grpc.insecure_channel(emulator_host)
        return scheduler_v1.CloudSchedulerClient(
            transport=cron.CloudSchedulerGrpcTransport(channel=channel)
        )
    return scheduler_v1.CloudSchedulerClient()


def is_managed(job: scheduler_v1.Job) -> bool:
    """Whether cloudtask made this job (job_for marks its description): only those are
    updated and deleted by ``cloudtask_sync``; jobs made by hand are left alone."""
    return MANAGED_MARKER in job.description


# -- a firing, as the endpoint receives it ------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """One firing of a schedule: which job, for which cron time, under which task id."""

    #: The job id (the schedule's name).
    schedule: str
    #: The cron time it fired for (X-CloudScheduler-ScheduleTime); None if not sent.
    schedule_time: datetime | None
    #: Stable per (job, schedule time): every delivery of one firing carries the same id, so
    #: the execution records run it once.
    task_id: str
    #: The Cloud Tasks queue to enqueue the call on (None: run it inline).
    queue: str | None
    #: The schedule's own url (None: the settings do not name the schedule, or it sets none):
    #: a call enqueued on ``queue`` goes to the endpoint the job itself POSTs to.
    url: str | None = None


def firing_task_id(job_id: str, schedule_time: datetime | None) -> str:
    """The task id of a firing: a short hash first (Cloud Tasks spreads ids by their start),
    then the job id and the UTC schedule time, readable in the records. A firing that does
    not say its time gets a random id: it cannot be told from another."""
    if schedule_time is None:
        return f"{uuid.uuid4().hex[:8]}-{job_id[:400]}-now"
    stamp = schedule_time.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if schedule_time.microsecond:
        stamp += f"{schedule_time.microsecond:06d}"
    digest = hashlib.sha256(f"{job_id}\n{stamp}".encode()).hexdigest()[:8]
    return f"{digest}-{job_id[:450]}-{stamp}Z"


#: Cloud Scheduler's X-CloudScheduler header ("true" on each firing) as request.META holds it.
FIRED_META = "HTTP_X_CLOUDSCHEDULER"


def firing_of(request: HttpRequest) -> Firing | None:
    """The firing a request carries, or None when Cloud Scheduler did not send it.

    The X-CloudScheduler headers prove nothing (anyone can send them): the endpoint
    authenticates the request first, like any task delivery.
    """
    meta = request.META
    if meta.get(FIRED_META) != "true":
        return None
    said = CloudTaskRequest.from_http(request, None)
    job = said.schedule_name or "schedule"
    queue = meta.get(QUEUE_META) or None
    # Only a firing sent on through a queue needs the schedule's url; the settings' mistakes
    # are the checks' to report, and a schedule they no longer name has no url to look up.
    declared = collect()[0].get(job) if queue is not None else None
    return Firing(
        schedule=job,
        schedule_time=said.schedule_time,
        task_id=firing_task_id(job, said.schedule_time),
        queue=queue,
        url=declared.url if declared is not None else None,
    )


def enqueue_firing(
    firing: Firing, task: Any, raw_args: list[Any], raw_kwargs: dict[str, Any]
) -> TaskHandle:
    """Send the call a firing carries to its queue, as a Cloud Tasks task named after the
    firing (a repeated delivery of the firing is refused as TaskAlreadyExists), addressed to
    the schedule's url, else the task's url=, else CLOUDTASK["URL"]. Raises what decoding
    (InvalidTaskRequest, ObjectDeleted) or sending raises (ConfigurationError without any of
    the three URLs)."""
    assert firing.queue is not None
    args, kwargs = decode_arguments(raw_args, raw_kwargs)
    headers = {NAME_HEADER: firing.schedule}
    if firing.schedule_time is not None:
        headers[TIME_HEADER] = firing.schedule_time.isoformat()
    message = encode_message(
        task.name,
        firing.queue,
        firing.url or getattr(task, "url", None),
        args,
        kwargs,
        label=task.name,
        task_id=firing.task_id,
        headers=headers,
        dispatch_deadline=task.dispatch_deadline,
    )
    return dispatch(message, sender=task)
