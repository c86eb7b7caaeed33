"""Scheduling: aware and naive datetimes, countdowns, and the 30-day limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django.utils.timezone import now

from cloudtask import InvalidSchedule
from cloudtask.message import resolve_schedule
from cloudtask.transports.base import BaseTransport, EnqueuedTask, TaskMessage
from tests.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)

SENT: list[TaskMessage] = []


class RecordingTransport(BaseTransport):
    """A dotted-path backend that records what it is asked to send."""

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        SENT.append(message)
        return EnqueuedTask(
            resource_name=f"projects/p/locations/l/queues/{message.queue}/tasks/t{len(SENT)}",
            schedule_time=message.schedule_time,
        )


@pytest.fixture
def recording(settings: Any) -> list[TaskMessage]:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": f"{__name__}.RecordingTransport"}
    SENT.clear()
    return SENT


def test_scheduled_task_waits_in_the_queue(via_emulator: Any, runs: Any) -> None:
    at = now() + timedelta(days=2)
    handle = add(a=3, b=6).schedule(at=at)
    assert handle.schedule_time == at
    task = via_emulator.client().get_task(name=handle.name)
    # The emulator keeps times as float seconds: equal to well under a millisecond.
    assert abs(task.schedule_time - at) < timedelta(milliseconds=1)
    assert runs.of("add") == []
    via_emulator.client().delete_task(name=handle.name)


def test_countdown_runs_later_with_the_eta(via_emulator: Any, runs: Any) -> None:
    before = datetime.now(UTC)
    handle = add(a=1, b=1).schedule(countdown=0.5)
    (run,) = runs.wait("add")
    assert run["eta"] >= before + timedelta(seconds=0.5) - timedelta(milliseconds=1)
    assert handle.schedule_time is not None
    assert abs(run["eta"] - handle.schedule_time) < timedelta(milliseconds=1)


def test_timedelta_forms(recording: list[TaskMessage]) -> None:
    start = datetime.now(UTC)
    add().schedule(timedelta(hours=1))
    add().schedule(countdown=timedelta(minutes=5))
    add().schedule(countdown=90)
    deltas = [m.schedule_time - start for m in recording if m.schedule_time]
    assert [round(d.total_seconds() / 10) * 10 for d in deltas] == [3600, 300, 90]


def test_more_than_30_days_is_refused_before_any_api_call(recording: list[TaskMessage]) -> None:
    with pytest.raises(InvalidSchedule, match="more than 30 days ahead"):
        add().schedule(at=now() + timedelta(days=30, minutes=1))
    with pytest.raises(InvalidSchedule):
        add().schedule(countdown=timedelta(days=31))
    assert recording == []
    add().schedule(at=now() + timedelta(days=29, hours=23))
    assert len(recording) == 1


def test_past_times_mean_now(recording: list[TaskMessage]) -> None:
    add().schedule(at=now() - timedelta(hours=1))
    assert len(recording) == 1


def test_naive_datetime_uses_the_current_time_zone() -> None:
    zone = ZoneInfo("Asia/Kathmandu")
    naive = (datetime.now(zone) + timedelta(hours=2)).replace(tzinfo=None)
    with timezone.override(zone):
        when = resolve_schedule(naive, None)
    assert when.utcoffset() == timedelta(hours=5, minutes=45)
    assert when.replace(tzinfo=None) == naive


def test_naive_datetime_without_use_tz_is_local_time(settings: Any) -> None:
    settings.USE_TZ = False
    naive = datetime.now() + timedelta(hours=2)
    assert resolve_schedule(naive, None) == naive.astimezone()


def test_bad_arguments() -> None:
    with pytest.raises(InvalidSchedule, match="not both"):
        add().schedule(at=now(), countdown=5)
    with pytest.raises(InvalidSchedule, match="needs at="):
        add().schedule()
    with pytest.raises(InvalidSchedule, match="must be a datetime"):
        add().schedule(at="tomorrow")  # type: ignore[arg-type]


def test_immediate_backend_runs_scheduled_calls_now(runs: Any) -> None:
    handle = add(a=2, b=2).schedule(at=now() + timedelta(days=1))
    assert handle.state == "sent"
    assert len(runs.of("add")) == 1
