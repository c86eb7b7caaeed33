"""Cron firing on the emulator's ManualClock: cron times in a job's time zone, daylight-saving
days, paused jobs, and Cloud Scheduler's retry_config."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from google.cloud import scheduler_v1

from cloudtask.emulator import Emulator, ManualClock
from tests.emulator.conftest import Received, Target


def _create(
    emulator: Emulator, target: Target, schedule: str, time_zone: str, **fields: object
) -> scheduler_v1.Job:
    return emulator.scheduler_client().create_job(
        parent=emulator.location_path,
        job=scheduler_v1.Job(
            name=f"{emulator.location_path}/jobs/job",
            schedule=schedule,
            time_zone=time_zone,
            http_target=scheduler_v1.HttpTarget(uri=target.url("/fired"), body=b"{}"),
            **fields,
        ),
    )


def _fired_for(requests: list[Received]) -> list[datetime]:
    return [
        datetime.fromisoformat(r.header("X-CloudScheduler-ScheduleTime") or "") for r in requests
    ]


def _fire(
    emulator: Emulator, clock: ManualClock, target: Target, job: scheduler_v1.Job, count: int
) -> list[datetime]:
    """Move the clock to each next firing the job reports, ``count`` times; the times the
    deliveries say they fired for (X-CloudScheduler-ScheduleTime)."""
    client = emulator.scheduler_client()
    assert emulator.scheduler is not None
    seen = len(target.received)
    for n in range(count):
        due = client.get_job(name=job.name).schedule_time
        clock.set(due.timestamp())
        target.wait_for(seen + n + 1, path="/fired")
        assert emulator.scheduler.wait_idle()
    return _fired_for(target.received[seen:])


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, s: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, s, tzinfo=UTC)


def test_fires_at_cron_times_in_its_time_zone(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    job = _create(manual_emulator, target, "0 3 * * 1-5", "Europe/Zurich")
    assert job.schedule_time == utc(2026, 3, 2, 2)  # Monday 03:00 CET

    # Just before: nothing yet.
    clock.set(utc(2026, 3, 2, 1, 59, 59).timestamp())
    assert manual_emulator.scheduler is not None and manual_emulator.scheduler.wait_idle()
    assert target.received == []

    fired = _fire(manual_emulator, clock, target, job, 6)

    # Monday to Friday at 03:00 in Zurich (02:00 UTC in winter), then the next Monday.
    assert fired == [
        utc(2026, 3, 2, 2),
        utc(2026, 3, 3, 2),
        utc(2026, 3, 4, 2),
        utc(2026, 3, 5, 2),
        utc(2026, 3, 6, 2),
        utc(2026, 3, 9, 2),
    ]
    assert all(r.header("X-CloudScheduler-JobName") == "job" for r in target.received)


def test_spring_forward_a_time_in_the_skipped_hour_fires_when_the_clocks_jump(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    # New York, 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist that day.
    clock.set(utc(2026, 3, 6, 12).timestamp())
    job = _create(manual_emulator, target, "30 2 * * *", "America/New_York")

    assert _fire(manual_emulator, clock, target, job, 3) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT, the first instant after the gap
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_fall_back_a_time_in_the_repeated_hour_fires_once(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    # New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice that day.
    clock.set(utc(2026, 10, 30, 12).timestamp())
    job = _create(manual_emulator, target, "30 1 * * *", "America/New_York")

    assert _fire(manual_emulator, clock, target, job, 3) == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, its first occurrence only
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_an_hourly_job_follows_elapsed_time_across_both_transitions(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    clock.set(utc(2026, 3, 8, 5, 30).timestamp())  # 00:30 EST
    job = _create(manual_emulator, target, "0 * * * *", "America/New_York")
    spring = _fire(manual_emulator, clock, target, job, 3)
    # 01:00 EST, then 03:00 EDT (there is no 02:00), then 04:00 EDT: one hour apart each.
    assert spring == [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]

    client = manual_emulator.scheduler_client()
    client.pause_job(name=job.name)
    clock.set(utc(2026, 11, 1, 4, 30).timestamp())  # 00:30 EDT
    client.resume_job(name=job.name)
    fall = _fire(manual_emulator, clock, target, job, 4)
    # 01:00 EDT, 01:00 EST (the repeated hour fires again), 02:00 EST, 03:00 EST.
    assert fall == [
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 7),
        utc(2026, 11, 1, 8),
    ]


def test_a_paused_job_does_not_fire_and_missed_times_are_not_replayed(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    job = _create(manual_emulator, target, "*/10 * * * *", "UTC")
    client = manual_emulator.scheduler_client()
    client.pause_job(name=job.name)
    assert manual_emulator.scheduler is not None

    clock.advance(3600)
    assert manual_emulator.scheduler.wait_idle()
    assert target.received == []

    resumed = client.resume_job(name=job.name)
    # The next firing after now: the six missed ones are not delivered.
    assert resumed.schedule_time == utc(2026, 3, 1, 1, 10)
    clock.advance(1)
    assert manual_emulator.scheduler.wait_idle()
    assert target.received == []
    assert _fire(manual_emulator, clock, target, job, 1) == [utc(2026, 3, 1, 1, 10)]


def test_a_clock_jump_over_several_cron_times_fires_once_for_the_latest(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    _create(manual_emulator, target, "*/10 * * * *", "UTC")

    clock.set(utc(2026, 3, 1, 0, 35).timestamp())
    target.wait_for(1, path="/fired")
    assert manual_emulator.scheduler is not None and manual_emulator.scheduler.wait_idle()

    assert _fired_for(target.received) == [utc(2026, 3, 1, 0, 30)]


def test_a_failed_firing_is_retried_under_the_jobs_retry_config(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    target.script("/fired", 500, 503, 200)
    job = _create(
        manual_emulator,
        target,
        "0 3 * * *",
        "UTC",
        retry_config=scheduler_v1.RetryConfig(
            retry_count=3,
            min_backoff_duration=timedelta(seconds=10),
            max_backoff_duration=timedelta(seconds=100),
        ),
    )
    client = manual_emulator.scheduler_client()
    scheduler = manual_emulator.scheduler
    assert scheduler is not None
    clock.set(job.schedule_time.timestamp())
    target.wait_for(1, path="/fired")
    assert scheduler.wait_idle()
    failed = client.get_job(name=job.name)
    assert failed.status.code == 13  # INTERNAL, for HTTP 500
    assert failed.status.message == "HTTP status code 500"

    clock.advance(9)  # the first backoff is min_backoff_duration: 10 s
    assert scheduler.wait_idle()
    assert len(target.received) == 1
    clock.advance(1)
    target.wait_for(2, path="/fired")
    assert scheduler.wait_idle()  # the attempt's outcome is recorded: its backoff counts from now
    clock.advance(20)  # then it doubles
    target.wait_for(3, path="/fired")
    assert scheduler.wait_idle()

    # Every attempt is the same firing; the last one succeeded and nothing more is sent.
    assert _fired_for(target.received) == [utc(2026, 3, 1, 3)] * 3
    assert [a.attempt for a in scheduler.attempts] == [1, 2, 3]
    assert client.get_job(name=job.name).status.code == 0
    clock.advance(3600)
    assert scheduler.wait_idle()
    assert len(target.received) == 3


def test_without_retries_a_failed_firing_waits_for_the_next_cron_time(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    target.script("/fired", 500)
    job = _create(manual_emulator, target, "0 3 * * *", "UTC")  # retry_count 0 by default
    scheduler = manual_emulator.scheduler
    assert scheduler is not None

    clock.set(job.schedule_time.timestamp())
    target.wait_for(1, path="/fired")
    clock.advance(3600)
    assert scheduler.wait_idle()

    assert len(target.received) == 1
    assert manual_emulator.scheduler_client().get_job(name=job.name).schedule_time == utc(
        2026, 3, 2, 3
    )


def test_jobs_survive_a_snapshot_but_missed_firings_are_not_replayed(
    manual_emulator: Emulator, clock: ManualClock, target: Target
) -> None:
    """What a state file keeps (Scheduler.snapshot / restore): the jobs and their paused state;
    after a restart the next firing is after now, as with Cloud Scheduler."""
    job = _create(manual_emulator, target, "0 3 * * *", "Europe/Zurich")
    client = manual_emulator.scheduler_client()
    client.create_job(
        parent=manual_emulator.location_path,
        job=scheduler_v1.Job(
            name=f"{manual_emulator.location_path}/jobs/paused",
            schedule="*/5 * * * *",
            http_target=scheduler_v1.HttpTarget(uri=target.url("/paused")),
        ),
    )
    client.pause_job(name=f"{manual_emulator.location_path}/jobs/paused")
    assert manual_emulator.scheduler is not None
    saved = json.loads(json.dumps(manual_emulator.scheduler.snapshot()))

    later = ManualClock(start=utc(2026, 3, 5, 12).timestamp())  # three nightly firings missed
    with Emulator(log=None, clock=later, dashboard=False) as restarted:
        assert restarted.scheduler is not None
        restarted.scheduler.restore(saved)
        again = restarted.scheduler_client()
        restored = again.get_job(name=job.name)
        assert restored.http_target == job.http_target
        assert restored.schedule_time == utc(2026, 3, 6, 2)  # the next one, not the missed ones
        paused = again.get_job(name=f"{restarted.location_path}/jobs/paused")
        assert paused.state == scheduler_v1.Job.State.PAUSED
        assert restarted.scheduler.wait_idle()
    assert target.received == []
