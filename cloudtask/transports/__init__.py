"""Transports carry encoded task calls to a queue: Google Cloud Tasks, the embedded emulator, or
an in-process delivery (immediate, capture). One instance per process, chosen by
CLOUDTASK["TRANSPORT"] and rebuilt when the setting changes.
"""

from __future__ import annotations

import threading
from typing import Any

from django.utils.module_loading import import_string

from ..conf import TRANSPORT_ALIASES, get_settings, settings_reset
from ..exceptions import ConfigurationError
from .base import BaseTransport, EnqueuedTask, TaskMessage

__all__ = [
    "BaseTransport",
    "EnqueuedTask",
    "TaskMessage",
    "get_transport",
    "load_transport_class",
    "reset_transport",
]

_transport: BaseTransport | None = None
_lock = threading.Lock()


def load_transport_class(path: str) -> type[BaseTransport]:
    """The BaseTransport subclass named by a CLOUDTASK["TRANSPORT"] alias or dotted path."""
    dotted = TRANSPORT_ALIASES.get(path, path)
    try:
        cls = import_string(dotted)
    except ImportError as exc:
        raise ConfigurationError(
            f'CLOUDTASK["TRANSPORT"] = {path!r} is not "emulator", "cloudtasks", "immediate", '
            f'"capture" or an importable dotted path: {exc}'
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseTransport)):
        raise ConfigurationError(
            f'CLOUDTASK["TRANSPORT"] = {path!r} is not a subclass of '
            "cloudtask.transports.BaseTransport."
        )
    return cls


def get_transport() -> BaseTransport:
    """The process's transport, built on first use from CLOUDTASK["TRANSPORT"]."""
    transport = _transport
    if transport is not None:
        return transport
    return _build()


def _build() -> BaseTransport:
    global _transport
    with _lock:
        if _transport is None:
            settings = get_settings()
            _transport = load_transport_class(settings.transport)(settings)
        return _transport


def reset_transport(**kwargs: Any) -> None:
    """Close the current transport; the next get_transport() builds a new one."""
    global _transport
    with _lock:
        transport, _transport = _transport, None
    if transport is not None:
        transport.close()


settings_reset.connect(reset_transport, dispatch_uid="cloudtask.transports.reset")
