"""Tasks: the @task decorator, a call of a task (TaskCall) and the handle of a sent call."""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import (
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
    get_type_hints,
    overload,
)

from django.db import DEFAULT_DB_ALIAS
from django.dispatch import Signal
from django.http import HttpRequest

from . import registry
from .bindings import BindingOptions, bind
from .conf import get_settings, parse_deadline
from .dispatch import TaskHandle, adispatch, call_in_transaction, dispatch, send_batch
from .encoding import encode_message
from .exceptions import ConfigurationError, InvalidTaskCall, TaskRegistrationError
from .executor import ArgumentCheck, Outcome, execute, run_coroutine
from .message import (
    TaskMessage,
    derived_task_id,
    queue_id_error,
    resolve_schedule,
    task_id_error,
)
from .request import CloudTaskRequest
from .serialization import canonical_arguments, encode_arguments
from .signing import HEADER as SIGNATURE_HEADER

__all__ = [
    "ARGS_HASH",
    "CloudTaskRequest",
    "Task",
    "TaskCall",
    "TaskHandle",
    "on_commit_task",
    "send_many",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

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
        atomic: bool = False,
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
                f"{where}: a task's first parameter receives the CloudTaskRequest, and "
                f"{func.__name__}{_plain(self.signature)} has no positional parameter to take it. "
                f"Write {request_first(func.__name__, self.signature)}."
            )
        # A parameter the request goes to has no default (the request is always passed) and
        # no annotation the request is not: either one says the author meant an argument.
        first = params[0]
        if first.default is not inspect.Parameter.empty:
            misread = f"has a default ({first.name}={first.default!r})"
        elif (wrong := _non_request_annotation(func, first)) is not None:
            misread = f"is annotated {wrong}"
        else:
            misread = None
        if misread is not None:
            raise TaskRegistrationError(
                f"{where}: a task's first parameter receives the CloudTaskRequest, but "
                f"{func.__name__}()'s first parameter {first.name!r} {misread}. Write "
                f"{request_first(func.__name__, self.signature)}."
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
        self.arguments = ArgumentCheck(self.call_signature)
        self.is_async = inspect.iscoroutinefunction(func)
        self.queue = queue
        self.url = url
        self.named = named
        self.headers = clean_headers
        self.max_attempts = max_attempts
        if not isinstance(atomic, bool):
            raise TaskRegistrationError(f"{where}: atomic= must be True or False, not {atomic!r}.")
        #: Run the function and its "succeeded" execution record in one transaction.
        self.atomic = atomic
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

    # -- what the executor calls (cloudtask.executor.Runnable) -------------------------------

    def arguments_error(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        error = self.arguments.error(args, kwargs)
        if error is None:
            return None
        return error + self._request_hint(args, kwargs)

    def invoke(
        self, request: CloudTaskRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.is_async:
            return run_coroutine(self.func, request, *args, **kwargs)
        return self.func(request, *args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> TaskCall[P, R]:
        error = self.arguments_error(args, kwargs)
        if error is not None:
            raise InvalidTaskCall(f"{self.func.__name__}(): {error}")
        return TaskCall(self, args, kwargs)

    def _request_hint(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """Why arguments that would fit the function do not fit the task: its first parameter
        is the request's (``@task def hello(name)`` called as ``hello("x")``)."""
        first = next(iter(self.signature.parameters.values()))
        if first.kind is inspect.Parameter.VAR_POSITIONAL or looks_like_request(first.name):
            return ""  # the author knows it is the request: the mismatch is elsewhere
        if first.name not in kwargs:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError:
                return ""
        return (
            f". A task's first parameter receives the CloudTaskRequest, so {first.name!r} is not "
            f"one of {self.func.__name__}()'s arguments: write "
            f"{request_first(self.func.__name__, self.signature)}."
        )

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class TaskCall(Generic[P, R]):
    """One call of a task with its arguments, ready to be sent or run inline.

    Every way of sending it (delay, push, schedule, delay_on_commit, their async twins, and
    cloudtask.send_many) encodes it once and hands the message to cloudtask.dispatch.
    """

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
        self,
        *,
        task_id: str | None = None,
        schedule_time: datetime | None = None,
        name: str | None = None,
    ) -> TaskMessage:
        """Validate, serialize and sign this call. Raises before any network call.

        ``name`` is the seed API's spelling of ``task_id``.
        """
        task = self.task
        if task_id is not None or name is not None:
            task_id = _one_id(task, task_id, name)
        if task_id is None:
            task_id = self.args_hash() if task.named is ARGS_HASH else task.fixed_id
        return encode_message(
            task.name,
            self.queue,
            self.url,
            self.args,
            self.kwargs,
            label=task.func.__name__,
            param_names=task.param_names,
            task_id=task_id,
            schedule_time=schedule_time,
            headers=task.headers,
            dispatch_deadline=task.dispatch_deadline,
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

    def _send(
        self, message: TaskMessage, *, on_commit: bool = False, using: str | None = None
    ) -> TaskHandle:
        return dispatch(
            message,
            call=self,
            sender=self.task,
            on_commit=on_commit or self.task.on_commit,
            using=using if using is not None else self.task.using,
        )

    def delay(self, *, task_id: str | None = None, name: str | None = None) -> TaskHandle:
        """Send this call to run as soon as possible; returns its handle.

        ``task_id`` names the Cloud Tasks task (deduplicated); ``name`` is the seed's spelling.
        """
        return self._send(self.encode(task_id=task_id, name=name))

    def push(self, *, task_id: str | None = None, name: str | None = None) -> TaskHandle:
        """Alias of delay()."""
        return self._send(self.encode(task_id=task_id, name=name))

    def schedule(
        self,
        at: datetime | timedelta | None = None,
        *,
        countdown: timedelta | float | None = None,
        task_id: str | None = None,
        name: str | None = None,
    ) -> TaskHandle:
        """Send this call to run at ``at`` (a datetime, or a timedelta from now) or after
        ``countdown`` (seconds or timedelta). At most 30 days ahead."""
        when = resolve_schedule(at, countdown)
        return self._send(self.encode(task_id=task_id, name=name, schedule_time=when))

    def delay_on_commit(
        self, *, using: str | None = None, task_id: str | None = None, name: str | None = None
    ) -> TaskHandle:
        """Send this call when the current transaction on ``using`` commits (now if none)."""
        return self._send(self.encode(task_id=task_id, name=name), on_commit=True, using=using)

    async def adelay(self, *, task_id: str | None = None, name: str | None = None) -> TaskHandle:
        """delay() for async code: sent on the async client, never blocking the event loop."""
        return await self._asend(self.encode(task_id=task_id, name=name))

    async def aschedule(
        self,
        at: datetime | timedelta | None = None,
        *,
        countdown: timedelta | float | None = None,
        task_id: str | None = None,
        name: str | None = None,
    ) -> TaskHandle:
        """schedule() for async code."""
        when = resolve_schedule(at, countdown)
        return await self._asend(self.encode(task_id=task_id, name=name, schedule_time=when))

    async def _asend(self, message: TaskMessage) -> TaskHandle:
        return await adispatch(
            message,
            call=self,
            sender=self.task,
            on_commit=self.task.on_commit,
            using=self.task.using,
        )

    def execute(self) -> R:
        """Run the task now, in this process, through the one executor; returns its result.

        No Cloud Tasks is involved, so nothing retries: a failure, or a Retry, is raised here.
        A Discard is a task stopping for good without error, as over HTTP (200): it returns None.
        """
        http_request = HttpRequest()
        http_request.method = "POST"
        request = CloudTaskRequest(
            http_request,
            task=self.task,
            queue_name=self.queue,
            task_id=None,
            headers={},
            is_local=True,
        )
        outcome = execute(self.task, request, self.args, self.kwargs)
        if outcome.outcome is Outcome.SUCCEEDED:
            result: R = outcome.value
            return result
        if outcome.outcome is Outcome.DISCARDED:
            return None  # type: ignore[return-value]
        assert outcome.error is not None
        raise outcome.error

    def __call__(self) -> R:
        return self.execute()

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"<TaskCall {self.task.name}({', '.join(parts)})>"


def _plain(signature: inspect.Signature) -> str:
    """The signature without annotations: "(name, *, flag=False)"."""
    return str(
        signature.replace(
            parameters=[
                p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
            ],
            return_annotation=inspect.Signature.empty,
        )
    )


#: First parameter names that say "the request" (beside any name containing "request").
_REQUEST_NAMES = frozenset({"", "r", "rq", "req", "ctx", "context"})


def looks_like_request(name: str) -> bool:
    """Whether a first parameter's name says it is the request (request, req, r, _, a typo of
    request, ...), rather than an argument the author meant to pass (``def hello(name)``)."""
    plain = name.strip("_").lower()
    return (
        plain in _REQUEST_NAMES
        or "request" in plain
        or difflib.SequenceMatcher(None, plain, "request").ratio() >= 0.8  # a typo of it
    )


def request_first(func_name: str, signature: inspect.Signature) -> str:
    """How the function must be written as a task: "def hello(request, name)", a request
    parameter put before the parameters it has now (for the messages that say so)."""
    params = list(signature.parameters.values())
    taken = {p.name for p in params}
    name = next(n for n in ("request", "task_request", "cloudtask_request") if n not in taken)
    kind = (
        inspect.Parameter.POSITIONAL_ONLY
        if params and params[0].kind is inspect.Parameter.POSITIONAL_ONLY
        else inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    written = signature.replace(parameters=[inspect.Parameter(name, kind), *params])
    return f"def {func_name}{_plain(written)}"


def _non_request_annotation(func: Callable[..., Any], param: inspect.Parameter) -> str | None:
    """The name of the type the first parameter is annotated with when the CloudTaskRequest is
    not one (``def hello(name: str)``), else None. A parameter named like the request
    (``request``, ``req``, ...) says what it is whatever its annotation, as does an annotation
    of Django's HttpRequest or a subclass (a view's habit: the task gets a CloudTaskRequest,
    which hands every attribute it lacks to the HttpRequest it wraps). An annotation that
    cannot be resolved here (a name imported only for type checking) proves nothing, and
    passes."""
    if (
        param.annotation is inspect.Parameter.empty
        or param.kind is inspect.Parameter.VAR_POSITIONAL
        or looks_like_request(param.name)
    ):
        return None
    annotation: Any = param.annotation
    if isinstance(annotation, str):
        try:
            annotation = get_type_hints(func).get(param.name, Any)
        except Exception:
            return None
    if annotation is Any or not isinstance(annotation, type):
        return None  # Any (a class since Python 3.11), a union, a generic alias
    try:
        if issubclass(CloudTaskRequest, annotation) or issubclass(annotation, HttpRequest):
            return None  # CloudTaskRequest, one of its bases, object; HttpRequest
    except TypeError:
        return None  # a protocol issubclass() cannot test
    return annotation.__qualname__


def _one_id(task: Task[Any, Any], task_id: str | None, name: str | None) -> str | None:
    """The per-call task id given as task_id= or (the seed's spelling) name=, checked."""
    if task_id is not None and name is not None and task_id != name:
        raise InvalidTaskCall(
            f"{task.func.__name__}(): give task_id= or name= (its older spelling), not both."
        )
    chosen = task_id if task_id is not None else name
    if chosen is not None and (err := task_id_error(chosen)):
        raise InvalidTaskCall(f"{task.func.__name__}(): task_id= {err}.")
    return chosen


def send_many(
    calls: Iterable[TaskCall[Any, Any]], *, return_failures: bool = False
) -> list[TaskHandle]:
    """Send many task calls concurrently (on the dispatch pool); their handles, in order.

    Every call is encoded first, so an argument that will not serialize fails before anything
    is sent. A call of an on-commit task made in a transaction waits for the commit like its
    .delay() does; the others are sent at once, concurrently. Every call is attempted; unless
    ``return_failures``, the first failure is raised once all have settled (each handle says
    sent or failed).
    """
    calls = list(calls)
    messages = [call.encode() for call in calls]
    handles: list[TaskHandle | None] = [None] * len(calls)
    now: list[int] = []
    for index, (call, message) in enumerate(zip(calls, messages, strict=True)):
        task = call.task
        if task.on_commit and call_in_transaction(task.using or DEFAULT_DB_ALIAS):
            handles[index] = call._send(message)  # deferred: sent when the transaction commits
        else:
            now.append(index)
    sent = send_batch(
        [(messages[i], calls[i], calls[i].task) for i in now], return_failures=return_failures
    )
    for index, handle in zip(now, sent, strict=True):
        handles[index] = handle
    return cast(list[TaskHandle], handles)


class TaskOptions(TypedDict, total=False):
    """The options of ``@task`` and ``@on_commit_task`` (see Task for their meaning)."""

    queue: str | None
    url: str | None
    named: Named
    name: str | None
    dispatch_deadline: timedelta | float | None
    headers: Mapping[str, str] | None
    max_attempts: int | None
    atomic: bool
    using: str | None


class OnCommitTaskOptions(TaskOptions, BindingOptions, total=False):
    """``@on_commit_task``'s options: a task's, plus a binding's conditions (with on=)."""


class TaskDecorator(Protocol):
    """What ``@task(...)`` and ``@on_commit_task(...)`` return: a decorator that makes a Task.

    An ``async def`` function gives a Task whose result type is what the coroutine returns
    (``.execute()`` runs it to completion), so the types say what a caller really gets.
    """

    @overload
    def __call__(
        self, f: Callable[Concatenate[CloudTaskRequest, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...

    @overload
    def __call__(self, f: Callable[Concatenate[CloudTaskRequest, P], R], /) -> Task[P, R]: ...


@overload
def task(
    func: Callable[Concatenate[CloudTaskRequest, P], Coroutine[Any, Any, R]], /
) -> Task[P, R]: ...


@overload
def task(func: Callable[Concatenate[CloudTaskRequest, P], R], /) -> Task[P, R]: ...


@overload
def task(
    func: None = None, /, *, on_commit: bool = False, **options: Unpack[TaskOptions]
) -> TaskDecorator: ...


def task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    on_commit: bool = False,
    **options: Unpack[TaskOptions],
) -> Task[Any, Any] | TaskDecorator:
    """Declare and register a task: ``@task``, ``@task()`` or ``@task(queue=..., ...)``."""

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        t: Task[Any, Any] = Task(f, on_commit=on_commit, **options)
        registry.register(t)
        return t

    if func is not None:
        return decorate(func)
    return cast(TaskDecorator, decorate)


_BINDING_KEYS = frozenset(BindingOptions.__annotations__)


@overload
def on_commit_task(
    func: Callable[Concatenate[CloudTaskRequest, P], Coroutine[Any, Any, R]], /
) -> Task[P, R]: ...


@overload
def on_commit_task(func: Callable[Concatenate[CloudTaskRequest, P], R], /) -> Task[P, R]: ...


@overload
def on_commit_task(
    func: None = None, /, *, on: Signal | None = None, **options: Unpack[OnCommitTaskOptions]
) -> TaskDecorator: ...


def on_commit_task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    on: Signal | None = None,
    **options: Unpack[OnCommitTaskOptions],
) -> Task[Any, Any] | TaskDecorator:
    """``@task(on_commit=True)``: its .delay(), .push() and .schedule() wait for the commit.

    With on= or sender= (and the binding conditions fields=, when=, created=, updated=,
    deleted=, coalesce=, raw=) the task is also bound to that signal: see cloudtask.bind().
    """
    binding: dict[str, Any] = {k: v for k, v in options.items() if k in _BINDING_KEYS}
    task_options: dict[str, Any] = {k: v for k, v in options.items() if k not in _BINDING_KEYS}
    binds = on is not None or "sender" in binding or binding.get("deleted") is not None

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        if binding and not binds:
            raise TaskRegistrationError(
                f"@on_commit_task on {f.__module__}.{f.__qualname__}: binding options "
                f"({', '.join(f'{k}=' for k in sorted(binding))}) need on= or sender=."
            )
        t: Task[Any, Any] = task(on_commit=True, **task_options)(f)
        if binds:
            bind(on, task=t, **binding)
        return t

    if func is not None:
        return decorate(func)
    return cast(TaskDecorator, decorate)
