"""Retry schedule under a queue's retry_config, on a ManualClock: no real waiting."""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import threading
from functools import partial

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtask.emulator import Emulator, ManualClock

from .conftest import Reply, Target, wait_until


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def dispatched(emulator: Emulator, count: int) -> bool:
    return len(emulator.dispatches) >= count


def run_failing_task(
    emulator: Emulator, clock: ManualClock, target: Target, attempts: int
) -> tuple[list[float], str]:
    """Create a task, let it fail ``attempts`` times (jumping the clock to each retry), and
    return the gaps between attempts as Cloud Tasks scheduled them."""
    client = emulator.client()
    queue = emulator.ensure_queue("default")
    task = client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
    )
    gaps: list[float] = []
    for attempt in range(1, attempts + 1):
        wait_until(partial(dispatched, emulator, attempt), what=f"attempt {attempt}")
        try:
            scheduled = client.get_task(name=task.name).schedule_time.timestamp()
        except exceptions.NotFound:
            break  # given up
        gaps.append(round(scheduled - clock.now(), 6))
        clock.set(scheduled)
    return gaps, task.name


def test_documented_backoff_sequence(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    # Google's example: min 10 s, max 300 s, 3 doublings -> 10, 20, 40, 80, 160, 240, 300, 300.
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    client.update_queue(
        request={
            "queue": {
                "name": queue,
                "retry_config": {
                    "max_attempts": 9,
                    "min_backoff": seconds(10),
                    "max_backoff": seconds(300),
                    "max_doublings": 3,
                },
            }
        }
    )
    target.script("/task", 500)
    gaps, name = run_failing_task(manual_emulator, manual_clock, target, 9)
    assert gaps == [10, 20, 40, 80, 160, 240, 300, 300]
    # The dispatch times the emulator recorded show the same schedule.
    whens = [r.when for r in manual_emulator.dispatches]
    assert [round(b - a, 6) for a, b in itertools.pairwise(whens)] == gaps
    # The ninth attempt was the last one allowed: the task is gone.
    wait_until(lambda: len(manual_emulator.dispatches) == 9)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=name)
    assert len(target.received) == 9


def test_default_retry_config(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    target.script("/task", 500, 500, 500, 500, 500, 200)
    gaps, _ = run_failing_task(manual_emulator, manual_clock, target, 5)
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_delays_the_next_attempt(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target, status: int
) -> None:
    target.script("/task", Reply(status, headers={"Retry-After": "120"}), 200)
    gaps, _ = run_failing_task(manual_emulator, manual_clock, target, 1)
    assert gaps == [120]
    target.wait_for(2)


def test_retry_after_does_not_shorten_the_backoff(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    client.update_queue(
        request={"queue": {"name": queue, "retry_config": {"min_backoff": seconds(60)}}}
    )
    target.script("/task", Reply(503, headers={"Retry-After": "5"}), 200)
    gaps, _ = run_failing_task(manual_emulator, manual_clock, target, 1)
    assert gaps == [60]


def test_retry_stops_only_when_attempts_and_duration_are_both_reached(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    client.update_queue(
        request={
            "queue": {
                "name": queue,
                "retry_config": {
                    "max_attempts": 2,
                    "max_retry_duration": seconds(100),
                    "min_backoff": seconds(30),
                    "max_backoff": seconds(30),
                },
            }
        }
    )
    target.script("/task", 500)
    gaps, _ = run_failing_task(manual_emulator, manual_clock, target, 10)
    # Attempts at 0, 30, 60, 90, 120 s: two attempts were reached early, 100 s only at 120 s.
    assert gaps == [30, 30, 30, 30]
    assert len(target.received) == 5


def test_unlimited_attempts(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    client.update_queue(
        request={
            "queue": {
                "name": queue,
                "retry_config": {
                    "max_attempts": -1,
                    "min_backoff": seconds(1),
                    "max_backoff": seconds(1),
                },
            }
        }
    )
    target.script("/task", *([500] * 110), 200)
    gaps, _ = run_failing_task(manual_emulator, manual_clock, target, 110)
    assert len(gaps) == 110  # beyond the default 100 attempts, still retrying
    target.wait_for(111)
    assert manual_emulator.wait_idle(5)


def test_dispatch_deadline_fails_a_slow_attempt(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    # The shortest deadline Cloud Tasks allows is 15 s, so this test takes that long.
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    release = threading.Event()
    target.script("/task", Reply(200, wait=release), 200)
    task = client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url()}, "dispatch_deadline": seconds(15)},
        }
    )
    try:
        wait_until(lambda: manual_emulator.dispatches, timeout=40, what="deadline")
    finally:
        release.set()
    (record,) = manual_emulator.dispatches
    assert record.status is None
    assert record.error is not None and "DEADLINE_EXCEEDED" in record.error
    assert record.latency >= 15
    retried = client.get_task(name=task.name)
    assert retried.dispatch_count == 1 and retried.response_count == 0
    manual_clock.set(retried.schedule_time.timestamp())
    second = target.wait_for(2)[1]
    assert second.header("X-CloudTasks-TaskRetryReason") == record.error
    assert manual_emulator.wait_idle(5)


def test_queue_retry_config_is_reported_on_tasks(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.update_queue(request={"queue": {"name": queue, "retry_config": {"max_attempts": 7}}})
    client.pause_queue(name=queue)
    task = client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
    )
    assert task.retry_config.max_attempts == 7


def test_retry_after_as_an_http_date(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    when = email.utils.format_datetime(
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300), usegmt=True
    )
    target.script("/task", Reply(429, headers={"Retry-After": when}), 200)
    (gap,), _ = run_failing_task(manual_emulator, manual_clock, target, 1)
    assert 290 < gap <= 300  # whole seconds in the header; the test itself takes a moment
