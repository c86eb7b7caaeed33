"""A schedule in the settings, end to end: job_for -> a job in the emulator's Cloud Scheduler ->
fired -> delivered to the live Django server -> the registered task runs, authenticated, once per
firing."""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from google.api_core import exceptions
from google.cloud import scheduler_v1

from cloudtask import records, schedules
from cloudtask.emulator import Emulator
from cloudtask.models import TaskExecution
from tests import waiting
from tests.api.conftest import Runs

pytestmark = pytest.mark.django_db(transaction=True)

SAE = "cron@test-project.iam.gserviceaccount.com"
REPORT = {
    "task": "schedules.report",
    "cron": "0 3 * * *",
    "time_zone": "Europe/Zurich",
    "args": [date(2026, 3, 1)],
    "kwargs": {"kind": "weekly"},
    "description": "the weekly report",
}


@pytest.fixture
def site(settings: Any, emulator: Emulator, live_server: Any) -> dict[str, Any]:
    """CLOUDTASK for the live server: OIDC tokens from the emulator's issuer and HMAC
    signatures both required; Cloud Tasks is the emulator too (for schedules with a queue)."""
    settings.CLOUDTASK = {
        **django_settings.CLOUDTASK,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
        "PROJECT": emulator.project,
        "LOCATION": emulator.location,
        "URL": f"{live_server.url}/_tasks/",
        "SAE": SAE,
        "SECRET": "schedule-secret",
        "OIDC_VERIFY": True,
        "OIDC_CERTS_URL": emulator.certs_url,
        "SCHEDULES": {
            "weekly-report": REPORT,
            "hourly-cleanup": {
                "task": "schedules.cleanup",
                "cron": "0 * * * *",
                "queue": "maintenance",
            },
        },
    }
    return dict(settings.CLOUDTASK)


def _create(emulator: Emulator, schedule: schedules.Schedule | str) -> scheduler_v1.Job:
    """The schedule's job (a settings one by name), created afresh in the emulator."""
    if isinstance(schedule, str):
        schedule = schedules.get_schedules()[schedule]
    job = schedules.job_for(schedule, parent=emulator.location_path)
    client = emulator.scheduler_client()
    with contextlib.suppress(exceptions.NotFound):
        client.delete_job(name=job.name)  # left by an earlier test of this module
    return client.create_job(parent=emulator.location_path, job=job)


def _replay(job: scheduler_v1.Job, emulator: Emulator, fired_for: str) -> tuple[int, str]:
    """POST one firing of the job as Cloud Scheduler delivers it (a repeated delivery)."""
    target = job.http_target
    assert emulator.issuer is not None
    headers = {
        **target.headers,
        "X-CloudScheduler": "true",
        "X-CloudScheduler-JobName": job.name.rsplit("/", 1)[-1],
        "X-CloudScheduler-ScheduleTime": fired_for,
        "User-Agent": "Google-Cloud-Scheduler",
        "Authorization": "Bearer "
        + emulator.issuer.token(
            target.oidc_token.service_account_email, target.oidc_token.audience, time.time()
        ),
    }
    request = urllib.request.Request(target.uri, data=target.body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_fired_schedule_runs_its_task_with_its_arguments(
    site: dict[str, Any], emulator: Emulator, runs: Runs
) -> None:
    job = _create(emulator, "weekly-report")

    emulator.scheduler_client().run_job(name=job.name)

    (run,) = runs.wait("report")
    assert run["day"] == date(2026, 3, 1)
    assert run["kind"] == "weekly"
    # The request says a schedule fired it, and for which time.
    assert run["schedule_name"] == "weekly-report"
    assert abs(run["schedule_time"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert run["user_agent"] == "Google-Cloud-Scheduler"
    assert run["queue_name"] is None  # run inline, within Cloud Scheduler's request
    record = waiting.poll(
        lambda: (r := records.lookup(run["task_id"])) and r.status != "running" and r
    )
    assert record.status == TaskExecution.Status.SUCCEEDED
    assert record.task_name == "schedules.report"
    assert record.return_value == "weekly report for 2026-03-01"
    assert emulator.scheduler is not None and emulator.scheduler.wait_idle()
    assert emulator.scheduler_client().get_job(name=job.name).status.code == 0


def test_a_repeated_delivery_of_one_firing_runs_once(
    site: dict[str, Any], emulator: Emulator, runs: Runs
) -> None:
    job = _create(emulator, "weekly-report")

    first = _replay(job, emulator, "2026-03-02T02:00:00Z")
    again = _replay(job, emulator, "2026-03-02T02:00:00Z")
    other = _replay(job, emulator, "2026-03-09T02:00:00Z")

    assert first == (200, "ok")
    assert again == (200, "duplicate delivery; already done, not run again")
    assert other == (200, "ok")
    fired = [r["schedule_time"] for r in runs.of("report")]
    assert fired == [datetime(2026, 3, 2, 2, tzinfo=UTC), datetime(2026, 3, 9, 2, tzinfo=UTC)]


def test_a_firing_is_authenticated_like_a_task(
    site: dict[str, Any], emulator: Emulator, runs: Runs
) -> None:
    job = _create(emulator, "weekly-report")
    target = job.http_target
    unsigned = {k: v for k, v in target.headers.items() if k != "X-CloudTask-Signature"}

    for headers in (
        {**target.headers, "X-CloudScheduler": "true"},  # no OIDC token
        {**unsigned, "X-CloudScheduler": "true", "Authorization": "Bearer x.y.z"},
    ):
        request = urllib.request.Request(target.uri, data=target.body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    assert runs.of("report") == []


def test_a_schedule_with_a_queue_enqueues_each_firing_there(
    site: dict[str, Any], emulator: Emulator, runs: Runs
) -> None:
    job = _create(emulator, "hourly-cleanup")

    status = _replay(job, emulator, "2026-03-01T10:00:00Z")
    again = _replay(job, emulator, "2026-03-01T10:00:00Z")

    assert status[0] == 200 and status[1].startswith("enqueued as task ")
    assert status[1].endswith(" on queue maintenance")
    assert again == (200, "firing already enqueued; not again")
    (run,) = runs.wait("cleanup")
    # Delivered by Cloud Tasks from the queue, still saying which firing it came from.
    assert run["queue_name"] == "maintenance"
    assert run["user_agent"] == "Google-Cloud-Tasks"
    assert run["schedule_name"] == "hourly-cleanup"
    assert run["schedule_time"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert status[1] == f"enqueued as task {run['task_id']} on queue maintenance"
    assert emulator.wait_idle()
    assert len(runs.of("cleanup")) == 1


def test_a_job_naming_an_unregistered_task_is_404_and_runs_nothing(
    site: dict[str, Any], emulator: Emulator, runs: Runs
) -> None:
    ghost = schedules.Schedule(name="ghost", task="schedules.ghost", cron="0 3 * * *")
    job = _create(emulator, ghost)
    client = emulator.scheduler_client()

    client.run_job(name=job.name)

    scheduler = emulator.scheduler
    assert scheduler is not None
    attempt = waiting.poll(lambda: [a for a in scheduler.attempts if a.job == "ghost"])[0]
    assert attempt.status == 404
    assert client.get_job(name=job.name).status.code == 5  # NOT_FOUND
    assert jobs_ran(runs) == []


def jobs_ran(runs: Runs) -> list[dict[str, Any]]:
    return runs.of("report") + runs.of("cleanup")


def _own_url(live_server: Any) -> str:
    """The live server under another name than CLOUDTASK["URL"] gives it: a schedule's own url."""
    url = f"{live_server.url}/_tasks/"
    assert "//localhost:" in url
    return url.replace("//localhost:", "//127.0.0.1:")


def test_a_schedule_with_its_own_url_carries_the_audience_the_endpoint_verifies(
    site: dict[str, Any], settings: Any, live_server: Any, emulator: Emulator, runs: Runs
) -> None:
    own = _own_url(live_server)
    settings.CLOUDTASK = {**site, "SCHEDULES": {"own-url": {**REPORT, "url": own}}}
    job = _create(emulator, "own-url")

    emulator.scheduler_client().run_job(name=job.name)

    (run,) = runs.wait("report")
    assert run["schedule_name"] == "own-url"
    assert job.http_target.uri == own
    # OIDC_AUDIENCE, else URL: what the endpoint accepts (not the schedule's url).
    assert job.http_target.oidc_token.audience == site["URL"]


def test_a_firing_through_a_queue_goes_to_the_schedules_url(
    site: dict[str, Any], settings: Any, live_server: Any, emulator: Emulator, runs: Runs
) -> None:
    own = _own_url(live_server)
    settings.CLOUDTASK = {
        **site,
        "URL": None,  # only the schedule says where the endpoint is
        "OIDC_AUDIENCE": site["URL"],
        "SCHEDULES": {
            "own-cleanup": {
                "task": "schedules.cleanup",
                "cron": "0 * * * *",
                "queue": "maintenance",
                "url": own,
            }
        },
    }
    job = _create(emulator, "own-cleanup")

    status, answer = _replay(job, emulator, "2026-03-01T11:00:00Z")

    assert status == 200 and answer.startswith("enqueued as task "), answer
    (run,) = runs.wait("cleanup")
    assert run["queue_name"] == "maintenance"
    assert run["schedule_name"] == "own-cleanup"
    # Delivered, with no CLOUDTASK["URL"] to go to: the schedule's url was the only address.
    assert emulator.wait_idle()
    assert [d.status for d in emulator.dispatches if d.task == run["task_id"]] == [200]


def test_a_firing_with_nowhere_to_send_its_call_is_a_logged_500(
    site: dict[str, Any],
    settings: Any,
    emulator: Emulator,
    runs: Runs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = _create(emulator, "hourly-cleanup")  # made while URL was set
    settings.CLOUDTASK = {**site, "URL": None, "OIDC_AUDIENCE": site["URL"]}

    with caplog.at_level(logging.ERROR, logger="cloudtask"):
        answer = _replay(job, emulator, "2026-03-01T12:00:00Z")

    assert answer == (500, "schedule misconfigured; not enqueued (see the log)")
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "cloudtask"]
    assert logged.startswith(
        "Schedule hourly-cleanup could not enqueue task schedules.cleanup on queue maintenance: "
    )
    assert 'CLOUDTASK["URL"]' in logged
    assert "CLOUDTASK[\"SCHEDULES\"]['hourly-cleanup']" in logged
    assert runs.of("cleanup") == []
