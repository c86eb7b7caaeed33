"""Fixtures of the outbox operations tests (command, drain route, admin), imported by them.

Rows come the way production makes them: on-commit calls committed while Cloud Tasks refuses
them. The outage is real: the emulator has no queue for this test, so CreateTask answers
NOT_FOUND until ``cloud.restore()`` creates it; then the rows are sent over gRPC and delivered
over HTTP to the live server, where tests/oncommit/jobs.py records each delivery.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from cloudtask.dispatch import TaskHandle
from cloudtask.emulator import Emulator
from cloudtask.emulator.dispatcher import DispatchRecord
from cloudtask.models import OutboxMessage
from tests.oncommit.jobs import DELIVERIES, Deliveries, ping, ping_other

BASE = dict(django_settings.CLOUDTASK)
_queues = itertools.count(1)


class Cloud:
    """The emulator as Cloud Tasks, delivering to the live server; this test's queue is missing
    (every send fails) until restore()."""

    def __init__(self, emulator: Emulator, queue: str) -> None:
        self.emulator = emulator
        self.queue = queue
        self.deliveries: Deliveries = DELIVERIES

    def restore(self, *, paused: bool = False) -> None:
        """Create the queue: sends succeed from now on. Paused, it accepts tasks but delivers
        them only after resume()."""
        name = self.emulator.ensure_queue(self.queue)
        if paused:
            self.emulator.client().pause_queue(name=name)

    def resume(self) -> None:
        self.emulator.client().resume_queue(name=self.emulator.queue_path(self.queue))

    def dispatched(self) -> list[DispatchRecord]:
        """The emulator's delivery attempts of this test's tasks."""
        return [r for r in self.emulator.dispatches if r.queue == self.queue]

    def delivered(self, count: int) -> list[str]:
        """Wait for count deliveries of ping, let the emulator settle, and return their labels
        (sorted): exactly count, or the test fails."""
        self.deliveries.wait("ping", count)
        assert self.emulator.wait_idle(timeout=20)
        return sorted(d["label"] for d in self.deliveries.of("ping"))


@pytest.fixture(scope="module")
def outbox_emulator() -> Iterator[Emulator]:
    # No auto_create_queues: a queue nobody created is the outage these tests need.
    with Emulator(log=None) as emu:
        yield emu


@pytest.fixture
def cloud(settings: Any, outbox_emulator: Emulator, live_server: Any) -> Iterator[Cloud]:
    queue = f"outbox-ops-{next(_queues)}"
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": outbox_emulator.address,
        "PROJECT": outbox_emulator.project,
        "LOCATION": outbox_emulator.location,
        "URL": str(live_server.url) + "/_tasks/",
        "QUEUE": queue,
        # Only the relay under test sends rows: no opportunistic background relay.
        "OUTBOX_RELAY_INTERVAL": 0,
        "ENQUEUE_RETRY_DEADLINE": 0,
    }
    DELIVERIES.clear()
    yield Cloud(outbox_emulator, queue)
    # Nothing from this test may reach the next one.
    assert outbox_emulator.wait_idle(timeout=20)
    DELIVERIES.clear()


def commit_pings(*labels: str, other: bool = False) -> list[TaskHandle]:
    """Commit one on-commit call per label; with Cloud Tasks down each stays an outbox row."""
    task = ping_other if other else ping
    with transaction.atomic(using="other" if other else "default"):
        handles = [task(label).delay() for label in labels]
    assert [h.state for h in handles] == ["outboxed"] * len(labels)
    return handles


def make_due(using: str = "default") -> None:
    """Let the rows' backoff pass (what time would do)."""
    OutboxMessage.objects.using(using).update(next_attempt_at=timezone.now())
