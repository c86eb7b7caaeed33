"""cloudtask: dispatch Django work to Google Cloud Tasks.

Every public name is importable from here; the submodules are the implementation.
"""

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
from .tasks import ARGS_HASH, Task, TaskCall, TaskHandle, task
from .transaction import on_commit_task

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
    "Task",
    "TaskAlreadyExists",
    "TaskCall",
    "TaskHandle",
    "TaskRegistrationError",
    "UnknownTask",
    "bind",
    "on_commit_task",
    "task",
    "unbind",
]
