"""Send tasks to Google Cloud Tasks (or any emulator of its gRPC API) with google-cloud-tasks."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import (
    CloudTasksGrpcAsyncIOTransport,
    CloudTasksGrpcTransport,
)
from grpc import aio

from ..conf import CloudTaskSettings
from ..exceptions import ConfigurationError, EnqueueError, QueueNotFound, TaskAlreadyExists
from .base import BaseTransport, EnqueuedTask, TaskMessage

_POST = int(tasks_v2.HttpMethod.POST)
#: Errors after which the same CreateTask may well succeed: UNAVAILABLE, DEADLINE_EXCEEDED,
#: INTERNAL, RESOURCE_EXHAUSTED.
TRANSIENT_ERRORS = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
)
#: Backoff between retries: 0.1 s doubling up to 2 s, each sleep drawn at random below the
#: current bound (google.api_core's jitter), within CLOUDTASK["ENQUEUE_RETRY_DEADLINE"].
RETRY_INITIAL, RETRY_MAXIMUM, RETRY_MULTIPLIER = 0.1, 2.0, 2.0
_is_transient = api_retry.if_exception_type(*TRANSIENT_ERRORS)
_PB_CREATE_TASK_REQUEST = tasks_v2.CreateTaskRequest.pb()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


class AttemptTimeout:
    """CLIENT_TIMEOUT for one create_task attempt, in google.api_core's timeout protocol (a
    decorator that adds ``timeout=`` to the gRPC call).

    A float timeout becomes a TimeToDeadlineTimeout inside the client, which reads the clock
    twice and runs functools.wraps on every call to shorten later attempts of a retried call;
    a single attempt gets the whole timeout either way, so sending this (built once) instead
    gives the same deadline for a fraction of the work. Retried attempts pass the float.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        return functools.partial(func, timeout=self.seconds)

    def __repr__(self) -> str:
        return f"<AttemptTimeout {self.seconds}s>"


def _replaying(first: Exception, attempt: Callable[[], T]) -> Callable[[], T]:
    """attempt, except that its first call raises ``first`` (the error of an attempt already
    made), so google.api_core's retry loop takes the call from there."""
    pending = [first]

    def target() -> T:
        if pending:
            raise pending.pop()
        return attempt()

    return target


def _areplaying(
    first: Exception, attempt: Callable[[], Awaitable[T]]
) -> Callable[[], Awaitable[T]]:
    """_replaying() for the async client."""
    pending = [first]

    async def target() -> T:
        if pending:
            raise pending.pop()
        return await attempt()

    return target


def make_client(emulator_host: str | None) -> Any:
    """A CloudTasksClient: Google's API, or plain-text gRPC to an emulator at host:port."""
    if emulator_host:
        # client_options={"api_endpoint": ...} alone would open a TLS channel, which hangs
        # against a plain-text emulator: hand the client an insecure channel instead.
        channel = grpc.insecure_channel(emulator_host)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()


def make_async_client(emulator_host: str | None) -> Any:
    """A CloudTasksAsyncClient bound to the running event loop (grpc.aio channels are)."""
    if emulator_host:
        channel = aio.insecure_channel(emulator_host)
        return tasks_v2.CloudTasksAsyncClient(
            transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
        )
    return tasks_v2.CloudTasksAsyncClient()


class CloudTasksTransport(BaseTransport):
    """One CloudTasksClient per process (built on first use, then shared by every thread), and one
    CloudTasksAsyncClient per event loop for aenqueue()."""

    def __init__(self, settings: CloudTaskSettings, *, client: Any = None) -> None:
        super().__init__(settings)
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._parents: dict[str, str] = {}
        self._attempt_timeout = AttemptTimeout(settings.client_timeout)
        # One per event loop. A plain dict pruned of closed loops: each client holds its loop
        # through its channel, so weak keys would never be freed.
        self._async_clients: dict[asyncio.AbstractEventLoop, Any] = {}

    # Overridden by the embedded emulator transport.
    def emulator_host(self) -> str | None:
        return self.settings.emulator_host

    def project_location(self) -> tuple[str, str]:
        s = self.settings
        if s.project and s.location:
            return s.project, s.location
        if self.emulator_host():
            return s.project or "local-project", s.location or "local"
        missing = "PROJECT" if not s.project else "LOCATION"
        raise ConfigurationError(
            f'CLOUDTASK["{missing}"] is required by the "cloudtasks" transport.'
        )

    @property
    def client(self) -> Any:
        client = self._client
        if client is None:
            # Resolved before taking the lock: the emulator transport's emulator_host() may
            # connect (its own lock), and its close() takes self._lock the other way round.
            host = self.emulator_host()
            with self._lock:
                if self._client is None:
                    self._client = make_client(host)
                client = self._client
        return client

    def async_client(self) -> Any:
        """The CloudTasksAsyncClient of the running event loop (made on first use in it)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            host = self.emulator_host()  # before the lock, as in client
            with self._lock:
                for closed in [lp for lp in self._async_clients if lp.is_closed()]:
                    del self._async_clients[closed]
                client = self._async_clients[loop] = make_async_client(host)
        return client

    def parent(self, queue: str) -> str:
        parent = self._parents.get(queue)
        if parent is None:
            project, location = self.project_location()
            parent = f"projects/{project}/locations/{location}/queues/{queue}"
            self._parents[queue] = parent
        return parent

    def build_request(self, message: TaskMessage, parent: str) -> tasks_v2.CreateTaskRequest:
        """The CreateTaskRequest for message, built on the raw protobuf message.

        Filling proto-plus wrappers field by field costs tens of microseconds per task (each
        assignment goes through the marshal); the raw message costs a few, and wrap() adds none.
        """
        if not message.url:
            raise ConfigurationError(
                f'Task {message.task_name!r} has no URL: set CLOUDTASK["URL"] or @task(url=...).'
            )
        pb = _PB_CREATE_TASK_REQUEST(parent=parent)
        task = pb.task
        http = task.http_request
        http.url = message.url
        http.http_method = _POST
        http.headers.update(message.headers)
        http.body = message.body
        if message.oidc_service_account:
            http.oidc_token.service_account_email = message.oidc_service_account
            http.oidc_token.audience = self.settings.token_audience(
                message.url, message.oidc_audience
            )
        if message.task_id:
            task.name = f"{parent}/tasks/{message.task_id}"
        if message.schedule_time is not None:
            # Integer arithmetic, exact to the microsecond (a float timestamp is not).
            delta = message.schedule_time - _EPOCH
            task.schedule_time.seconds = delta.days * 86400 + delta.seconds
            task.schedule_time.nanos = delta.microseconds * 1000
        if message.dispatch_deadline is not None:
            deadline = message.dispatch_deadline
            task.dispatch_deadline.seconds = deadline.days * 86400 + deadline.seconds
            task.dispatch_deadline.nanos = deadline.microseconds * 1000
        request: tasks_v2.CreateTaskRequest = tasks_v2.CreateTaskRequest.wrap(pb)
        return request

    def _retried(self, message: TaskMessage, exc: Exception, started: float) -> float | None:
        """Seconds left to retry a call whose first attempt (started at ``started``, monotonic)
        failed with exc, or None when it is not retried. Transient errors are retried only for
        a call with a task id, where a retry of a call that did reach Cloud Tasks is an
        ALREADY_EXISTS, never a duplicate."""
        deadline = self.settings.enqueue_retry_deadline
        if not message.task_id or deadline <= 0 or not _is_transient(exc):
            return None
        return deadline - (time.monotonic() - started)

    def _retry_loop(self, left: float, failures: list[Exception]) -> dict[str, Any]:
        """google.api_core's retry loop arguments (sync and async alike) for the time left."""
        return {
            "predicate": _is_transient,
            "sleep_generator": api_retry.exponential_sleep_generator(
                RETRY_INITIAL, RETRY_MAXIMUM, RETRY_MULTIPLIER
            ),
            "timeout": left,
            "on_error": failures.append,
            "exception_factory": self._retry_error,
        }

    def _retry_error(
        self, errors: list[Exception], reason: api_retry.RetryFailureReason, _left: float | None
    ) -> tuple[Exception, Exception | None]:
        # The deadline as configured, not what was left of it after the first attempt.
        return api_retry.build_retry_error(errors, reason, self.settings.enqueue_retry_deadline)

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        parent = self.parent(message.queue)
        request = self.build_request(message, parent)
        client = self.client
        started = time.monotonic()
        try:
            # Every call starts with one plain attempt: no retry machinery is built unless it
            # fails transiently (most calls never do).
            created = client.create_task(request=request, timeout=self._attempt_timeout, retry=None)
        except api_exceptions.GoogleAPIError as exc:
            left = self._retried(message, exc, started)
            if left is None:
                return self.settle_error(exc, message, parent, [])
            failures: list[Exception] = []
            timeout = self.settings.client_timeout
            try:
                created = api_retry.retry_target(
                    _replaying(
                        exc,
                        lambda: client.create_task(request=request, timeout=timeout, retry=None),
                    ),
                    **self._retry_loop(left, failures),
                )
            except api_exceptions.GoogleAPIError as final:
                return self.settle_error(final, message, parent, failures)
        return self.enqueued(message, created)

    async def aenqueue(self, message: TaskMessage) -> EnqueuedTask:
        parent = self.parent(message.queue)
        request = self.build_request(message, parent)
        client = self.async_client()
        started = time.monotonic()
        try:
            created = await client.create_task(
                request=request, timeout=self._attempt_timeout, retry=None
            )
        except api_exceptions.GoogleAPIError as exc:
            left = self._retried(message, exc, started)
            if left is None:
                return self.settle_error(exc, message, parent, [])
            failures: list[Exception] = []
            timeout = self.settings.client_timeout
            try:
                created = await api_retry.retry_target_async(
                    _areplaying(
                        exc,
                        lambda: client.create_task(request=request, timeout=timeout, retry=None),
                    ),
                    **self._retry_loop(left, failures),
                )
            except api_exceptions.GoogleAPIError as final:
                return self.settle_error(final, message, parent, failures)
        return self.enqueued(message, created)

    def settle_error(
        self,
        exc: api_exceptions.GoogleAPIError,
        message: TaskMessage,
        parent: str,
        failures: list[Exception],
    ) -> EnqueuedTask:
        """The task, if exc proves it was created; else raise cloudtask's error for exc."""
        if failures and isinstance(exc, api_exceptions.Conflict):
            # An earlier attempt of this very call reached Cloud Tasks although its answer was
            # lost (a timeout, UNAVAILABLE): the task exists because we created it.
            return EnqueuedTask(
                resource_name=f"{parent}/tasks/{message.task_id}",
                schedule_time=message.schedule_time,
            )
        raise self.translate_error(exc, message, parent) from exc

    def translate_error(
        self, exc: api_exceptions.GoogleAPIError, message: TaskMessage, parent: str
    ) -> EnqueueError:
        """cloudtask's error for an API error, naming the task, the id and the queue."""
        text = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, api_exceptions.Conflict):
            # AlreadyExists (gRPC) subclasses Conflict (REST's 409): one check covers both.
            return TaskAlreadyExists(
                f"Task {message.task_id!r} already exists in {parent}, or ran or was deleted "
                f"recently (Cloud Tasks keeps used names for up to a day): {text}"
            )
        if isinstance(exc, api_exceptions.NotFound):
            return QueueNotFound(self._queue_not_found(text, message, parent))
        return EnqueueError(
            f"Cloud Tasks did not create task {message.task_name!r} in {parent}: {exc}"
        )

    def _queue_not_found(self, text: str, message: TaskMessage, parent: str) -> str:
        _, project, _, location, _, queue_id = parent.split("/")
        other_queue = f'or fix CLOUDTASK["QUEUE"] / @task(queue=...) of task {message.task_name!r}'
        host = self.emulator_host()
        if not host:
            return (
                f"Queue {parent} does not exist (task {message.task_name!r}): {text} Create it "
                f'with "manage.py cloudtask_sync" (it creates the queues in CLOUDTASK["QUEUES"]) '
                f"or gcloud tasks queues create {queue_id} --location={location} "
                f"--project={project}, {other_queue}."
            )
        # An emulator's queues exist from its start or not at all: Google's advice to wait a
        # minute for a new queue to initialize (which emulators repeat) would only mislead.
        said = text.split(" If you just created the queue", 1)[0].strip()
        if parent in said:
            # cloudtask's emulator names the project and location it has queues in.
            fix = (
                'Set CLOUDTASK["PROJECT"] and CLOUDTASK["LOCATION"] to those of its queues '
                "(left unset with EMULATOR_HOST, they are local-project and local: the "
                "emulator's defaults)"
            )
        else:
            said = f"Queue {parent} does not exist on this emulator."
            fix = (
                f"Start the emulator with --queue {queue_id} (or --auto-create-queues), check "
                'CLOUDTASK["PROJECT"] and CLOUDTASK["LOCATION"]'
            )
        return f"The emulator at {host} refused the task: {said} {fix}, {other_queue}."

    @staticmethod
    def enqueued(message: TaskMessage, created: Any) -> EnqueuedTask:
        pb = tasks_v2.Task.pb(created)
        # The time asked for, exactly; else Cloud Tasks' own choice (about now).
        schedule = message.schedule_time
        if schedule is None and pb.HasField("schedule_time"):
            ts = pb.schedule_time
            schedule = datetime.fromtimestamp(ts.seconds, UTC) + timedelta(
                microseconds=ts.nanos // 1000
            )
        return EnqueuedTask(resource_name=pb.name, schedule_time=schedule)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._async_clients = {}
        if client is not None and self._owns_client:
            client.transport.close()
