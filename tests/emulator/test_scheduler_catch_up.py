"""A Cloud Scheduler job after a long sleep (a laptop closed for a year): it fires once, for its
latest cron time, found at once rather than by walking every cron time it slept through."""

from __future__ import annotations

from datetime import UTC, datetime

from google.cloud import scheduler_v1

from cloudtask.emulator import Emulator, ManualClock

from .conftest import Target


def test_a_job_asleep_for_a_year_fires_once_for_its_latest_minute(target: Target) -> None:
    clock = ManualClock(start=datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    with Emulator(log=None, clock=clock, dashboard=False) as emu:
        client = emu.scheduler_client()
        job = client.create_job(
            parent=emu.location_path,
            job=scheduler_v1.Job(
                name=f"{emu.location_path}/jobs/every-minute",
                schedule="* * * * *",
                http_target=scheduler_v1.HttpTarget(uri=target.url("/fired")),
            ),
        )
        # 525,600 minutes later, and a few seconds: more cron times than any walk would take.
        clock.set(datetime(2027, 1, 1, 0, 0, 42, tzinfo=UTC).timestamp())
        (request,) = target.wait_for(1, path="/fired")
        assert request.header("X-CloudScheduler-ScheduleTime") == "2027-01-01T00:00:00Z"
        assert client.get_job(name=job.name).schedule_time == datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
        assert emu.scheduler is not None and emu.scheduler.wait_idle()
        # A cron time exactly now is the latest one, not the one before.
        clock.set(datetime(2027, 1, 1, 0, 5, tzinfo=UTC).timestamp())
        target.wait_for(2, path="/fired")
        assert target.received[1].header("X-CloudScheduler-ScheduleTime") == "2027-01-01T00:05:00Z"
