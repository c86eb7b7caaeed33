"""Fixtures for the django.tasks backend tests: the in-process emulator delivering to a live
server, the runs tests/djangotasks/tasks.py recorded, and Django's task signals, all waited on
by condition."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.dispatch import Signal

from cloudtask.emulator import Emulator

# The emulator, live-server and polling fixtures are the core API tests' own.
from tests.api.conftest import Runs as Runs
from tests.api.conftest import emulator as emulator
from tests.api.conftest import endpoint_url as endpoint_url
from tests.api.conftest import poll as poll
from tests.api.conftest import via_emulator as via_emulator

from . import tasks


@pytest.fixture
def runs() -> Iterator[Runs]:
    recorder = Runs(tasks.RUNS, tasks.RUN_EVENT)
    recorder.clear()
    yield recorder
    recorder.clear()


class SignalLog:
    """Every sending of some signals, from any thread: (signal name, sender, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self._connected: list[tuple[Signal, Callable[..., None]]] = []

    def listen(self, name: str, signal: Signal) -> None:
        def receiver(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            with self.cond:
                self.calls.append((name, sender, kwargs))
                self.cond.notify_all()

        signal.connect(receiver, weak=False)
        self._connected.append((signal, receiver))

    def names(self) -> list[str]:
        with self.cond:
            return [name for name, _, _ in self.calls]

    def of(self, name: str) -> list[dict[str, Any]]:
        with self.cond:
            return [kwargs for n, _, kwargs in self.calls if n == name]

    def senders(self, name: str) -> list[Any]:
        with self.cond:
            return [sender for n, sender, _ in self.calls if n == name]

    def wait(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(found := [k for n, _, k in self.calls if n == name]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{name} sent {len(found)} times, expected {count}")
                self.cond.wait(remaining)
            return found

    def close(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)


@pytest.fixture
def signal_log() -> Iterator[SignalLog]:
    log = SignalLog()
    yield log
    log.close()


def deliveries(emulator: Emulator, task_id: str, count: int = 1) -> list[Any]:
    """The emulator's records of the first ``count`` deliveries of a task, once there are that
    many."""

    def probe() -> list[Any]:
        found = [d for d in emulator.dispatches if d.task == task_id]
        return found if len(found) >= count else []

    return list(poll(probe))


def statuses(emulator: Emulator, task_id: str, count: int) -> list[int | None]:
    """The HTTP statuses of the first ``count`` deliveries of a task."""
    return [d.status for d in deliveries(emulator, task_id, count)]
