"""cloudtask.schedules: the settings and the decorator, next_run, job_for / is_managed, and
`manage.py cloudtask_tasks`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import override_settings
from google.cloud import scheduler_v1

from cloudtask import (
    CloudTaskRequest,
    ConfigurationError,
    Schedule,
    TaskRegistrationError,
    registry,
    schedule,
    schedules,
    task,
)
from cloudtask.conf import get_settings
from cloudtask.emulator import Emulator
from cloudtask.serialization import decode_envelope
from cloudtask.signing import sign
from tests.schedules import jobs  # noqa: F401 - registers the tasks named below

WEEKLY = {
    "task": "schedules.report",
    "cron": "0 3 * * MON",
    "time_zone": "Europe/Zurich",
    "args": [date(2026, 3, 1)],
    "kwargs": {"kind": "weekly"},
    "description": "the weekly report",
}


def with_schedules(entries: dict[str, Any]) -> Any:
    return override_settings(CLOUDTASK={**django_settings.CLOUDTASK, "SCHEDULES": entries})


def test_settings_become_schedules() -> None:
    with with_schedules({"weekly": WEEKLY}):
        found = schedules.get_schedules()
    assert found == {
        "weekly": Schedule(
            name="weekly",
            task="schedules.report",
            cron="0 3 * * MON",
            time_zone="Europe/Zurich",
            args=(date(2026, 3, 1),),
            kwargs={"kind": "weekly"},
            description="the weekly report",
        )
    }
    assert found["weekly"].deadline == timedelta(minutes=3)
    assert found["weekly"].retry.retry_count == 0


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_next_run_in_the_schedules_time_zone_and_across_daylight_saving() -> None:
    weekly = Schedule(name="w", task="t", cron="0 3 * * MON", time_zone="Europe/Zurich")
    assert schedules.next_run(weekly, utc(2026, 3, 1)) == utc(2026, 3, 2, 2)  # CET
    assert schedules.next_run(weekly, utc(2026, 3, 30)) == utc(2026, 3, 30, 1)  # CEST

    skipped = Schedule(name="s", task="t", cron="30 2 * * *", time_zone="America/New_York")
    assert schedules.next_run(skipped, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7)  # 03:00 EDT
    repeated = Schedule(name="r", task="t", cron="30 1 * * *", time_zone="America/New_York")
    # After the first 01:30 of 2026-11-01 (EDT), the next is the next day's, not 01:30 EST.
    assert schedules.next_run(repeated, utc(2026, 11, 1, 5, 31)) == utc(2026, 11, 2, 6, 30)
    hourly = Schedule(name="h", task="t", cron="0 * * * *", time_zone="America/New_York")
    assert schedules.next_run(hourly, utc(2026, 11, 1, 5, 1)) == utc(2026, 11, 1, 6)
    assert schedules.next_run(weekly) > datetime.now(UTC)


@pytest.fixture
def nightly() -> Iterator[Any]:
    @schedule(
        "15 4 * * *", time_zone="Europe/Zurich", kwargs={"dry_run": True}, retry={"retry_count": 2}
    )
    @task(name="schedules.nightly")
    def nightly(request: CloudTaskRequest, dry_run: bool = False) -> None:
        pass

    yield nightly
    schedules.unregister("schedules-nightly")
    registry.unregister("schedules.nightly")


def test_the_decorator_registers_a_schedule_named_after_the_task(nightly: Any) -> None:
    assert nightly.name == "schedules.nightly"  # the task itself, unchanged
    found = schedules.get_schedules()["schedules-nightly"]
    assert found.task == "schedules.nightly"
    assert found.cron == "15 4 * * *"
    assert found.time_zone == "Europe/Zurich"
    assert found.kwargs == {"dry_run": True}
    assert found.retry.retry_count == 2


def test_the_decorator_refuses_mistakes_at_import_time() -> None:
    with pytest.raises(TaskRegistrationError, match="has 4 fields"):

        @schedule("15 4 * *")
        @task(name="schedules.never")
        def never(request: CloudTaskRequest) -> None:
            pass

    registry.unregister("schedules.never")
    with pytest.raises(TaskRegistrationError, match="put it above @task"):

        @task(name="schedules.upside_down")  # type: ignore[type-var]
        @schedule("15 4 * * *")
        def upside_down(request: CloudTaskRequest) -> None:
            pass

    assert "schedules-never" not in schedules.get_schedules()


def test_job_for_builds_the_whole_job() -> None:
    settings = get_settings()
    with with_schedules({"weekly": {**WEEKLY, "deadline": 600}}):
        weekly = schedules.get_schedules()["weekly"]
        job = schedules.job_for(weekly, parent="projects/p/locations/l")

    assert job.name == "projects/p/locations/l/jobs/weekly"
    assert job.schedule == "0 3 * * MON"
    assert job.time_zone == "Europe/Zurich"
    target = job.http_target
    assert target.uri == settings.url == "http://testserver/_tasks/"
    assert target.http_method == scheduler_v1.HttpMethod.POST
    # The body is the task call the endpoint routes by the registry, signed with SECRET.
    assert decode_envelope(target.body) == (
        "schedules.report",
        (date(2026, 3, 1),),
        {"kind": "weekly"},
    )
    assert target.headers["Content-Type"] == "application/json"
    assert target.headers["X-CloudTask-Signature"] == sign(target.body, settings)
    assert "X-CloudTask-Schedule-Queue" not in target.headers
    # An OIDC token for SAE, with the audience the endpoint verifies (here: URL).
    assert target.oidc_token.service_account_email == settings.sae
    assert target.oidc_token.audience == settings.url
    assert job.attempt_deadline == timedelta(minutes=10)
    assert job.retry_config == scheduler_v1.RetryConfig(
        retry_count=0,
        max_retry_duration=timedelta(0),
        min_backoff_duration=timedelta(seconds=5),
        max_backoff_duration=timedelta(hours=1),
        max_doublings=5,
    )
    assert job.description == "the weekly report [managed by cloudtask]"
    assert schedules.is_managed(job)
    assert not schedules.is_managed(scheduler_v1.Job(description="made by hand"))


def test_job_for_a_schedule_with_a_queue_says_so() -> None:
    queued = Schedule(name="q", task="schedules.cleanup", cron="0 * * * *", queue="maintenance")
    job = schedules.job_for(queued, parent="projects/p/locations/l")
    assert job.http_target.headers["X-CloudTask-Schedule-Queue"] == "maintenance"
    assert job.description == "[managed by cloudtask]"


def test_job_for_needs_an_endpoint_url() -> None:
    ownerless = Schedule(name="x", task="schedules.cleanup", cron="0 * * * *")
    with (
        override_settings(CLOUDTASK={**django_settings.CLOUDTASK, "URL": None}),
        pytest.raises(ConfigurationError, match="""CLOUDTASK\\["URL"\\] is not set"""),
    ):
        schedules.job_for(ownerless, parent="p")


def test_a_job_read_back_from_cloud_scheduler_equals_job_for(emulator: Emulator) -> None:
    """What cloudtask_sync compares: the service fills in nothing job_for left out."""
    with with_schedules({"weekly": WEEKLY}):
        desired = schedules.job_for(
            schedules.get_schedules()["weekly"], parent=emulator.location_path
        )
    stored = emulator.scheduler_client().create_job(parent=emulator.location_path, job=desired)
    for field in (
        "name",
        "description",
        "schedule",
        "time_zone",
        "http_target",
        "attempt_deadline",
        "retry_config",
    ):
        assert getattr(stored, field) == getattr(desired, field), field
    emulator.scheduler_client().delete_job(name=stored.name)


def test_cloudtask_tasks_lists_schedules_with_their_next_run() -> None:
    yearly = {"task": "schedules.cleanup", "cron": "0 3 1 1 *", "time_zone": "Asia/Tokyo"}
    with with_schedules({"new-year": yearly, "weekly": WEEKLY}):
        found = schedules.get_schedules()
        out = StringIO()
        call_command("cloudtask_tasks", stdout=out)
        as_json = StringIO()
        call_command("cloudtask_tasks", "--json", stdout=as_json)

    fire = schedules.next_run(found["new-year"])
    year = fire.year + 1  # the new year in Tokyo begins on 31 December in UTC
    assert fire == datetime(year - 1, 12, 31, 18, tzinfo=UTC)  # 03:00 in Tokyo, UTC+9
    text = out.getvalue()
    assert "Schedules (2):" in text
    assert (
        f"  new-year  '0 3 1 1 *' Asia/Tokyo  -> schedules.cleanup  next run "
        f"{year}-01-01T03:00:00+09:00 ({year - 1}-12-31T18:00:00Z)"
    ) in text
    rows = json.loads(as_json.getvalue())["schedules"]
    assert rows[0] == {
        "name": "new-year",
        "task": "schedules.cleanup",
        "cron": "0 3 1 1 *",
        "time_zone": "Asia/Tokyo",
        "next_run": f"{year}-01-01T03:00:00+09:00",
        "next_run_utc": f"{year - 1}-12-31T18:00:00Z",
    }
    assert rows[1]["name"] == "weekly"
    assert rows[1]["args"] == ["datetime.date(2026, 3, 1)"]
