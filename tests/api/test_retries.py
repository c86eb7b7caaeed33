"""Discard, Retry and max_attempts as Cloud Tasks sees them: real deliveries via the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask import signals
from tests.tasks import always_fails, discard_me, fails_once, retry_me

from .conftest import Waiter, poll

pytestmark = pytest.mark.django_db(transaction=True)


def statuses(emulator: Any, task_id: str | None, count: int) -> list[int | None]:
    def probe() -> list[int | None]:
        found = [d.status for d in emulator.dispatches if d.task == task_id]
        return found if len(found) >= count else []

    return list(poll(probe))


def test_retry_asks_cloud_tasks_to_try_again(via_emulator: Any, runs: Any) -> None:
    handle = retry_me(until=1).delay()
    first, second = runs.wait("retry_me", 2)
    assert (first["retry_count"], second["retry_count"]) == (0, 1)
    assert statuses(via_emulator, handle.id, 2) == [503, 200]


def test_a_failing_task_is_retried(via_emulator: Any, runs: Any) -> None:
    handle = fails_once().delay()
    runs.wait("fails_once", 2)
    assert statuses(via_emulator, handle.id, 2) == [500, 200]


def test_discard_stops_without_retry(via_emulator: Any, runs: Any) -> None:
    handle = discard_me("done").delay()
    runs.wait("discard_me")
    assert via_emulator.wait_idle()
    assert statuses(via_emulator, handle.id, 1) == [200]
    assert len(runs.of("discard_me")) == 1


def test_max_attempts_ends_retries_with_a_final_failure(via_emulator: Any, runs: Any) -> None:
    waiter = Waiter()
    signals.task_failed.connect(waiter, sender=always_fails)
    try:
        handle = always_fails().delay()
        calls = waiter.wait(2)
        assert via_emulator.wait_idle()
    finally:
        signals.task_failed.disconnect(waiter, sender=always_fails)
    assert [c["final"] for c in calls] == [False, True]
    assert statuses(via_emulator, handle.id, 2) == [500, 200]
    assert len(runs.of("always_fails")) == 2
