"""Fixtures for the on-commit tests: an in-process emulator delivering to a live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

from cloudtask.emulator import Emulator
from tests.models import TaskRecord
from tests.waiting import poll

from .jobs import DELIVERIES, Deliveries

BASE = dict(django_settings.CLOUDTASK)


@pytest.fixture(scope="session")
def oncommit_emulator() -> Iterator[Emulator]:
    with Emulator(auto_create_queues=True, log=None) as emu:
        yield emu


@pytest.fixture
def emulator(settings: Any, oncommit_emulator: Emulator, live_server: Any) -> Iterator[Emulator]:
    """The cloudtasks backend over gRPC to the emulator, which POSTs to a live Django server."""
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": oncommit_emulator.address,
        "PROJECT": oncommit_emulator.project,
        "LOCATION": oncommit_emulator.location,
        "URL": str(live_server.url) + "/_tasks/",
    }
    DELIVERIES.clear()
    yield oncommit_emulator
    # Nothing from this test may reach the next one.
    assert oncommit_emulator.wait_idle(timeout=20)
    DELIVERIES.clear()


@pytest.fixture
def deliveries() -> Deliveries:
    return DELIVERIES


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """condition()'s first truthy value, polled until timeout."""
    return poll(condition, timeout)


def records(label: str) -> list[dict[str, Any]]:
    return [r.payload for r in TaskRecord.objects.filter(label=label).order_by("pk")]


class Enqueued:
    """Names of the tasks the backend accepted (task_enqueued), in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.names.append(sender.name.rsplit(".", 1)[-1])

    def of(self, short_name: str) -> int:
        return self.names.count(short_name)


@pytest.fixture
def enqueued() -> Iterator[Enqueued]:
    from cloudtask import signals

    recorder = Enqueued()
    signals.task_enqueued.connect(recorder)
    yield recorder
    signals.task_enqueued.disconnect(recorder)
