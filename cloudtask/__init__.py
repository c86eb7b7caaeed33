"""cloudtask: dispatch Django work to Google Cloud Tasks.

Every public name is importable from here; the submodules are the implementation.

The names are loaded on first use (PEP 562), so importing a submodule that needs no Django,
such as ``python -m cloudtask.emulator``, does not import Django's ORM through this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bindings import Binding, bind, unbind
    from .exceptions import (
        CloudTaskError,
        ConfigurationError,
        Discard,
        EnqueueError,
        InvalidSchedule,
        InvalidTaskCall,
        InvalidTaskRequest,
        ObjectDeleted,
        QueueNotFound,
        Retry,
        TaskAlreadyExists,
        TaskRegistrationError,
        UnknownTask,
    )
    from .request import CloudTaskRequest
    from .schedules import Schedule, schedule
    from .tasks import ARGS_HASH, Task, TaskCall, TaskHandle, on_commit_task, send_many, task

#: Where each public name lives.
_MODULES = {
    "Binding": "bindings",
    "bind": "bindings",
    "unbind": "bindings",
    "CloudTaskRequest": "request",
    "Schedule": "schedules",
    "schedule": "schedules",
    "ARGS_HASH": "tasks",
    "Task": "tasks",
    "TaskCall": "tasks",
    "TaskHandle": "tasks",
    "task": "tasks",
    "on_commit_task": "tasks",
    "send_many": "tasks",
}


# Hidden from type checkers: for them the imports above define every name, and a module-level
# __getattr__ would make any misspelt name type-check as Any.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _MODULES.get(name) or ("exceptions" if name in __all__ else None)
        if module is None:
            raise AttributeError(f"module 'cloudtask' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


__all__ = [
    "ARGS_HASH",
    "Binding",
    "CloudTaskError",
    "CloudTaskRequest",
    "ConfigurationError",
    "Discard",
    "EnqueueError",
    "InvalidSchedule",
    "InvalidTaskCall",
    "InvalidTaskRequest",
    "ObjectDeleted",
    "QueueNotFound",
    "Retry",
    "Schedule",
    "Task",
    "TaskAlreadyExists",
    "TaskCall",
    "TaskHandle",
    "TaskRegistrationError",
    "UnknownTask",
    "bind",
    "on_commit_task",
    "schedule",
    "send_many",
    "task",
    "unbind",
]
