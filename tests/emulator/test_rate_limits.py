"""Concurrency and rate limits: concurrent delivery, max_concurrent_dispatches, token bucket."""

from __future__ import annotations

import threading

from google.cloud import tasks_v2

from cloudtask.emulator import Emulator, ManualClock

from .conftest import Reply, Target


def test_a_slow_handler_does_not_delay_a_fast_task(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    release = threading.Event()
    target.script("/slow", Reply(200, wait=release))
    try:
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url("/slow")}}}
        )
        target.wait_for(1, path="/slow")
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url("/fast")}}}
        )
        target.wait_for(1, path="/fast")  # while /slow is still being answered
        assert not release.is_set()
    finally:
        release.set()
    assert emulator.wait_idle(5)
    assert [r.status for r in emulator.dispatches] == [200, 200]


def test_tasks_of_one_queue_go_out_concurrently(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    release = threading.Event()
    target.script("/task", Reply(200, wait=release))
    try:
        for _ in range(5):
            client.create_task(
                request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
            )
        target.wait_for(5)  # all five are being answered at the same time
    finally:
        release.set()
    assert emulator.wait_idle(5)
    assert target.peak == 5


def test_max_concurrent_dispatches_1_serializes(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.update_queue(
        request={"queue": {"name": queue, "rate_limits": {"max_concurrent_dispatches": 1}}}
    )
    release = threading.Event()
    target.script("/slow", Reply(200, wait=release))
    try:
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url("/slow")}}}
        )
        target.wait_for(1, path="/slow")
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url("/fast")}}}
        )
        for _ in range(3):
            client.create_task(
                request={"parent": queue, "task": {"http_request": {"url": target.url("/fast")}}}
            )
        # The fast tasks wait for the slow one's response.
        assert emulator.wait_idle(0.3) is False
        assert [r.path for r in target.received] == ["/slow"]
    finally:
        release.set()
    target.wait_for(4, path="/fast")
    assert emulator.wait_idle(5)
    assert target.peak == 1


def test_token_bucket_on_a_manual_clock(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    client.update_queue(
        request={
            "queue": {
                "name": queue,
                "rate_limits": {"max_dispatches_per_second": 2, "max_burst_size": 3},
            }
        }
    )
    client.pause_queue(name=queue)
    for _ in range(7):
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
        )
    client.resume_queue(name=queue)
    target.wait_for(3)  # the burst
    assert manual_emulator.wait_idle(0.2) is False
    assert len(target.received) == 3
    manual_clock.advance(0.5)  # one token at 2/s
    target.wait_for(4)
    assert manual_emulator.wait_idle(0.2) is False
    assert len(target.received) == 4
    manual_clock.advance(1.5)  # three more tokens
    target.wait_for(7)
    assert manual_emulator.wait_idle(5)


def test_default_burst_follows_the_rate(client: tasks_v2.CloudTasksClient, queue: str) -> None:
    updated = client.update_queue(
        request={"queue": {"name": queue, "rate_limits": {"max_dispatches_per_second": 50}}}
    )
    assert updated.rate_limits.max_burst_size == 10
