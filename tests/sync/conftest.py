"""Fixtures for cloudtask_sync's tests: a fresh emulator per test (the real google-cloud-tasks
client talks to it over gRPC), settings pointing at it, and a count of the writes it served."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from cloudtask.emulator import Emulator
from tests.api.conftest import BASE

#: The methods behind CreateQueue, UpdateQueue and DeleteQueue (the emulator's store), and
#: CreateJob, UpdateJob and DeleteJob (its Cloud Scheduler).
QUEUE_WRITES = ("create_queue", "update_queue", "delete_queue")
JOB_WRITES = ("create_job", "update_job", "delete_job")


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(log=None) as emulator:
        yield emulator


@pytest.fixture
def writes(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Write calls the emulator served, by store method: the real methods run, counted."""
    counts: Counter[str] = Counter()

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return call

    for name in QUEUE_WRITES:
        monkeypatch.setattr(emu.store, name, counted(name, getattr(emu.store, name)))
    assert emu.scheduler is not None
    for name in JOB_WRITES:
        monkeypatch.setattr(emu.scheduler, name, counted(name, getattr(emu.scheduler, name)))
    return counts


@pytest.fixture
def configure(settings: Any, emu: Emulator) -> Callable[..., None]:
    """Set CLOUDTASK for the cloudtasks transport on the emulator, with these QUEUES."""

    def apply(queues: dict[str, Any], **extra: Any) -> None:
        settings.CLOUDTASK = {
            **BASE,
            "TRANSPORT": "cloudtasks",
            "EMULATOR_HOST": emu.address,
            "PROJECT": emu.project,
            "LOCATION": emu.location,
            "QUEUES": queues,
            **extra,
        }

    return apply


def sync(*args: str) -> str:
    """Run manage.py cloudtask_sync; its output."""
    out = StringIO()
    call_command("cloudtask_sync", *args, stdout=out)
    return out.getvalue()


def queue_name(emu: Emulator, queue_id: str) -> str:
    return f"projects/{emu.project}/locations/{emu.location}/queues/{queue_id}"
