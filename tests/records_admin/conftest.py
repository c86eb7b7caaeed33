"""Fixtures for the execution-record, get_result and admin tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client

from cloudtask.emulator import Emulator
from tests.waiting import poll

from . import tasks

BASE = dict(django_settings.CLOUDTASK)


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """condition()'s first truthy value, polled until timeout."""
    return poll(condition, timeout)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(auto_create_queues=True, log=None) as emu:
        yield emu


@pytest.fixture
def via_emulator(settings: Any, emulator: Emulator, live_server: Any) -> Iterator[Emulator]:
    """The cloudtasks transport over gRPC to the in-process emulator, which POSTs each task to
    the endpoint of a live server and retries a failed one, as Cloud Tasks does."""
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
        "PROJECT": emulator.project,
        "LOCATION": emulator.location,
        "URL": str(live_server.url) + "/_tasks/",
    }
    yield emulator
    assert emulator.wait_idle(timeout=20.0)


@pytest.fixture
def mended_runs() -> Iterator[list[tuple[str | None, Any]]]:
    """What tests/records_admin/tasks.py's mended() ran, starting broken."""
    tasks.RUNS.clear()
    tasks.BROKEN.set()
    yield tasks.RUNS
    tasks.BROKEN.clear()
    tasks.RUNS.clear()


@pytest.fixture
def admin(client: Client) -> Client:
    """Django's test client, logged in as a superuser."""
    user = User.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return client
