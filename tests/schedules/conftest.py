"""Fixtures for the schedules tests: emulators (wall clock, manual clock), an HTTP target, the
recorded runs of tests/schedules/jobs.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from google.cloud import scheduler_v1

from cloudtask.emulator import Emulator, ManualClock
from tests.api.conftest import Runs
from tests.emulator.conftest import Target
from tests.schedules import jobs

#: The manual clock starts here: 2026-03-01 00:00 UTC.
START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START.timestamp())


@pytest.fixture
def manual_emulator(clock: ManualClock) -> Iterator[Emulator]:
    with Emulator(log=None, clock=clock, dashboard=False) as emu:
        yield emu


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(log=None, dashboard=False, auto_create_queues=True) as emu:
        yield emu


@pytest.fixture
def scheduler(emulator: Emulator) -> scheduler_v1.CloudSchedulerClient:
    return emulator.scheduler_client()


@pytest.fixture
def runs() -> Iterator[Runs]:
    recorder = Runs(jobs.RUNS, jobs.RUN_EVENT)
    recorder.clear()
    yield recorder
    recorder.clear()
