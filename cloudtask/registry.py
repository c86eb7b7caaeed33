"""Every task by its registered name: the endpoint routes with this table and nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from django.utils.module_loading import autodiscover_modules

from .exceptions import TaskRegistrationError, UnknownTask


class Registered(Protocol):
    """A registered task: a seed-API Task, or the adapter of a django.tasks task."""

    @property
    def name(self) -> str: ...

    @property
    def func(self) -> Callable[..., Any]: ...


_tasks: dict[str, Any] = {}
_lock = threading.Lock()


def _same_definition(a: Registered, b: Registered) -> bool:
    # A module imported a second time (importlib.reload, a test re-import) redefines the same
    # function; that is not a clash. Two different functions claiming one name are.
    fa, fb = a.func, b.func
    if fa is fb:
        return True
    ca, cb = getattr(fa, "__code__", None), getattr(fb, "__code__", None)
    return (
        ca is not None
        and cb is not None
        and fa.__module__ == fb.__module__
        and fa.__qualname__ == fb.__qualname__
        and ca.co_filename == cb.co_filename
        and ca.co_firstlineno == cb.co_firstlineno
    )


def register(task: Registered) -> None:
    """Add a task; a second, different task with the same name is an error at import time."""
    with _lock:
        existing = _tasks.get(task.name)
        if existing is not None and not _same_definition(existing, task):
            raise TaskRegistrationError(
                f"Two tasks are registered as {task.name!r}: "
                f"{existing.func.__module__}.{existing.func.__qualname__} and "
                f"{task.func.__module__}.{task.func.__qualname__}. Give one of them name=."
            )
        _tasks[task.name] = task


def unregister(name: str) -> None:
    with _lock:
        _tasks.pop(name, None)


def get(name: str) -> Any:
    """The task registered under name; UnknownTask if none (the endpoint answers 404)."""
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTask(f"No task is registered as {name!r}.") from None


def all_tasks() -> list[Any]:
    with _lock:
        return list(_tasks.values())


def autodiscover() -> None:
    """Import the `tasks` module of every installed app, registering its tasks."""
    autodiscover_modules("tasks")
