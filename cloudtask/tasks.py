"""Tasks: the @task decorator, a call of a task (TaskCall) and the handle of a sent call."""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import (
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypedDict,
    TypeVar,
    Unpack,
    overload,
)

from django.conf import settings as django_settings
from django.utils import timezone

from . import registry, signals
from .backends import get_backend
from .backends.base import EnqueuedTask, TaskMessage
from .conf import get_settings, parse_deadline
from .exceptions import ConfigurationError, InvalidSchedule, InvalidTaskCall, TaskRegistrationError
from .request import CloudTaskRequest
from .serialization import canonical_arguments, dumps_envelope, encode_arguments
from .signing import HEADER as SIGNATURE_HEADER
from .signing import sign

__all__ = [
    "ARGS_HASH",
    "CloudTaskRequest",
    "Task",
    "TaskCall",
    "TaskHandle",
    "send",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Cloud Tasks limits (cloud-tasks-facts.md).
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_URL_LENGTH = 2083
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
_QUEUE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
#: Headers the package sets itself; a task may not override them.
_RESERVED_HEADERS = frozenset({"authorization", SIGNATURE_HEADER.lower(), "content-length", "host"})


class _ArgsHash:
    """Sentinel for ``named=ARGS_HASH``: name each call by a hash of the task and its arguments."""

    _instance: _ArgsHash | None = None

    def __new__(cls) -> _ArgsHash:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "cloudtask.ARGS_HASH"

    def __reduce__(self) -> str:
        return "ARGS_HASH"


#: ``@task(named=ARGS_HASH)``: two calls with equal arguments get the same task name, so Cloud
#: Tasks refuses the second (TaskAlreadyExists) while the first is queued or recently ran.
ARGS_HASH = _ArgsHash()

Named = bool | str | _ArgsHash


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


class Task(Generic[P, R]):
    """A registered task. Calling it with the function's arguments (minus ``request``) returns a
    TaskCall; nothing is sent until ``.delay()``."""

    def __init__(
        self,
        func: Callable[Concatenate[CloudTaskRequest, P], R],
        *,
        name: str | None = None,
        queue: str | None = None,
        url: str | None = None,
        named: Named = False,
        dispatch_deadline: timedelta | float | None = None,
        headers: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        on_commit: bool = False,
        using: str | None = None,
    ) -> None:
        self.func = func
        self.name = name if name is not None else f"{func.__module__}.{func.__qualname__}"
        where = f"@task on {func.__module__}.{func.__qualname__}"
        if not isinstance(self.name, str) or not self.name:
            raise TaskRegistrationError(f"{where}: name= must be a non-empty string.")
        if queue is not None and (err := queue_id_error(queue)):
            raise TaskRegistrationError(f"{where}: {err}.")
        if url is not None and (not isinstance(url, str) or not url):
            raise TaskRegistrationError(f"{where}: url= must be a non-empty string, not {url!r}.")
        if isinstance(named, str):
            if err := task_id_error(named):
                raise TaskRegistrationError(f"{where}: named= {err}.")
        elif not isinstance(named, bool | _ArgsHash):
            raise TaskRegistrationError(
                f"{where}: named= must be True, False, a task id or cloudtask.ARGS_HASH, "
                f"not {named!r}."
            )
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise TaskRegistrationError(
                f"{where}: max_attempts= must be a positive integer, not {max_attempts!r}."
            )
        clean_headers: dict[str, str] = {}
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TaskRegistrationError(f"{where}: headers= must map str to str.")
            if key.lower() in _RESERVED_HEADERS or key.lower().startswith("x-cloudtasks-"):
                raise TaskRegistrationError(f"{where}: header {key!r} is set by cloudtask itself.")
            clean_headers[key] = value
        try:
            self.dispatch_deadline = parse_deadline(
                dispatch_deadline, f"{where}: dispatch_deadline="
            )
        except ConfigurationError as exc:
            raise TaskRegistrationError(str(exc)) from None

        self.signature = inspect.signature(func)
        params = list(self.signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            raise TaskRegistrationError(
                f"{where}: a task's first parameter receives the CloudTaskRequest; "
                f"{func.__qualname__}() takes none."
            )
        # The signature callers see: the function's, minus the request parameter.
        self.call_signature = (
            self.signature
            if params[0].kind is inspect.Parameter.VAR_POSITIONAL
            else self.signature.replace(parameters=params[1:])
        )
        self.param_names: tuple[str, ...] = tuple(
            p.name
            for p in self.call_signature.parameters.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        self.queue = queue
        self.url = url
        self.named = named
        self.headers = clean_headers
        self.max_attempts = max_attempts
        self.on_commit = on_commit
        self.using = using
        functools.update_wrapper(self, func)

    @property
    def fixed_id(self) -> str | None:
        """The task id every call gets (named=True or named="..."), else None."""
        if self.named is True:
            return derived_task_id(self.name)
        if isinstance(self.named, str):
            return self.named
        return None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> TaskCall[P, R]:
        try:
            self.call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidTaskCall(f"{self.func.__name__}(): {exc}") from None
        return TaskCall(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class TaskCall(Generic[P, R]):
    """One call of a task with its arguments, ready to be sent or run inline."""

    __slots__ = ("args", "kwargs", "task", "url")

    def __init__(self, task: Task[P, R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        #: Target URL of this call; change it freely before sending (None: the task's, then
        #: CLOUDTASK["URL"]).
        self.url: str | None = task.url

    @property
    def queue(self) -> str:
        """The queue this call goes to (fixed by the task; not changeable per call)."""
        return self.task.queue or get_settings().queue

    def encode(
        self, *, name: str | None = None, schedule_time: datetime | None = None
    ) -> TaskMessage:
        """Validate, serialize and sign this call. Raises before any network call."""
        task = self.task
        settings = get_settings()
        enc_args, enc_kwargs = encode_arguments(
            task.name,
            self.args,
            self.kwargs,
            label=task.func.__name__,
            param_names=task.param_names,
        )
        body = dumps_envelope(task.name, enc_args, enc_kwargs)
        if len(body) > settings.max_payload_size:
            raise InvalidTaskCall(
                f"{task.func.__name__}() payload is {len(body)} bytes, over the "
                f"{settings.max_payload_size}-byte limit set by CLOUDTASK['MAX_PAYLOAD_SIZE']; "
                "pass a reference (a model instance or an id) instead of the data."
            )
        if name is not None:
            if err := task_id_error(name):
                raise InvalidTaskCall(f"{task.func.__name__}(): name= {err}.")
            task_id: str | None = name
        elif task.named is ARGS_HASH:
            task_id = self.args_hash()
        else:
            task_id = task.fixed_id
        url = self.url or settings.url or ""
        if len(url) > MAX_URL_LENGTH:
            raise InvalidTaskCall(
                f"{task.func.__name__}() URL is {len(url)} characters; Cloud Tasks accepts at "
                f"most {MAX_URL_LENGTH}."
            )
        if schedule_time is not None:
            schedule_time = _check_schedule(schedule_time, datetime.now(UTC))
        headers = {"Content-Type": "application/json", **task.headers}
        signature = sign(body, settings)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        return TaskMessage(
            task_name=task.name,
            queue=task.queue or settings.queue,
            url=url,
            body=body,
            headers=headers,
            task_id=task_id,
            schedule_time=schedule_time,
            dispatch_deadline=task.dispatch_deadline or settings.dispatch_deadline,
            oidc_service_account=settings.sae,
            oidc_audience=settings.oidc_audience,
        )

    def args_hash(self) -> str:
        """The ARGS_HASH task id: SHA-256 of the registered name and the arguments bound to the
        function's parameters, defaults filled in, so add(1, 2), add(a=1, b=2) and add(1) (b=2
        by default) are the same call."""
        bound = self.task.call_signature.bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        _, named = encode_arguments(
            self.task.name, (), dict(bound.arguments), label=self.task.func.__name__
        )
        return hashlib.sha256(canonical_arguments(self.task.name, [], named)).hexdigest()

    def _dispatch(self, message: TaskMessage, using: str | None, force_defer: bool) -> TaskHandle:
        handle = TaskHandle(self, message)
        if force_defer or self.task.on_commit:
            from .transaction import defer

            return defer(handle, using=using if using is not None else self.task.using)
        return send(handle)

    def delay(self, *, name: str | None = None) -> TaskHandle:
        """Send this call to run as soon as possible; returns the handle with the task's name."""
        return self._dispatch(self.encode(name=name), None, False)

    def push(self, *, name: str | None = None) -> TaskHandle:
        """Alias of delay()."""
        return self._dispatch(self.encode(name=name), None, False)

    def schedule(
        self,
        at: datetime | timedelta | None = None,
        *,
        countdown: timedelta | float | None = None,
        name: str | None = None,
    ) -> TaskHandle:
        """Send this call to run at ``at`` (a datetime, or a timedelta from now) or after
        ``countdown`` (seconds or timedelta). At most 30 days ahead."""
        when = resolve_schedule(at, countdown)
        return self._dispatch(self.encode(name=name, schedule_time=when), None, False)

    def delay_on_commit(self, *, using: str | None = None, name: str | None = None) -> TaskHandle:
        """Send this call when the current transaction on ``using`` commits (now if none)."""
        return self._dispatch(self.encode(name=name), using, True)

    def execute(self) -> R:
        """Run the task now, in this process, with these arguments; returns its result."""
        from .handler import run_inline

        result: R = run_inline(self)
        return result

    def __call__(self) -> R:
        return self.execute()

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"<TaskCall {self.task.name}({', '.join(parts)})>"


def _check_schedule(when: datetime, now: datetime) -> datetime:
    if timezone.is_naive(when):
        raise InvalidSchedule(f"schedule time {when!r} must be timezone-aware.")
    if when - now > MAX_SCHEDULE_AHEAD:
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
    return _check_schedule(when, now)


State = Literal["pending", "sent", "failed"]


class TaskHandle:
    """A sent (or about-to-be-sent) task call."""

    def __init__(self, call: TaskCall[Any, Any], message: TaskMessage) -> None:
        self.call = call
        self.message = message
        self.state: State = "pending"
        #: Full resource name, projects/P/locations/L/queues/Q/tasks/ID, once sent.
        self.name: str | None = None
        self.schedule_time: datetime | None = message.schedule_time
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def id(self) -> str | None:
        """Short task id, once sent."""
        return self.name.rsplit("/", 1)[-1] if self.name else None

    @property
    def queue(self) -> str:
        return self.message.queue

    def wait(self, timeout: float | None = None) -> bool:
        """Block until sent or failed (an on-commit call is sent at commit); True if done."""
        return self._done.wait(timeout)

    def _sent(self, enqueued: EnqueuedTask) -> None:
        self.name = enqueued.name
        if enqueued.schedule_time is not None:
            self.schedule_time = enqueued.schedule_time
        self.state = "sent"
        self._done.set()

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.state = "failed"
        self._done.set()

    def __repr__(self) -> str:
        return f"<TaskHandle {self.call.task.name} {self.state} {self.name or ''}>".replace(
            " >", ">"
        )


def send(handle: TaskHandle) -> TaskHandle:
    """Enqueue handle.message on the configured backend now (thread-safe)."""
    try:
        enqueued = get_backend().enqueue(handle.message)
    except BaseException as exc:
        handle._failed(exc)
        raise
    handle._sent(enqueued)
    signals.task_enqueued.send(sender=handle.call.task, call=handle.call, handle=handle)
    return handle


class TaskOptions(TypedDict, total=False):
    """The options of ``@task`` and ``@on_commit_task`` (see Task for their meaning)."""

    queue: str | None
    url: str | None
    named: Named
    name: str | None
    dispatch_deadline: timedelta | float | None
    headers: Mapping[str, str] | None
    max_attempts: int | None
    using: str | None


@overload
def task(func: Callable[Concatenate[CloudTaskRequest, P], R], /) -> Task[P, R]: ...


@overload
def task(
    func: None = None, /, *, on_commit: bool = False, **options: Unpack[TaskOptions]
) -> Callable[[Callable[Concatenate[CloudTaskRequest, P], R]], Task[P, R]]: ...


def task(
    func: Callable[Concatenate[CloudTaskRequest, P], R] | None = None,
    /,
    *,
    on_commit: bool = False,
    **options: Unpack[TaskOptions],
) -> Task[P, R] | Callable[[Callable[Concatenate[CloudTaskRequest, P], R]], Task[P, R]]:
    """Declare and register a task: ``@task``, ``@task()`` or ``@task(queue=..., ...)``."""

    def decorate(f: Callable[Concatenate[CloudTaskRequest, P], R]) -> Task[P, R]:
        t = Task(f, on_commit=on_commit, **options)
        registry.register(t)
        return t

    if func is not None:
        return decorate(func)
    return decorate
