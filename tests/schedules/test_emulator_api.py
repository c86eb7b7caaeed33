"""The emulator's Cloud Scheduler service, through the official google-cloud-scheduler client."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions
from google.cloud import scheduler_v1

from cloudtask.emulator import Emulator
from tests.emulator.conftest import Target


def _job(emulator: Emulator, target: Target, **fields: object) -> scheduler_v1.Job:
    job_id = fields.pop("job_id", f"job-{uuid.uuid4().hex[:8]}")
    values: dict[str, object] = {
        "name": f"{emulator.location_path}/jobs/{job_id}",
        "schedule": "0 3 * * *",
        "http_target": scheduler_v1.HttpTarget(uri=target.url("/fired"), body=b"{}"),
    }
    values.update(fields)
    return scheduler_v1.Job(**values)


def test_create_get_list_delete(emulator: Emulator, target: Target) -> None:
    client = emulator.scheduler_client()
    created = client.create_job(
        parent=emulator.location_path,
        job=_job(emulator, target, time_zone="Europe/Zurich", description="nightly"),
    )

    assert created.state == scheduler_v1.Job.State.ENABLED
    assert created.time_zone == "Europe/Zurich"
    # Google's defaults are filled in, as the real service reports them.
    assert created.attempt_deadline == timedelta(minutes=3)
    assert created.retry_config.retry_count == 0
    assert created.retry_config.min_backoff_duration == timedelta(seconds=5)
    assert created.retry_config.max_backoff_duration == timedelta(hours=1)
    assert created.retry_config.max_doublings == 5
    assert created.http_target.http_method == scheduler_v1.HttpMethod.POST
    # The next firing: 03:00 in Zurich.
    assert created.schedule_time.astimezone(UTC).hour in (1, 2)
    assert created.schedule_time.minute == 0

    assert client.get_job(name=created.name) == created
    names = [j.name for j in client.list_jobs(parent=emulator.location_path)]
    assert created.name in names

    with pytest.raises(exceptions.AlreadyExists):
        client.create_job(
            parent=emulator.location_path,
            job=_job(emulator, target, job_id=created.name.rsplit("/", 1)[-1]),
        )

    client.delete_job(name=created.name)
    with pytest.raises(exceptions.NotFound):
        client.get_job(name=created.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_job(name=created.name)


def test_list_pages(emulator: Emulator, target: Target) -> None:
    client = emulator.scheduler_client()
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        client.create_job(
            parent=emulator.location_path, job=_job(emulator, target, job_id=f"{prefix}-{n}")
        )
    pager = client.list_jobs(request={"parent": emulator.location_path, "page_size": 2})
    names = [
        j.name.rsplit("/", 1)[-1] for j in pager if j.name.rsplit("/", 1)[-1].startswith(prefix)
    ]
    assert names == [f"{prefix}-0", f"{prefix}-1", f"{prefix}-2"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"job_id": "bad.id"}, "job id 'bad.id' is invalid"),
        ({"job_id": "x" * 501}, "use 1 to 500 characters"),
        ({"schedule": "0 3 * *"}, "has 4 fields"),
        ({"schedule": "0 3 L * *"}, "day of month field 'L'"),
        ({"schedule": "61 3 * * *"}, "out of range"),
        ({"schedule": "0 0 31 2 *"}, "never fires"),  # valid fields, no such date
        ({"schedule": "@daily"}, "has 1 fields"),
        ({"time_zone": "Mars/Olympus"}, "time zone 'Mars/Olympus' is not in the tz database"),
        ({"attempt_deadline": timedelta(seconds=10)}, "between 15 seconds and 30 minutes"),
        ({"attempt_deadline": timedelta(minutes=31)}, "between 15 seconds and 30 minutes"),
        ({"retry_config": scheduler_v1.RetryConfig(retry_count=6)}, "retry_count must be 0 to 5"),
        (
            {
                "retry_config": scheduler_v1.RetryConfig(
                    min_backoff_duration=timedelta(seconds=60),
                    max_backoff_duration=timedelta(seconds=10),
                )
            },
            "must not be greater than",
        ),
        (
            {"pubsub_target": scheduler_v1.PubsubTarget(topic_name="projects/p/topics/t")},
            "HTTP target jobs only",
        ),
    ],
)
def test_validation(
    emulator: Emulator, target: Target, fields: dict[str, object], message: str
) -> None:
    client = emulator.scheduler_client()
    job = _job(emulator, target, **fields)
    if "pubsub_target" in fields:
        del job.http_target
    with pytest.raises(exceptions.InvalidArgument, match=message):
        client.create_job(parent=emulator.location_path, job=job)


def test_update_with_mask(emulator: Emulator, target: Target) -> None:
    client = emulator.scheduler_client()
    created = client.create_job(parent=emulator.location_path, job=_job(emulator, target))

    updated = client.update_job(
        job=scheduler_v1.Job(name=created.name, schedule="*/5 * * * *", description="ignored"),
        update_mask={"paths": ["schedule"]},
    )

    assert updated.schedule == "*/5 * * * *"
    assert updated.description == created.description  # not in the mask
    assert updated.http_target == created.http_target
    assert updated.schedule_time - datetime.now(UTC) <= timedelta(minutes=5)
    with pytest.raises(exceptions.InvalidArgument, match="has 2 fields"):
        client.update_job(
            job=scheduler_v1.Job(name=created.name, schedule="every day"),
            update_mask={"paths": ["schedule"]},
        )
    with pytest.raises(exceptions.NotFound):
        client.update_job(
            job=scheduler_v1.Job(name=f"{emulator.location_path}/jobs/none", schedule="* * * * *"),
            update_mask={"paths": ["schedule"]},
        )


def test_pause_resume(emulator: Emulator, target: Target) -> None:
    client = emulator.scheduler_client()
    created = client.create_job(parent=emulator.location_path, job=_job(emulator, target))

    paused = client.pause_job(name=created.name)
    assert paused.state == scheduler_v1.Job.State.PAUSED
    assert client.get_job(name=created.name).state == scheduler_v1.Job.State.PAUSED
    with pytest.raises(exceptions.FailedPrecondition):
        client.pause_job(name=created.name)

    resumed = client.resume_job(name=created.name)
    assert resumed.state == scheduler_v1.Job.State.ENABLED
    assert resumed.schedule_time > datetime.now(UTC)
    with pytest.raises(exceptions.FailedPrecondition):
        client.resume_job(name=created.name)


def test_run_job_fires_now_like_cloud_scheduler(emulator: Emulator, target: Target) -> None:
    client = emulator.scheduler_client()
    created = client.create_job(
        parent=emulator.location_path,
        job=_job(
            emulator,
            target,
            http_target=scheduler_v1.HttpTarget(
                uri=target.url("/fired"),
                body=b'{"hello": 1}',
                headers={"Content-Type": "application/json", "X-Extra": "yes"},
                oidc_token=scheduler_v1.OidcToken(service_account_email="cron@p.iam"),
            ),
        ),
    )
    job_id = created.name.rsplit("/", 1)[-1]

    client.run_job(name=created.name)

    (request,) = target.wait_for(1, path="/fired")
    assert request.method == "POST"
    assert request.body == b'{"hello": 1}'
    assert request.header("Content-Type") == "application/json"
    assert request.header("X-Extra") == "yes"
    assert request.header("User-Agent") == "Google-Cloud-Scheduler"
    assert request.header("X-CloudScheduler") == "true"
    assert request.header("X-CloudScheduler-JobName") == job_id
    fired_for = datetime.fromisoformat(request.header("X-CloudScheduler-ScheduleTime") or "")
    assert abs(fired_for - datetime.now(UTC)) < timedelta(minutes=1)
    assert (request.header("Authorization") or "").startswith("Bearer ")
    assert emulator.scheduler is not None and emulator.scheduler.wait_idle()
    job = client.get_job(name=created.name)
    assert job.status.code == 0
    assert job.last_attempt_time is not None
    # RunJob leaves the cron cycle alone.
    assert job.schedule_time == created.schedule_time


WITHOUT_SCHEDULER = """
import sys
sys.modules["google.cloud.scheduler_v1"] = None  # as if google-cloud-scheduler were missing
import grpc
from cloudtask.emulator import Emulator
from cloudtask.emulator import cron

assert not cron.HAVE_SCHEDULER
with Emulator(log=None, dashboard=False, queues=["default"]) as emu:
    assert emu.scheduler is None
    print(emu.client().get_queue(name=emu.queue_path("default")).name)
    call = grpc.insecure_channel(emu.address).unary_unary(
        "/google.cloud.scheduler.v1.CloudScheduler/ListJobs"
    )
    try:
        call(b"", timeout=10)
    except grpc.RpcError as exc:
        print(exc.code().name)
    try:
        emu.scheduler_client()
    except RuntimeError as exc:
        print(exc)
"""


def test_without_google_cloud_scheduler_the_emulator_serves_cloud_tasks_alone() -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-c", WITHOUT_SCHEDULER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "projects/local-project/locations/local/queues/default",
        "UNIMPLEMENTED",
        "The Cloud Scheduler client is not installed: pip install 'dj-cloud-task[scheduler]'",
    ]
