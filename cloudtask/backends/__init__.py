"""The configured backend: one instance per process, rebuilt when CLOUDTASK changes."""

from __future__ import annotations

import threading

from django.utils.module_loading import import_string

from ..exceptions import ConfigurationError
from .base import BaseBackend, EnqueuedTask, TaskMessage

__all__ = ["BaseBackend", "EnqueuedTask", "TaskMessage", "get_backend", "reset_backend"]

_backend: BaseBackend | None = None
_lock = threading.Lock()


def load_backend_class(path: str) -> type[BaseBackend]:
    """The BaseBackend subclass named by a CLOUDTASK["BACKEND"] alias or dotted path."""
    from ..conf import BACKEND_ALIASES

    dotted = BACKEND_ALIASES.get(path, path)
    try:
        cls = import_string(dotted)
    except ImportError as exc:
        raise ConfigurationError(
            f'CLOUDTASK["BACKEND"] = {path!r} is not "emulator", "cloudtasks", "immediate" or an '
            f"importable dotted path: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseBackend)):
        raise ConfigurationError(
            f'CLOUDTASK["BACKEND"] = {path!r} is not a subclass of '
            "cloudtask.backends.base.BaseBackend."
        )
    return cls


def get_backend() -> BaseBackend:
    """The process's backend, built on first use from CLOUDTASK["BACKEND"]."""
    backend = _backend
    if backend is not None:
        return backend
    return _build()


def _build() -> BaseBackend:
    global _backend
    from ..conf import get_settings

    with _lock:
        if _backend is None:
            settings = get_settings()
            cls = load_backend_class(settings.backend)
            _backend = cls({"settings": settings})
        return _backend


def reset_backend() -> None:
    """Close the current backend; the next get_backend() builds a new one."""
    global _backend
    with _lock:
        backend, _backend = _backend, None
    if backend is not None:
        backend.close()
