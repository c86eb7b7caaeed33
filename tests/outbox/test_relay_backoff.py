"""A row that keeps failing: it backs off exponentially with jitter, and once it is older than
CLOUDTASK["OUTBOX_ALERT_AGE"] every failure is logged at ERROR.

The failures are real: the emulator has no queue for the test (tests/outbox/fixtures.py), so
each CreateTask answers NOT_FOUND, at the commit and on every relay pass after it.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from cloudtask.models import OutboxMessage
from cloudtask.outbox import relay

from .fixtures import Cloud, cloud, commit_pings, make_due, outbox_emulator

__all__ = ["cloud", "outbox_emulator"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

TASK = "tests.oncommit.jobs.ping"


def backoff(row: OutboxMessage) -> timedelta:
    """How long the row waits after its last failed attempt."""
    assert row.last_attempt_at is not None
    return row.next_attempt_at - row.last_attempt_at


def window(attempts: int) -> tuple[timedelta, timedelta]:
    """The documented backoff after a row's n-th failure (docs/nothing-lost.md): 2**n seconds,
    at most 5 minutes, plus up to 25% jitter."""
    base = min(2.0**attempts, 300.0)  # 2, 4, 8, ... 256, then 300, 300 ...
    return timedelta(seconds=base), timedelta(seconds=base * 1.25)


def fail_once_more() -> OutboxMessage:
    """Let the backoff pass and run a relay pass, which fails; the row after it."""
    make_due()
    result = relay(aliases=["default"])
    assert (result.sent, result.failed, result.duplicates) == (0, 1, 0)
    return OutboxMessage.objects.get()


def test_a_failing_row_backs_off_2_4_8_seconds_up_to_the_cap(cloud: Cloud) -> None:
    commit_pings("down")  # the first failure: the send at the commit
    row = OutboxMessage.objects.get()
    assert row.attempts == 1
    low, high = window(1)
    assert low <= backoff(row) <= high

    # Attempt 9 is the first past the cap (2**9 = 512 > 300 s); 10 shows the cap holds.
    for attempts in range(2, 11):
        row = fail_once_more()
        assert row.attempts == attempts
        assert row.last_error.startswith("QueueNotFound: ")
        low, high = window(attempts)
        assert low <= backoff(row) <= high, (attempts, backoff(row))

    # Until the backoff passes, the relay leaves the row alone.
    result = relay(aliases=["default"])
    assert (result.sent, result.failed) == (0, 0)
    assert OutboxMessage.objects.get().attempts == 10


def test_rows_failing_together_come_back_spread_out(cloud: Cloud) -> None:
    # Twenty calls of one commit fail at once; with jitter they are not retried all at once.
    commit_pings(*(f"call {i}" for i in range(20)))
    rows = list(OutboxMessage.objects.all())
    assert {row.attempts for row in rows} == {1}

    delays = [backoff(row) for row in rows]
    low, high = window(1)
    assert all(low <= d <= high for d in delays), delays
    assert len(set(delays)) > 1, "every row waits exactly as long: no jitter"
    assert len({row.next_attempt_at for row in rows}) > 1


def outbox_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cloudtask.outbox"]


def test_a_row_older_than_the_alert_age_is_logged_at_error_each_time_it_fails(
    cloud: Cloud, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "OUTBOX_ALERT_AGE": 600}
    (handle,) = commit_pings("stuck")
    row = OutboxMessage.objects.get()
    head = (
        f"Outbox row {row.pk} (task {TASK}, task id {handle.task_id}, schedule time now) "
        "failed to send on attempt"
    )

    # Younger than the alert age: a warning.
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=9))
    caplog.clear()  # (the failure at the commit was logged too)
    with caplog.at_level(logging.WARNING, logger="cloudtask.outbox"):
        fail_once_more()
    (young,) = outbox_records(caplog)
    assert young.levelno == logging.WARNING
    assert young.getMessage().startswith(f"{head} 2 (")

    # Older: an error, at every failure.
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=11))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cloudtask.outbox"):
        fail_once_more()
        fail_once_more()
    old = outbox_records(caplog)
    assert [r.levelno for r in old] == [logging.ERROR, logging.ERROR]
    for record, attempt in zip(old, (3, 4), strict=True):
        message = record.getMessage()
        assert message.startswith(f"{head} {attempt} (")
        # Its age (11 minutes, plus the test's own time), the error, and the next try.
        found = re.search(r" \((\d+) s old\): ", message)
        assert found and 660 <= int(found.group(1)) < 600 + 3600, message
        assert "QueueNotFound" in message
        assert "the relay tries again after" in message


def test_the_alert_age_defaults_to_an_hour(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    commit_pings("stuck")

    levels = []
    for minutes in (59, 61):
        OutboxMessage.objects.update(created_at=timezone.now() - timedelta(minutes=minutes))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cloudtask.outbox"):
            fail_once_more()
        levels += [r.levelno for r in outbox_records(caplog)]

    assert levels == [logging.WARNING, logging.ERROR]
