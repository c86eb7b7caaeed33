"""cloudtask: dispatch Django work to Google Cloud Tasks.

Every public name is importable from here; the submodules are the implementation.
"""

# -- exceptions (owner: core) --
from .exceptions import (
    CloudTaskError,
    ConfigurationError,
    Discard,
    EnqueueError,
    ForbiddenTaskRequest,
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

# -- task API (owner: core) --

# -- transaction-safe dispatch and bindings (owner: on-commit) --

__all__ = [
    "CloudTaskError",
    "ConfigurationError",
    "Discard",
    "EnqueueError",
    "ForbiddenTaskRequest",
    "InvalidSchedule",
    "InvalidTaskCall",
    "InvalidTaskRequest",
    "ObjectDeleted",
    "QueueNotFound",
    "Retry",
    "TaskAlreadyExists",
    "TaskRegistrationError",
    "UnknownTask",
]
