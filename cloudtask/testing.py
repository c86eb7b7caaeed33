"""Helpers for testing code that sends tasks, without Cloud Tasks, an emulator or a network.

``capture_tasks()`` swaps the transport for ``CaptureTransport``, which records every task it is
given instead of sending it, the way Django's ``mail.outbox`` records e-mail. A captured task
runs on demand through the real endpoint (signature check, envelope decoding, registry lookup,
the one executor, signals, response codes), so a test exercises exactly what Cloud Tasks would
trigger.

``send_on_commit_tasks()`` makes on-commit tasks leave inside a ``TestCase``, whose transaction
never commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS
from django.test import TestCase, override_settings

from .conf import get_settings
from .transports.capture import (
    CapturedTask,
    CaptureTransport,
    TaskOutbox,
    TaskRunFailed,
    lock,
    open_outboxes,
    outbox,
)

__all__ = [
    "CAPTURE_TRANSPORT",
    "CaptureTransport",
    "CapturedTask",
    "TaskOutbox",
    "TaskRunFailed",
    "capture_tasks",
    "outbox",
    "send_on_commit_tasks",
]

#: The CLOUDTASK["TRANSPORT"] value that captures tasks in every test.
CAPTURE_TRANSPORT = "capture"


@contextmanager
def capture_tasks() -> Iterator[TaskOutbox]:
    """Capture every task sent inside the block instead of sending it.

    ::

        with capture_tasks() as outbox:
            place_order(...)
        assert outbox.task_names == ["shop.tasks.send_confirmation"]
        outbox.run_all()

    The transport is switched with override_settings, so the rest of CLOUDTASK (SECRET, URL,
    QUEUE...) stays as configured and captured tasks carry the same signature and headers as
    real ones. Blocks nest; each sees the tasks sent while it was open.
    """
    box = TaskOutbox()
    with lock:
        open_outboxes.append(box)
    try:
        if get_settings().transport_path == CaptureTransport.path:
            yield box
        else:
            current = getattr(django_settings, "CLOUDTASK", None) or {}
            with override_settings(CLOUDTASK={**current, "TRANSPORT": CAPTURE_TRANSPORT}):
                yield box
    finally:
        with lock:
            open_outboxes.remove(box)


@contextmanager
def send_on_commit_tasks(using: str = DEFAULT_DB_ALIAS) -> Iterator[list[Callable[[], Any]]]:
    """When the block ends, send the on-commit tasks deferred so far, as a commit would.

    Django's TestCase runs each test in a transaction that is rolled back, so on_commit
    callbacks, and with them on-commit tasks, never fire. This block runs the callbacks
    registered inside it when it ends (``TestCase.captureOnCommitCallbacks(execute=True)``), and
    cloudtask's callback sends every task still pending in the test's transaction, as a real
    commit sends all of them; tasks deferred in a savepoint that rolled back stay unsent, as in
    production. Blocks may follow one another in one test. Yields the callbacks run.
    """
    with TestCase.captureOnCommitCallbacks(using=using, execute=True) as callbacks:
        yield callbacks
