"""cloudtask as a backend of Django's tasks framework (``django.tasks``, or on Django 5.2 the
``django-tasks`` backport)::

    TASKS = {"default": {"BACKEND": "cloudtask.backends.CloudTasksBackend"}}

A django.tasks task becomes a front-end like the seed ``@task``: ``enqueue()`` encodes the call
into a TaskMessage (the same envelope, signature and headers) and hands it to the one dispatch
path; the task is registered under its ``module_path`` when it is decorated, so the endpoint
routes its deliveries through the registry to the one executor, exactly like a seed task.

Differences between Django 6's ``django.tasks`` and the backport that matter here: the
exceptions are ``InvalidTask`` / ``InvalidTaskBackend`` in Django and ``InvalidTaskError`` /
``InvalidTaskBackendError`` in the backport (both are exported below under Django's names), and
``normalize_json`` lives in ``django.utils.json`` in Django, ``django_tasks.utils`` in the
backport. Everything else used here (Task, TaskResult, TaskContext, the signals, the backend
base class and its capability flags) has the same shape in both. Types are checked against the
backport, which the ``dev`` extra installs on every Django version.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from traceback import format_exception
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.module_loading import import_string

from . import records, registry
from .conf import get_settings
from .dispatch import TaskHandle, adispatch, dispatch
from .encoding import encode_message
from .exceptions import ConfigurationError, InvalidSchedule, InvalidTaskCall, UnknownTask
from .executor import ArgumentCheck, run_coroutine
from .message import MAX_URL_LENGTH, TaskMessage, queue_id_error, resolve_schedule
from .models import TaskExecution
from .request import CloudTaskRequest
from .transports import get_transport

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    try:
        from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import (
            InvalidTask,
            InvalidTaskBackend,
            TaskResultDoesNotExist,
        )
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    except ImportError:  # Django < 6: the backport
        try:
            from django_tasks import (
                TaskContext,
                TaskResult,
                TaskResultStatus,
                task,
                task_backends,
            )
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskError
            from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued, task_finished, task_started
            from django_tasks.utils import normalize_json
        except ImportError as exc:
            raise ImproperlyConfigured(
                "cloudtask.backends.CloudTasksBackend needs Django's tasks framework: Django 6 "
                "ships it; on Django 5.2 install the backport with "
                "pip install 'dj-cloud-task[tasks]' (django-tasks)."
            ) from exc

__all__ = [
    "CloudTasksBackend",
    "DjangoTaskAdapter",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]

P = ParamSpec("P")
T = TypeVar("T")

#: The OPTIONS a CloudTasksBackend accepts; everything else comes from CLOUDTASK.
OPTION_KEYS = ("ON_COMMIT", "URL")

#: This process, as django.tasks' TaskResult.worker_ids names it (Django's own backends use a
#: random id per worker too).
WORKER_ID = get_random_string(32)
#: Cloud Tasks says how many attempts came before a delivery, not where they ran.
UNKNOWN_WORKER = ""
#: Most tasks a CloudTasksBackend remembers as validated (see CloudTasksBackend.__init__).
_VALIDATED_MAX = 256


def _refuse_non_json(
    label: str, args: Sequence[Any], kwargs: dict[str, Any], param_names: Sequence[str]
) -> None:
    """Raise InvalidTaskCall naming the first argument that is not a JSON value (what
    django.tasks' TaskResult accepts: tuples become lists), if any."""

    def check(where: str, value: Any) -> None:
        try:
            normalize_json(value)
        except (TypeError, ValueError):
            raise InvalidTaskCall(
                f"{label}() argument {where!r}: cannot pass {type(value).__qualname__}; "
                "django.tasks arguments must be JSON values (str, int, float, bool, None, and "
                "lists and dicts of them)."
            ) from None

    for i, value in enumerate(args):
        check(param_names[i] if i < len(param_names) else f"#{i + 1}", value)
    for key, value in kwargs.items():
        check(key, value)


class DjangoTaskAdapter:
    """The registry entry of a django.tasks Task: what the endpoint routes a delivery to and the
    executor runs (cloudtask.executor.Runnable).

    It keeps the Task as decorated; ``.using()`` copies share its function and run the same.
    """

    #: Cloud Tasks' queue retry config decides how often a django.tasks task is retried.
    max_attempts: int | None = None
    # What cloudtask's checks, OIDC audiences and `manage.py cloudtask_tasks` read from every
    # registry entry, as the seed Task names them. A django.tasks task has no per-task options.
    named = False
    fixed_id: str | None = None
    dispatch_deadline: timedelta | None = None
    headers: Mapping[str, str] = MappingProxyType({})
    using: str | None = None
    #: A django.tasks task has no per-task transaction option: its record is written after it.
    atomic = False

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task
        #: Registered name: the task's module_path, the name the endpoint routes by.
        self.name: str = task.module_path
        self.func = task.func
        self.queue: str = task.queue_name
        signature = inspect.signature(task.func)
        params = list(signature.parameters.values())
        # A takes_context task's first parameter receives the TaskContext, not an argument.
        self.call_signature = (
            signature.replace(parameters=params[1:]) if task.takes_context else signature
        )
        self.param_names: tuple[str, ...] = tuple(
            p.name
            for p in self.call_signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        self.arguments = ArgumentCheck(self.call_signature)
        self.is_async = inspect.iscoroutinefunction(task.func)

    def backend(self) -> CloudTasksBackend | None:
        """The backend the task was declared for, if it is (still) a CloudTasksBackend."""
        return _backend_of(self.task)

    @property
    def url(self) -> str | None:
        """The backend's OPTIONS["URL"]; None means CLOUDTASK["URL"]."""
        backend = self.backend()
        return backend.url if backend is not None else None

    @property
    def on_commit(self) -> bool:
        backend = self.backend()
        return backend.on_commit if backend is not None else False

    # -- what the executor calls (cloudtask.executor.Runnable) -------------------------------

    def arguments_error(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        return self.arguments.error(args, kwargs)

    def invoke(
        self, request: CloudTaskRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the function as a django.tasks backend does: a RUNNING TaskResult, task_started,
        the call (with a TaskContext first when takes_context), then SUCCESSFUL or FAILED and
        task_finished. An exception is re-raised: the executor's outcomes (Cloud Tasks' retries,
        Discard, Retry) apply as to any task."""
        task = self.task
        sender = _signal_sender(task)
        started = timezone.now()
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=request.task_id or uuid.uuid4().hex,
            status=TaskResultStatus.RUNNING,
            enqueued_at=None,
            started_at=started,
            finished_at=None,
            last_attempted_at=started,
            args=list(args),
            kwargs=kwargs,
            backend=task.backend,
            errors=[],
            # attempts (and TaskContext.attempt) is len(worker_ids): this one is attempt
            # X-CloudTasks-TaskRetryCount + 1.
            worker_ids=[*([UNKNOWN_WORKER] * request.retry_count), WORKER_ID],
        )
        task_started.send(sender=sender, task_result=result)
        call_args: list[Any] = list(result.args)
        if task.takes_context:
            call_args.insert(0, TaskContext(task_result=result))
        try:
            if self.is_async:
                value = run_coroutine(task.func, *call_args, **result.kwargs)
            else:
                value = task.func(*call_args, **result.kwargs)
            # Django's rule: a return value must be JSON, as for every backend.
            object.__setattr__(result, "_return_value", normalize_json(value))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            object.__setattr__(result, "finished_at", timezone.now())
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            kind = type(exc)
            result.errors.append(
                TaskError(
                    exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                    traceback="".join(format_exception(exc)),
                )
            )
            task_finished.send(sender=sender, task_result=result)
            raise
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        task_finished.send(sender=sender, task_result=result)
        return value

    def __repr__(self) -> str:
        return f"<DjangoTaskAdapter {self.name}>"


def _backend_of(task: Task[Any, Any]) -> CloudTasksBackend | None:
    """The CloudTasksBackend the task names, or None if TASKS no longer has it."""
    try:
        backend = task.get_backend()
    except InvalidTaskBackend:
        return None
    return backend if isinstance(backend, CloudTasksBackend) else None


def _signal_sender(task: Task[Any, Any]) -> type[CloudTasksBackend]:
    """The sender of Django's task signals about task: its backend's class, as Django's own
    backends send them."""
    backend = _backend_of(task)
    return type(backend) if backend is not None else CloudTasksBackend


def _register(task: Task[Any, Any]) -> DjangoTaskAdapter:
    """The registry entry of task, made on its first validation.

    ``.using()`` copies validate again; they keep the entry of the task as decorated. A module
    imported again (a new function object) replaces it, as registry.register allows.
    """
    try:
        existing = registry.get(task.module_path)
    except UnknownTask:
        existing = None
    if isinstance(existing, DjangoTaskAdapter) and existing.func is task.func:
        return existing
    adapter = DjangoTaskAdapter(task)
    registry.register(adapter)
    return adapter


def _parse_options(alias: str, options: object) -> tuple[list[str], bool, str | None]:
    """(problems, ON_COMMIT, URL) of a backend's OPTIONS; problems are check() messages."""
    where = f'TASKS["{alias}"]["OPTIONS"]'
    if not isinstance(options, Mapping):
        return [f"{where} must be a dict, not {options!r}."], False, None
    problems = [
        f"Unknown key {key!r} in {where}; CloudTasksBackend accepts "
        f"{', '.join(map(repr, OPTION_KEYS))} (everything else is set in CLOUDTASK)."
        for key in options
        if key not in OPTION_KEYS
    ]
    on_commit = options.get("ON_COMMIT", False)
    if not isinstance(on_commit, bool):
        problems.append(f'{where}["ON_COMMIT"] must be True or False, not {on_commit!r}.')
        on_commit = False
    url = options.get("URL")
    if url is not None and (not isinstance(url, str) or not url):
        problems.append(f'{where}["URL"] must be a non-empty string or None, not {url!r}.')
        url = None
    elif url is not None and len(url) > MAX_URL_LENGTH:
        problems.append(
            f'{where}["URL"] is {len(url)} characters; Cloud Tasks accepts at most '
            f"{MAX_URL_LENGTH}."
        )
    return problems, on_commit, url


#: What an execution record's status means to django.tasks, which has no "failed, will be
#: retried": Django defines READY as "enqueued, or ready to be executed again", which is what a
#: failed attempt that Cloud Tasks retries is. A discarded task stopped on an exception (Discard,
#: a deleted model argument) and returned nothing: FAILED, as task_finished said when it ran.
RECORD_STATUSES: Mapping[str, TaskResultStatus] = MappingProxyType(
    {
        TaskExecution.Status.RUNNING: TaskResultStatus.RUNNING,
        TaskExecution.Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
        TaskExecution.Status.FAILED: TaskResultStatus.READY,
        TaskExecution.Status.DISCARDED: TaskResultStatus.FAILED,
        TaskExecution.Status.DEAD: TaskResultStatus.FAILED,
    }
)


def _task_of(record: TaskExecution) -> Task[Any, Any]:
    """The django.tasks Task a record was written for: its registry entry, else its module path
    imported (a task module this process has not imported yet)."""
    try:
        entry: Any = registry.get(record.task_name)
    except UnknownTask:
        try:
            entry = import_string(record.task_name)
        except ImportError:
            entry = None
    if isinstance(entry, DjangoTaskAdapter):
        return entry.task
    if isinstance(entry, Task):
        return entry
    raise TaskResultDoesNotExist(
        f"Task id {record.task_id!r} ran {record.task_name!r}, which is not a django.tasks task "
        "this process knows (a seed-API task's handle has get_result() of its own)."
    )


def _result_of(record: TaskExecution, alias: str) -> TaskResult[Any]:
    """A record as a TaskResult. The record keeps neither the arguments (args and kwargs are
    empty) nor when the task was enqueued (enqueued_at is None); see docs/records-admin.md."""
    status = RECORD_STATUSES[record.status]
    finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    result: TaskResult[Any] = TaskResult(
        task=_task_of(record),
        id=record.task_id,
        status=status,
        enqueued_at=None,
        started_at=record.first_started_at,
        finished_at=record.finished_at if finished else None,
        last_attempted_at=record.last_started_at,
        args=[],
        kwargs={},
        backend=alias,
        errors=[
            TaskError(
                exception_class_path=str(entry.get("exception_class", "")),
                traceback=str(entry.get("traceback", "")),
            )
            for entry in record.errors
        ],
        # attempts is len(worker_ids); the record counts attempts, not where they ran.
        worker_ids=[UNKNOWN_WORKER] * record.attempts,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", record.return_value)
    return result


class CloudTasksBackend(BaseTaskBackend):
    """Django's tasks framework on Google Cloud Tasks, through cloudtask's transports.

    OPTIONS: ``ON_COMMIT`` (enqueue() sends when the transaction open on the default database
    commits; nothing if it rolls back) and ``URL`` (the endpoint's URL for this alias, instead of
    CLOUDTASK["URL"]). Everything else, the transport included, is configured in CLOUDTASK.
    """

    supports_async_task = True
    # Cloud Tasks has no priorities: Django refuses a task with a non-default priority.
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.problems, self.on_commit, self.url = _parse_options(alias, self.options)
        # Tasks that passed validate_task(), by id (holding the task keeps its id from being
        # reused): a Task is frozen, so one that passed once passes again, and enqueue() need
        # not repeat Django's checks (they inspect the function's signature, a good part of an
        # enqueue's own cost). Only tasks without run_after, whose check depends on the time.
        # Emptied past _VALIDATED_MAX (each .using() copy is a new task).
        self._validated: dict[int, Task[Any, Any]] = {}

    @property
    def supports_defer(self) -> bool:  # type: ignore[override]  # a flag computed per transport
        """run_after is honoured only by a transport that waits for a schedule time (not the
        immediate one, which runs each task when it is sent)."""
        return get_transport().supports_schedule

    @property
    def supports_get_result(self) -> bool:  # type: ignore[override]  # follows CLOUDTASK
        """Cloud Tasks keeps no results; cloudtask's execution records (CLOUDTASK["RECORDS"],
        on by default) do, and get_result() reads them."""
        return get_settings().records

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's checks, then Cloud Tasks' rules; registers the task for the endpoint."""
        if self._validated.get(id(task)) is task:
            _register(task)
            return
        super().validate_task(task)
        if err := queue_id_error(task.queue_name):
            raise InvalidTask(f"Task {task.module_path}: {err}.")
        if task.run_after is not None:
            try:
                resolve_schedule(task.run_after, None)
            except InvalidSchedule as exc:
                raise InvalidTask(f"Task {task.module_path}: {exc}") from None
        else:
            if len(self._validated) >= _VALIDATED_MAX:
                self._validated.clear()
            self._validated[id(task)] = task
        _register(task)

    def _prepare(
        self, task: Task[P, T], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[TaskMessage, TaskResult[T], DjangoTaskAdapter]:
        if self.problems:
            raise ConfigurationError(self.problems[0])
        self.validate_task(task)
        adapter = _register(task)
        if mismatch := adapter.arguments_error(args, kwargs):
            raise InvalidTaskCall(f"{task.name}(): {mismatch}")
        task_id = uuid.uuid4().hex
        try:
            # TaskResult turns the arguments into JSON values itself (django.tasks' rule).
            result: TaskResult[T] = TaskResult(
                task=task,
                id=task_id,
                status=TaskResultStatus.READY,
                enqueued_at=None,
                started_at=None,
                finished_at=None,
                last_attempted_at=None,
                args=args,  # type: ignore[arg-type]  # normalized into a list
                kwargs=kwargs,
                backend=self.alias,
                errors=[],
                worker_ids=[],
            )
        except (TypeError, ValueError):
            # Not JSON: say which argument (looked for only now, so a valid call pays nothing).
            _refuse_non_json(task.name, args, kwargs, adapter.param_names)
            raise
        message = encode_message(
            task.module_path,
            task.queue_name,
            self.url,
            result.args,
            result.kwargs,
            label=task.name,
            param_names=adapter.param_names,
            task_id=task_id,
            schedule_time=(
                resolve_schedule(task.run_after, None) if task.run_after is not None else None
            ),
        )
        return message, result, adapter

    def enqueue(
        self, task: Task[P, T], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskResult[T]:
        """Send a call of task; its TaskResult (READY) has the Cloud Tasks task id as ``id``."""
        message, result, adapter = self._prepare(task, args, kwargs)
        dispatch(
            message,
            call=result,
            sender=adapter,
            on_commit=self.on_commit,
            on_sent=self._sent,
            id_generated=True,
        )
        return result

    async def aenqueue(
        self, task: Task[P, T], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskResult[T]:
        """enqueue() for async code, on the transport's async client."""
        message, result, adapter = self._prepare(task, args, kwargs)
        await adispatch(
            message,
            call=result,
            sender=adapter,
            on_commit=self.on_commit,
            on_sent=self._sent,
            id_generated=True,
        )
        return result

    def _sent(self, handle: TaskHandle) -> None:
        """django.tasks' task_enqueued, once the call is sent: now, or at commit for an
        ON_COMMIT call (a rolled-back one never sends it). Sent from the handle, not from a
        receiver of cloudtask's task_enqueued: a receiver would be called for every seed-API
        call too."""
        result = handle.call
        object.__setattr__(result, "enqueued_at", timezone.now())
        task_enqueued.send(sender=type(self), task_result=result)

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's result as its execution record tells it (see docs/records-admin.md).

        Raises TaskResultDoesNotExist until a delivery of the task started (cloudtask writes a
        record when a delivery starts, not when the task is enqueued), for an unknown id, and
        for a pruned record. ``aget_result()`` is Django's: this, in a thread.
        """
        if not get_settings().records:
            raise NotImplementedError(
                'CloudTasksBackend cannot retrieve task results with CLOUDTASK["RECORDS"] '
                "off (supports_get_result is False): Cloud Tasks keeps none. Turn records on, "
                "or receive django.tasks' task_finished signal to see how a task ended."
            )
        record = records.lookup(result_id)
        if record is None:
            raise TaskResultDoesNotExist(
                f"No execution record for task id {result_id!r}: the task has not started yet, "
                "the id is unknown, or its record was pruned."
            )
        return _result_of(record, self.alias)

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        messages: list[CheckMessage] = [
            Error(problem, id="cloudtask.E101") for problem in self.problems
        ]
        for queue in sorted(self.queues, key=str):
            if err := queue_id_error(queue):
                messages.append(
                    Error(f'TASKS["{self.alias}"]["QUEUES"]: {err}.', id="cloudtask.E102")
                )
        return messages
