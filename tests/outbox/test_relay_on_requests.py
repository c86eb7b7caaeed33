"""The opportunistic relay: every process that serves requests sends what the outbox holds, at
most once every CLOUDTASK["OUTBOX_RELAY_INTERVAL"] seconds, with no extra process.

The rows are left behind by a real outage (tests/outbox/fixtures.py: the emulator has no queue
for the test until ``cloud.restore()``); the requests are ordinary ones, to the admin's login
page, served by the live server or by Django's test client. Time passing is simulated by moving
the relay's last start back, as make_due() moves rows' next attempt back.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from cloudtask import outbox
from cloudtask.models import OutboxMessage

from .conftest import WAIT, wait_for
from .fixtures import Cloud, cloud, commit_pings, make_due, outbox_emulator

__all__ = ["cloud", "outbox_emulator"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

#: Long enough that no second relay is due during a test unless the test moves time on.
INTERVAL = 3600.0
PAGE = "/admin/login/"


class Passes:
    """The relay passes started in the background, counted as they begin (the real relay runs)."""

    def __init__(self, real: Callable[..., outbox.RelayResult]) -> None:
        self._real = real
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> outbox.RelayResult:
        with self._lock:
            self.threads.append(threading.current_thread().name)
        return self._real(*args, **kwargs)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.threads)


def finish_relay() -> None:
    """Wait for the background relay thread, if one runs, to end."""
    thread = outbox._relay_thread
    if thread is not None:
        thread.join(WAIT)
        assert not thread.is_alive(), "the background relay did not end"


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Passes]:
    """Counts the background relay's passes; this process has relayed never (so one is due)."""
    spy = Passes(outbox.relay)
    monkeypatch.setattr(outbox, "relay", spy)
    monkeypatch.setattr(outbox, "_last_relay", float("-inf"))
    monkeypatch.setattr(outbox, "_relay_thread", None)
    yield spy
    # No relay of this test may reach the next one (nor hold a connection to its database).
    finish_relay()


def relay_every(settings: Any, seconds: float) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "OUTBOX_RELAY_INTERVAL": seconds}


def due(task_id: str) -> None:
    """Let this row's backoff pass (what time would do), and only this row's."""
    OutboxMessage.objects.filter(task_id=task_id).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def test_a_request_to_the_site_sends_what_an_outage_left_behind(
    cloud: Cloud, passes: Passes, live_server: Any, settings: Any
) -> None:
    (handle,) = commit_pings("left behind")  # Cloud Tasks refused it at the commit
    cloud.restore()
    make_due()
    relay_every(settings, INTERVAL)
    assert passes.count == 0

    with urllib.request.urlopen(live_server.url + PAGE, timeout=WAIT) as response:
        assert response.status == 200

    # The live server relays after it answered (request_finished), in a thread of its own.
    assert cloud.delivered(1) == ["left behind"]
    wait_for(lambda: not OutboxMessage.objects.exists(), what="the row deleted once sent")
    assert [d.task for d in cloud.dispatched()] == [handle.task_id]
    finish_relay()
    # The task's delivery was a request too, and so were none of the others: one pass only.
    assert passes.threads == ["cloudtask-outbox-relay"]


def test_no_second_relay_within_the_interval(
    cloud: Cloud, passes: Passes, client: Client, settings: Any
) -> None:
    first, second = (str(h.task_id) for h in commit_pings("first", "second"))
    cloud.restore()
    relay_every(settings, INTERVAL)
    due(first)

    # The test client sends request_finished before get() returns: what it started is known.
    assert client.get(PAGE).status_code == 200
    finish_relay()
    assert passes.count == 1
    assert cloud.delivered(1) == ["first"]
    assert list(OutboxMessage.objects.values_list("task_id", flat=True)) == [second]

    due(second)
    for _ in range(5):
        assert client.get(PAGE).status_code == 200
    finish_relay()
    # Within the interval: no pass, the row waits.
    assert passes.count == 1
    assert list(OutboxMessage.objects.values_list("task_id", flat=True)) == [second]

    # The interval passes: the next request relays again.
    outbox._last_relay -= INTERVAL
    assert client.get(PAGE).status_code == 200
    finish_relay()
    assert passes.count == 2
    assert not OutboxMessage.objects.exists()
    assert cloud.delivered(2) == ["first", "second"]
    assert sorted(d.task for d in cloud.dispatched()) == sorted([first, second])


def test_an_interval_of_0_turns_the_request_relay_off(
    cloud: Cloud, passes: Passes, client: Client, settings: Any
) -> None:
    (handle,) = commit_pings("stays")
    cloud.restore()
    make_due()
    relay_every(settings, 0)

    for _ in range(3):
        assert client.get(PAGE).status_code == 200

    assert outbox._relay_thread is None and passes.count == 0
    assert list(OutboxMessage.objects.values_list("task_id", flat=True)) == [handle.task_id]
    assert cloud.deliveries.of("ping") == []
