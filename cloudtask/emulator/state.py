"""Queues and tasks held in memory: validation, name dedup, and the views the API returns.

Every method runs under one condition lock (``Store.cond``), which the dispatcher also uses to
pick due tasks and to record attempt results; RPC handlers never wait on HTTP.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud import tasks_v2

from ..dedup import RecentNames
from . import policy
from .clock import Clock
from .policy import RetryPolicy, TokenBucket

MAX_SCHEDULE_AHEAD = 30 * 24 * 3600.0
DEFAULT_DISPATCH_DEADLINE = 600.0
MIN_DISPATCH_DEADLINE = 15.0
MAX_DISPATCH_DEADLINE = 1800.0
MAX_URL_LENGTH = 2083
MAX_HEADERS_SIZE = 80 * 1024
DEFAULT_PAGE_SIZE = 1000

ALREADY_EXISTS = "Requested entity already exists"
NOT_FOUND = "Requested entity was not found."
QUEUE_NOT_FOUND = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue "
    "to initialize."
)

_PROJECT = r"[A-Za-z0-9\-:.]+"
_LOCATION = r"[A-Za-z0-9-]+"
PARENT_RE = re.compile(rf"projects/({_PROJECT})/locations/({_LOCATION})")
QUEUE_NAME_RE = re.compile(rf"projects/({_PROJECT})/locations/({_LOCATION})/queues/([^/]*)")
TASK_NAME_RE = re.compile(
    rf"projects/({_PROJECT})/locations/({_LOCATION})/queues/([^/]*)/tasks/([^/]*)"
)
QUEUE_ID_RE = re.compile(r"[A-Za-z0-9-]{1,100}")
TASK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")
PROJECT_ID_RE = re.compile(_PROJECT)

# Headers the emulator sets itself; a task's own values for them are dropped.
RESERVED_HEADERS = frozenset({"host", "content-length", "user-agent"})
# The body is delivered only with these methods, as in Cloud Tasks.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# HTTP status -> google.rpc.Code, for Attempt.response_status.
_HTTP_TO_RPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ApiError(Exception):
    """An RPC failure with the status code and message Cloud Tasks would send."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _nanos(seconds: float) -> int:
    return round(seconds * 1e9)


def _seconds(value: dt.timedelta) -> float:
    return value.total_seconds()


@dataclass
class AttemptRecord:
    schedule_time: float
    dispatch_time: float
    response_time: float | None = None
    http_status: int | None = None
    error: str | None = None

    def fill(self, attempt: Any) -> None:
        """Write this attempt into a raw ``google.cloud.tasks.v2.Attempt`` message."""
        attempt.schedule_time.FromNanoseconds(_nanos(self.schedule_time))
        attempt.dispatch_time.FromNanoseconds(_nanos(self.dispatch_time))
        if self.response_time is not None:
            attempt.response_time.FromNanoseconds(_nanos(self.response_time))
        if self.http_status is not None:
            if 200 <= self.http_status < 300:
                code = grpc.StatusCode.OK
            else:
                code = _HTTP_TO_RPC.get(self.http_status) or (
                    grpc.StatusCode.INTERNAL
                    if self.http_status >= 500
                    else grpc.StatusCode.FAILED_PRECONDITION
                )
            attempt.response_status.code = code.value[0]
            attempt.response_status.message = f"HTTP status code {self.http_status}"
        elif self.error is not None:
            attempt.response_status.code = grpc.StatusCode.UNAVAILABLE.value[0]
            attempt.response_status.message = self.error


@dataclass(eq=False)
class TaskRecord:
    name: str
    short: str
    queue: QueueRecord
    # The task as created (a raw protobuf message: proto-plus wrappers are slow to build),
    # with its name, create_time, dispatch_deadline and retry_config filled in.
    pb: Any
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    oidc_email: str | None
    oidc_audience: str | None
    create_time: float
    schedule_time: float
    dispatch_deadline: float
    dispatch_count: int = 0
    response_count: int = 0
    execution_count: int = 0  # responses other than 5xx, as X-CloudTasks-TaskExecutionCount
    first_attempt: AttemptRecord | None = None
    last_attempt: AttemptRecord | None = None
    first_attempt_time: float | None = None
    previous_response: int | None = None
    retry_reason: str | None = None
    in_flight: bool = False
    removed: bool = False
    # The target URL that refused it, while it is held for that site (hold_unreachable).
    held_by: str | None = None
    seq: int = 0  # heap entries with another seq are stale
    # ``pb`` encoded for the state file, computed once: ``pb`` never changes after creation.
    encoded_pb: str | None = field(default=None, repr=False)

    def to_proto(self, view: int) -> tasks_v2.Task:
        pb = type(self.pb)()
        pb.CopyFrom(self.pb)
        full = view == 2  # Task.View.FULL; BASIC leaves out the body
        if not full:
            pb.http_request.body = b""
        pb.view = 2 if full else 1
        pb.schedule_time.FromNanoseconds(_nanos(self.schedule_time))
        pb.dispatch_count = self.dispatch_count
        pb.response_count = self.response_count
        if self.first_attempt is not None:
            self.first_attempt.fill(pb.first_attempt)
        if self.last_attempt is not None:
            self.last_attempt.fill(pb.last_attempt)
        task: tasks_v2.Task = tasks_v2.Task.wrap(pb)
        return task


@dataclass(eq=False)
class QueueRecord:
    name: str
    short: str
    retry: RetryPolicy
    rate: float
    burst: int
    max_concurrent: int
    bucket: TokenBucket
    http_target: tasks_v2.HttpTarget | None = None
    stackdriver: tasks_v2.StackdriverLoggingConfig | None = None
    paused: bool = False
    purge_time: float | None = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    heap: list[tuple[float, int, TaskRecord]] = field(default_factory=list)
    in_flight: int = 0
    # retry_config as a raw message, copied into every new task; rebuilt when retry changes.
    _retry_pb: Any = field(default=None, init=False, repr=False)
    _retry_pb_of: RetryPolicy | None = field(default=None, init=False, repr=False)

    def retry_pb(self) -> Any:
        if self._retry_pb is None or self._retry_pb_of is not self.retry:
            self._retry_pb = tasks_v2.RetryConfig.pb(self.to_proto().retry_config)
            self._retry_pb_of = self.retry
        return self._retry_pb

    def to_proto(self) -> tasks_v2.Queue:
        r = self.retry
        queue = tasks_v2.Queue(
            name=self.name,
            rate_limits=tasks_v2.RateLimits(
                max_dispatches_per_second=self.rate,
                max_burst_size=self.burst,
                max_concurrent_dispatches=self.max_concurrent,
            ),
            retry_config=tasks_v2.RetryConfig(
                max_attempts=r.max_attempts,
                max_retry_duration=dt.timedelta(seconds=r.max_retry_duration),
                min_backoff=dt.timedelta(seconds=r.min_backoff),
                max_backoff=dt.timedelta(seconds=r.max_backoff),
                max_doublings=r.max_doublings,
            ),
            state=tasks_v2.Queue.State.PAUSED if self.paused else tasks_v2.Queue.State.RUNNING,
        )
        if self.purge_time is not None:
            queue.purge_time = _ts(self.purge_time)
        if self.http_target is not None:
            queue.http_target = self.http_target
        if self.stackdriver is not None:
            queue.stackdriver_logging_config = self.stackdriver
        return queue


def parse_queue_name(name: str) -> tuple[str, str, str]:
    match = QUEUE_NAME_RE.fullmatch(name)
    if match is None:
        raise invalid(
            f"Invalid resource field value in the request: queue name {name!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID/queues/QUEUE_ID"
        )
    project, location, queue_id = match.groups()
    if not QUEUE_ID_RE.fullmatch(queue_id):
        raise invalid(
            f"Invalid queue id {queue_id!r}: use letters, digits and hyphens, 1 to 100 characters"
        )
    return project, location, queue_id


def parse_task_name(name: str) -> tuple[str, str]:
    """Split a full task name into (queue name, task id), validating both."""
    match = TASK_NAME_RE.fullmatch(name)
    if match is None:
        raise invalid(
            f"Invalid resource field value in the request: task name {name!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID/queues/QUEUE_ID/tasks/TASK_ID"
        )
    project, location, queue_id, task_id = match.groups()
    parse_queue_name(f"projects/{project}/locations/{location}/queues/{queue_id}")
    if not TASK_ID_RE.fullmatch(task_id):
        raise invalid(
            f"Invalid task id {task_id!r}: use letters, digits, hyphens and underscores, "
            "1 to 500 characters"
        )
    return f"projects/{project}/locations/{location}/queues/{queue_id}", task_id


def parse_parent(parent: str) -> None:
    if PARENT_RE.fullmatch(parent) is None:
        raise invalid(
            f"Invalid resource field value in the request: parent {parent!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID"
        )


@dataclass(frozen=True)
class _Delivery:
    """What a task's ``http_request`` asks the dispatcher to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    oidc_email: str | None
    oidc_audience: str | None

    @classmethod
    def of(cls, http: Any) -> _Delivery:
        """Read a raw ``HttpRequest`` message (unvalidated: create_task checks the result)."""
        url: str = http.url
        method = tasks_v2.HttpMethod(http.http_method or tasks_v2.HttpMethod.POST).name
        has_oidc = http.HasField("oidc_token")
        reserved = RESERVED_HEADERS | ({"authorization"} if has_oidc else set())
        return cls(
            method=method,
            url=url,
            headers={k: v for k, v in http.headers.items() if k.lower() not in reserved},
            body=bytes(http.body),
            oidc_email=http.oidc_token.service_account_email if has_oidc else None,
            oidc_audience=(http.oidc_token.audience or url) if has_oidc else None,
        )


def _retry_policy(config: tasks_v2.RetryConfig | None) -> RetryPolicy:
    if config is None:
        return RetryPolicy()
    # Unset fields take Google's defaults (proto3 cannot tell 0 from unset for the integers).
    max_attempts = config.max_attempts or policy.DEFAULT_MAX_ATTEMPTS
    duration = _seconds(config.max_retry_duration)
    min_backoff = (
        _seconds(config.min_backoff) if "min_backoff" in config else policy.DEFAULT_MIN_BACKOFF
    )
    max_backoff = (
        _seconds(config.max_backoff) if "max_backoff" in config else policy.DEFAULT_MAX_BACKOFF
    )
    doublings = config.max_doublings or policy.DEFAULT_MAX_DOUBLINGS
    if max_attempts < -1:
        raise invalid(
            f"retry_config.max_attempts must be -1 (unlimited) or more, not {max_attempts}"
        )
    for label, value in (
        ("max_retry_duration", duration),
        ("min_backoff", min_backoff),
        ("max_backoff", max_backoff),
        ("max_doublings", doublings),
    ):
        if value < 0:
            raise invalid(f"retry_config.{label} must not be negative, got {value}")
    if min_backoff > max_backoff:
        raise invalid(
            f"retry_config.min_backoff ({min_backoff} s) must not be greater than "
            f"retry_config.max_backoff ({max_backoff} s)"
        )
    return RetryPolicy(
        max_attempts=max_attempts,
        max_retry_duration=duration,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        max_doublings=doublings,
    )


def _rate_limits(limits: tasks_v2.RateLimits | None) -> tuple[float, int, int]:
    rate = limits.max_dispatches_per_second if limits is not None else 0.0
    burst = limits.max_burst_size if limits is not None else 0
    concurrent = limits.max_concurrent_dispatches if limits is not None else 0
    if rate < 0 or rate > policy.MAX_DISPATCHES_PER_SECOND:
        raise invalid(
            f"rate_limits.max_dispatches_per_second must be between 0 and "
            f"{policy.MAX_DISPATCHES_PER_SECOND:g}, got {rate}"
        )
    if concurrent < 0 or concurrent > policy.MAX_CONCURRENT_DISPATCHES:
        raise invalid(
            f"rate_limits.max_concurrent_dispatches must be between 0 and "
            f"{policy.MAX_CONCURRENT_DISPATCHES}, got {concurrent}"
        )
    if burst < 0:
        raise invalid(f"rate_limits.max_burst_size must not be negative, got {burst}")
    rate = rate or policy.DEFAULT_MAX_DISPATCHES_PER_SECOND
    burst = burst or policy.default_burst(rate)
    concurrent = concurrent or policy.DEFAULT_MAX_CONCURRENT_DISPATCHES
    return rate, burst, concurrent


def paginate(
    count: int, page_size: int, page_token: str, default: int = DEFAULT_PAGE_SIZE
) -> tuple[int, int, str]:
    """A List call's page: (start, end) of the sorted items, and the next page's token."""
    if page_size < 0:
        raise invalid(f"page_size must not be negative, got {page_size}")
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise invalid(f"Invalid page_token {page_token!r}") from None
    end = min(count, start + (page_size or default))
    return start, end, str(end) if end < count else ""


def _task_record(
    queue: QueueRecord, pb: Any, delivery: _Delivery, short: str, schedule_time: float
) -> TaskRecord:
    return TaskRecord(
        name=pb.name,
        short=short,
        queue=queue,
        pb=pb,
        method=delivery.method,
        url=delivery.url,
        headers=delivery.headers,
        body=delivery.body,
        oidc_email=delivery.oidc_email,
        oidc_audience=delivery.oidc_audience,
        create_time=pb.create_time.ToNanoseconds() / 1e9,
        schedule_time=schedule_time,
        dispatch_deadline=pb.dispatch_deadline.ToNanoseconds() / 1e9,
    )


class Tombstones(RecentNames):
    """RecentNames that can be saved to and restored from the state file."""

    def taken(self) -> dict[str, float]:
        """Each name still taken, with the time it was taken."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            return {name: expiry - self.window for name, expiry in self._expiry.items()}

    def restore(self, taken: dict[str, float]) -> None:
        """Take again the names of :meth:`taken` at their times (under this store's window)."""
        now = self.clock()
        with self._lock:
            for name, when in sorted(taken.items(), key=lambda item: item[1]):
                # Oldest first: _prune relies on the table being in expiry order.
                if when + self.window > now:
                    self._expiry[name] = when + self.window
                    self._expiry.move_to_end(name)


class Store:
    """All queues and tasks, plus tombstones of recently finished or deleted task names."""

    def __init__(self, clock: Clock, *, dedup_window: float, max_task_size: int) -> None:
        self.clock = clock
        self.dedup_window = dedup_window
        self.max_task_size = max_task_size
        self.cond = threading.Condition(threading.RLock())
        self.queues: dict[str, QueueRecord] = {}
        self.deleted_queues: dict[str, float] = {}  # name -> deletion time
        # Recently finished or deleted task names (Cloud Tasks' named-task dedup).
        self.tombstones = Tombstones(dedup_window, clock.now)
        self.in_flight = 0
        self.auto_create_queues = False
        self._seq = itertools.count(1)
        # Bumped by every change the state file must get; on_change wakes its writer.
        self.revision = 0
        self.on_change: Callable[[], None] | None = None

    # -- queues ------------------------------------------------------------------------------

    def _new_queue(self, name: str, queue: tasks_v2.Queue | None = None) -> QueueRecord:
        _, _, short = parse_queue_name(name)
        rate, burst, concurrent = _rate_limits(
            queue.rate_limits if queue is not None and "rate_limits" in queue else None
        )
        record = QueueRecord(
            name=name,
            short=short,
            retry=_retry_policy(
                queue.retry_config if queue is not None and "retry_config" in queue else None
            ),
            rate=rate,
            burst=burst,
            max_concurrent=concurrent,
            bucket=TokenBucket(rate, burst, self.clock.now()),
        )
        if queue is not None:
            if "http_target" in queue:
                record.http_target = queue.http_target
            if "stackdriver_logging_config" in queue:
                record.stackdriver = queue.stackdriver_logging_config
            if queue.state == tasks_v2.Queue.State.PAUSED:
                record.paused = True
        return record

    def ensure_queue(self, name: str) -> QueueRecord:
        with self.cond:
            record = self.queues.get(name)
            if record is None:
                record = self._new_queue(name)
                self.queues[name] = record
                self.deleted_queues.pop(name, None)
                self.changed()
            return record

    def _recently_deleted(self, name: str) -> bool:
        deleted = self.deleted_queues.get(name)
        return deleted is not None and self.clock.now() - deleted < self.dedup_window

    def create_queue(self, parent: str, queue: tasks_v2.Queue) -> tasks_v2.Queue:
        parse_parent(parent)
        if not queue.name.startswith(parent + "/queues/"):
            raise invalid(
                f"Queue name {queue.name!r} must start with the parent {parent + '/queues/'!r}"
            )
        with self.cond:
            if queue.name in self.queues:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, ALREADY_EXISTS)
            if self._recently_deleted(queue.name):
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"The queue {queue.name} cannot be created because a queue with this name "
                    "existed too recently.",
                )
            record = self._new_queue(queue.name, queue)
            self.queues[queue.name] = record
            self.changed()
            return record.to_proto()

    def queue(self, name: str, *, missing: str = NOT_FOUND) -> QueueRecord:
        parse_queue_name(name)
        record = self.queues.get(name)
        if record is None:
            if self._recently_deleted(name):
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"The queue {name} has been deleted recently.",
                )
            raise ApiError(grpc.StatusCode.NOT_FOUND, missing)
        return record

    def queue_not_found(self, name: str) -> str:
        """Google's NOT_FOUND message for a missing queue, unless every queue here is in another
        project or location: then the client is most likely set up for another project, and
        the message says where this emulator's queues are."""
        parent = name.rsplit("/queues/", 1)[0]
        parents = sorted({queue.rsplit("/queues/", 1)[0] for queue in self.queues})
        if not parents or parent in parents:
            return QUEUE_NOT_FOUND
        where = ", ".join(parents)
        return f"Queue {name} does not exist on this emulator; it has queues in {where}."

    def get_queue(self, name: str) -> tasks_v2.Queue:
        with self.cond:
            return self.queue(name).to_proto()

    def list_queues(
        self, parent: str, page_size: int, page_token: str
    ) -> tasks_v2.ListQueuesResponse:
        parse_parent(parent)
        with self.cond:
            names = sorted(n for n in self.queues if n.startswith(parent + "/queues/"))
            start, end, token = paginate(len(names), page_size, page_token)
            return tasks_v2.ListQueuesResponse(
                queues=[self.queues[n].to_proto() for n in names[start:end]],
                next_page_token=token,
            )

    def update_queue(self, queue: tasks_v2.Queue, paths: list[str]) -> tasks_v2.Queue:
        parse_queue_name(queue.name)
        with self.cond:
            record = self.queues.get(queue.name)
            if record is None:
                # UpdateQueue creates a missing queue, as Cloud Tasks does.
                record = self._new_queue(queue.name, queue)
                self.queues[queue.name] = record
                self.deleted_queues.pop(queue.name, None)
                self.changed()
                return record.to_proto()
            merged = record.to_proto()
            if not paths:
                paths = ["rate_limits", "retry_config", "http_target", "stackdriver_logging_config"]
            for path in paths:
                top, _, sub = path.partition(".")
                if top not in {
                    "rate_limits",
                    "retry_config",
                    "http_target",
                    "stackdriver_logging_config",
                }:
                    raise invalid(f"update_mask path {path!r} cannot be updated")
                if sub:
                    target = getattr(merged, top)
                    setattr(target, sub, getattr(getattr(queue, top), sub))
                elif top in queue:
                    setattr(merged, top, getattr(queue, top))
                elif top in ("rate_limits", "retry_config"):
                    setattr(merged, top, type(getattr(merged, top))())
                else:
                    setattr(merged, top, None)
            if (
                "rate_limits.max_dispatches_per_second" in paths
                and "rate_limits.max_burst_size" not in paths
            ):
                # Cloud Tasks recomputes the burst when only the rate changes.
                merged.rate_limits.max_burst_size = 0
            rate, burst, concurrent = _rate_limits(merged.rate_limits)
            retry = _retry_policy(merged.retry_config)
            record.rate, record.burst, record.max_concurrent = rate, burst, concurrent
            record.bucket.reconfigure(rate, burst)
            record.retry = retry
            record.http_target = merged.http_target if "http_target" in merged else None
            record.stackdriver = (
                merged.stackdriver_logging_config
                if "stackdriver_logging_config" in merged
                else None
            )
            self.changed()
            self.cond.notify_all()
            return record.to_proto()

    def delete_queue(self, name: str) -> None:
        with self.cond:
            record = self.queue(name)
            self._drop_tasks(record)
            del self.queues[name]
            self.deleted_queues[name] = self.clock.now()
            self.changed()
            self.cond.notify_all()

    def purge_queue(self, name: str) -> tasks_v2.Queue:
        with self.cond:
            record = self.queue(name)
            self._drop_tasks(record)
            record.purge_time = self.clock.now()
            self.changed()
            self.cond.notify_all()
            return record.to_proto()

    def set_paused(self, name: str, paused: bool) -> tasks_v2.Queue:
        with self.cond:
            record = self.queue(name)
            record.paused = paused
            self.changed()
            self.cond.notify_all()
            return record.to_proto()

    def _drop_tasks(self, record: QueueRecord) -> None:
        for task in record.tasks.values():
            task.removed = True
            self._tombstone(task.name)
        record.tasks.clear()
        record.heap.clear()

    # -- tasks -------------------------------------------------------------------------------

    def _tombstone(self, name: str) -> None:
        self.tombstones.take(name)

    def _name_taken(self, name: str, record: QueueRecord) -> bool:
        return name in record.tasks or self.tombstones.is_taken(name)

    def create_task(self, parent: str, task: tasks_v2.Task) -> TaskRecord:
        parse_queue_name(parent)
        now = self.clock.now()
        given = tasks_v2.Task.pb(task)  # raw protobuf: much faster to read than proto-plus
        if given.name:
            queue_name, short = parse_task_name(given.name)
            if queue_name != parent:
                raise invalid(f"Task name {given.name!r} is not in the queue {parent!r}")
        else:
            short = str(secrets.randbits(63))
        if not given.HasField("http_request"):
            raise invalid(
                "This emulator delivers HTTP target tasks only: set task.http_request "
                "(App Engine tasks are not supported)"
            )
        http = given.http_request
        delivery = _Delivery.of(http)
        url, method = delivery.url, delivery.method
        if not url.startswith(("http://", "https://")):
            raise invalid(f"http_request.url must be an absolute http(s) URL, got {url!r}")
        if len(url) > MAX_URL_LENGTH:
            raise invalid(f"http_request.url is {len(url)} characters; the limit is 2083")
        if delivery.body and method not in BODY_METHODS:
            raise invalid(f"A body is only allowed with POST, PUT or PATCH, not {method}")
        if sum(len(k) + len(v) for k, v in delivery.headers.items()) > MAX_HEADERS_SIZE:
            raise invalid("http_request.headers exceed 80 KB in total")
        if given.HasField("schedule_time"):
            schedule = given.schedule_time.ToNanoseconds() / 1e9
            if schedule > now + MAX_SCHEDULE_AHEAD:
                raise invalid(
                    f"schedule_time {_ts(schedule).isoformat()} is more than 30 days ahead"
                )
            schedule = max(schedule, now)
        else:
            schedule = now
        if given.HasField("dispatch_deadline"):
            deadline = given.dispatch_deadline.ToNanoseconds() / 1e9
            if not MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
                raise invalid(
                    f"dispatch_deadline must be between 15 seconds and 30 minutes, "
                    f"got {deadline:g} s"
                )
        else:
            deadline = DEFAULT_DISPATCH_DEADLINE
        size = given.ByteSize()
        if size > self.max_task_size:
            raise invalid(
                f"Task size too large: {size} bytes; the limit is {self.max_task_size} bytes"
            )
        if http.HasField("oidc_token") and not delivery.oidc_email:
            raise invalid("http_request.oidc_token.service_account_email is required")
        name = f"{parent}/tasks/{short}"
        stored = type(given)()
        stored.http_request.CopyFrom(http)
        stored.http_request.http_method = getattr(tasks_v2.HttpMethod, method)
        stored.name = name
        stored.create_time.FromNanoseconds(_nanos(now))
        stored.dispatch_deadline.FromNanoseconds(round(deadline * 1e9))
        with self.cond:
            try:
                record = self.queue(parent, missing=QUEUE_NOT_FOUND)
            except ApiError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                if not self.auto_create_queues:
                    raise ApiError(exc.code, self.queue_not_found(parent)) from None
                record = self.ensure_queue(parent)
            if self._name_taken(name, record):
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, ALREADY_EXISTS)
            stored.retry_config.CopyFrom(record.retry_pb())
            if record.http_target is not None and record.http_target.header_overrides:
                # Cloud Tasks sets the queue's header overrides on every task it creates (this
                # is how cloudtask_sync's X-Cloudtask-Managed marker reaches each delivery).
                for override in record.http_target.header_overrides:
                    stored.http_request.headers[override.header.key] = override.header.value
                delivery = _Delivery.of(stored.http_request)
            task_record = _task_record(record, stored, delivery, short, schedule)
            record.tasks[name] = task_record
            self.push(task_record)
            return task_record

    def push(self, task: TaskRecord, at: float | None = None) -> None:
        """(Re)schedule ``task`` at its schedule_time; wakes the dispatcher.

        ``at`` tries it again then without changing the task (a held attempt, see
        Dispatcher.hold_unreachable): the state file has nothing new to write.
        """
        task.seq = next(self._seq)
        heapq.heappush(task.queue.heap, (task.schedule_time if at is None else at, task.seq, task))
        if at is None:
            self.changed()
        self.cond.notify_all()

    def task(self, name: str) -> TaskRecord:
        queue_name, _ = parse_task_name(name)
        record = self.queue(queue_name)
        task = record.tasks.get(name)
        if task is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, NOT_FOUND)
        return task

    def get_task(self, name: str, view: int) -> tasks_v2.Task:
        with self.cond:
            return self.task(name).to_proto(view)

    def list_tasks(
        self, parent: str, view: int, page_size: int, page_token: str
    ) -> tasks_v2.ListTasksResponse:
        with self.cond:
            record = self.queue(parent, missing=QUEUE_NOT_FOUND)
            tasks = list(record.tasks.values())
            start, end, token = paginate(len(tasks), page_size, page_token)
            return tasks_v2.ListTasksResponse(
                tasks=[t.to_proto(view) for t in tasks[start:end]], next_page_token=token
            )

    def delete_task(self, name: str) -> None:
        with self.cond:
            task = self.task(name)
            self.remove(task)

    def remove(self, task: TaskRecord) -> None:
        """Forget a finished or deleted task; its name stays taken for the dedup window."""
        if not task.removed:
            task.removed = True
            task.queue.tasks.pop(task.name, None)
            self._tombstone(task.name)
            self.changed()
            self.cond.notify_all()

    def idle(self) -> bool:
        """No task in flight, none waiting in a running queue."""
        if self.in_flight:
            return False
        return not any(q.tasks for q in self.queues.values() if not q.paused)

    def pending(self, *, held: bool = True) -> int:
        """Tasks held in any queue, paused ones included: scheduled, retrying or in flight.
        ``held=False`` leaves out those held for a site that refuses connections."""
        with self.cond:
            if held:
                return sum(len(q.tasks) for q in self.queues.values())
            return sum(1 for task in self.all_tasks() if task.held_by is None)

    # -- persistence (cloudtask.emulator.persist reads and writes the file) ------------------

    def changed(self) -> None:
        """Note a change the state file must get (called under ``cond``)."""
        self.revision += 1
        if self.on_change is not None:
            self.on_change()

    def restore_queue(self, queue: tasks_v2.Queue, purge_time: float | None) -> QueueRecord:
        """Put back a saved queue (its config and paused state), validated like CreateQueue."""
        with self.cond:
            record = self._new_queue(queue.name, queue)
            record.purge_time = purge_time
            self.queues[queue.name] = record
            return record

    def restore_task(self, queue: QueueRecord, pb: Any, schedule_time: float) -> TaskRecord:
        """Put back a saved task (the stored protobuf); the caller restores its counts."""
        _, short = parse_task_name(pb.name)
        with self.cond:
            record = _task_record(queue, pb, _Delivery.of(pb.http_request), short, schedule_time)
            queue.tasks[record.name] = record
            self.push(record)
            return record

    def all_tasks(self) -> Iterator[TaskRecord]:
        for queue in self.queues.values():
            yield from queue.tasks.values()
