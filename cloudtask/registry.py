"""Every task by its registered name: the endpoint routes with this table and nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib import import_module
from typing import Any, Protocol

from django.apps import apps
from django.utils.module_loading import module_has_submodule

from .conf import require_installed
from .exceptions import TaskRegistrationError, UnknownTask

# Said on the first import, which in a project comes before cloudtask's models: the seed API,
# bindings, the endpoint and the checks all import this module first (the models say it too).
require_installed()


class Registered(Protocol):
    """A registered task: a seed-API Task, or the adapter of a django.tasks task."""

    @property
    def name(self) -> str: ...

    @property
    def func(self) -> Callable[..., Any]: ...


_tasks: dict[str, Any] = {}
_lock = threading.Lock()
#: The tasks modules autodiscover() imported, in INSTALLED_APPS order (None: it has not run).
_discovered: tuple[str, ...] | None = None


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
        raise UnknownTask(f"No task is registered as {name!r}. {discovery_hint()}") from None


def discovery_hint() -> str:
    """Which modules task discovery imported, and how to register a task defined elsewhere.

    Never imports anything: the unknown name comes from a request.
    """
    modules = _discovered
    if modules is None:
        return (
            "Task discovery has not run in this process (cloudtask's AppConfig.ready() does it: "
            "is 'cloudtask' in INSTALLED_APPS?)."
        )
    imported = ", ".join(modules) if modules else "none (no installed app has a tasks module)"
    return (
        f"Task discovery imported these tasks modules: {imported}. A task defined in any "
        "other module is registered only once that module is imported: import it from its "
        "app's tasks.py (from . import jobs) or from the app's AppConfig.ready()."
    )


def all_tasks() -> list[Any]:
    with _lock:
        return list(_tasks.values())


def autodiscover() -> None:
    """Import the `tasks` module of every installed app, registering its tasks."""
    global _discovered
    found: list[str] = []
    for app_config in apps.get_app_configs():
        # As Django's autodiscover_modules: an app without a tasks module is skipped, and an
        # error raised while importing one that exists propagates. cloudtask's own tasks module
        # is its API (@task), which declares none.
        if app_config.name != "cloudtask" and module_has_submodule(app_config.module, "tasks"):
            name = f"{app_config.name}.tasks"
            import_module(name)
            found.append(name)
    _discovered = tuple(found)


def discovered_modules() -> tuple[str, ...] | None:
    """The tasks modules autodiscover() imported, or None before it ran."""
    return _discovered
