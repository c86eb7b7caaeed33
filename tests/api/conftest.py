"""Fixtures for the core API tests: an in-process emulator, a live server, recorded runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

from cloudtask.emulator import Emulator
from tests import tasks as test_tasks
from tests import waiting

BASE = dict(django_settings.CLOUDTASK)


class Runs:
    """The runs some tasks recorded (tests/tasks.py's by default), with a condition-based wait
    (no sleeps)."""

    def __init__(
        self,
        runs: list[dict[str, Any]] = test_tasks.RUNS,
        event: threading.Condition = test_tasks.RUN_EVENT,
    ) -> None:
        self.runs = runs
        self.event = event

    def clear(self) -> None:
        with self.event:
            self.runs.clear()

    def of(self, label: str) -> list[dict[str, Any]]:
        with self.event:
            return [r for r in self.runs if r["label"] == label]

    def wait(self, label: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.event:
            while True:
                found = [r for r in self.runs if r["label"] == label]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{label} ran {len(found)} times, expected {count}")
                self.event.wait(remaining)


@pytest.fixture
def runs() -> Iterator[Runs]:
    recorder = Runs()
    recorder.clear()
    yield recorder
    recorder.clear()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(auto_create_queues=True, log=None) as emu:
        yield emu


@pytest.fixture
def endpoint_url(live_server: Any) -> str:
    return str(live_server.url) + "/_tasks/"


@pytest.fixture
def via_emulator(settings: Any, emulator: Emulator, endpoint_url: str) -> Emulator:
    """The cloudtasks backend over gRPC to the in-process emulator, delivering to a live server."""
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
        "PROJECT": emulator.project,
        "LOCATION": emulator.location,
        "URL": endpoint_url,
    }
    return emulator


class Waiter:
    """Collect signal calls from any thread and wait for them."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, **kwargs: Any) -> None:
        with self.cond:
            self.calls.append(kwargs)
            self.cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.calls) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.calls)} signal calls, expected {count}")
                self.cond.wait(remaining)
            return list(self.calls)


def poll(probe: Any, timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Return probe()'s first truthy value, polling until a deadline (for state that has no
    event to wait on, like the emulator's dispatch records)."""
    return waiting.poll(probe, timeout, interval=interval)
