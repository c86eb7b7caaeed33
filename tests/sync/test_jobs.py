"""manage.py cloudtask_sync on Cloud Scheduler jobs: CLOUDTASK["SCHEDULES"] made into jobs of the
emulator's Cloud Scheduler service, read back with the real google-cloud-scheduler client."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from django.core.management import CommandError
from google.api_core import exceptions as api_exceptions
from google.cloud import scheduler_v1

from cloudtask.emulator import Emulator, cron

from .conftest import sync

NIGHTLY = {"task": "tests.tasks.add", "cron": "0 3 * * *", "kwargs": {"a": 1, "b": 2}}
HOURLY = {
    "task": "tests.tasks.echo",
    "cron": "15 * * * *",
    "time_zone": "Europe/Zurich",
    "retry": {"retry_count": 2},
}


def job_name(emu: Emulator, job_id: str) -> str:
    return f"projects/{emu.project}/locations/{emu.location}/jobs/{job_id}"


def test_creates_the_jobs(emu: Emulator, configure: Callable[..., None]) -> None:
    configure({"default": {}}, SCHEDULES={"nightly": NIGHTLY, "hourly": HOURLY})

    out = sync()

    assert "Scheduler jobs in " in out
    assert "create    job hourly\n" in out
    assert "              schedule: 15 * * * *\n" in out
    assert "              time_zone: Europe/Zurich\n" in out
    assert "              retry_count: 2\n" in out
    assert "created queue default\ncreated job hourly\ncreated job nightly\n" in out
    assert "Done: 1 queue created, 2 jobs created." in out
    job = emu.scheduler_client().get_job(name=job_name(emu, "nightly"))
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "UTC")
    assert job.http_target.uri == "http://testserver/_tasks/"
    assert "[managed by cloudtask]" in job.description


def test_a_second_run_changes_nothing_and_says_so(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure(
        {"default": {}, "emails": {"max_attempts": 3}},
        SCHEDULES={"nightly": NIGHTLY, "hourly": HOURLY},
    )
    sync()
    before = sum(writes.values())

    out = sync()

    assert out.splitlines()[-1] == "Nothing to change: 2 queues and 2 jobs match the settings."
    assert "unchanged job nightly" in out
    assert sum(writes.values()) == before == 4


def test_an_update_shows_the_changed_fields(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure({}, SCHEDULES={"nightly": NIGHTLY, "hourly": HOURLY})
    sync()
    configure(
        {},
        SCHEDULES={
            "nightly": {**NIGHTLY, "cron": "30 4 * * *", "kwargs": {"a": 5, "b": 2}},
            "hourly": HOURLY,
        },
    )

    out = sync()

    assert "update    job nightly\n" in out
    assert "              schedule: 0 3 * * * -> 30 4 * * *\n" in out
    assert "              body: " in out  # the encoded call changed with its arguments
    assert "unchanged job hourly" in out
    assert "Done: 1 job updated." in out
    assert writes["update_job"] == 1
    job = emu.scheduler_client().get_job(name=job_name(emu, "nightly"))
    assert job.schedule == "30 4 * * *"
    assert b'"a":5' in job.http_target.body.replace(b" ", b"")
    assert sync().splitlines()[-1] == "Nothing to change: 0 queues and 2 jobs match the settings."


def test_a_paused_job_stays_paused(emu: Emulator, configure: Callable[..., None]) -> None:
    configure({}, SCHEDULES={"nightly": NIGHTLY})
    sync()
    client = emu.scheduler_client()
    client.pause_job(name=job_name(emu, "nightly"))
    configure({}, SCHEDULES={"nightly": {**NIGHTLY, "cron": "0 5 * * *"}})

    out = sync()

    assert "update    job nightly (paused; cloudtask_sync leaves a job's state alone)" in out
    job = client.get_job(name=job_name(emu, "nightly"))
    assert (job.schedule, job.state) == ("0 5 * * *", scheduler_v1.Job.State.PAUSED)


def test_prune_deletes_a_managed_job_no_longer_named_never_another(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    client = emu.scheduler_client()
    parent = f"projects/{emu.project}/locations/{emu.location}"
    client.create_job(
        parent=parent,
        job=scheduler_v1.Job(
            name=f"{parent}/jobs/handmade",
            schedule="0 1 * * *",
            http_target=scheduler_v1.HttpTarget(uri="http://testserver/elsewhere/"),
        ),
    )
    configure({}, SCHEDULES={"nightly": NIGHTLY, "hourly": HOURLY})
    sync()
    configure({}, SCHEDULES={"nightly": NIGHTLY})

    without = sync()
    assert "No longer in the settings (--prune deletes them): job hourly." in without
    pruned = sync("--prune")

    assert "delete    job hourly" in pruned
    assert "Not created by cloudtask_sync, left alone: job handmade." in pruned
    assert "Done: 1 job deleted." in pruned
    with pytest.raises(api_exceptions.NotFound):
        client.get_job(name=job_name(emu, "hourly"))
    assert client.get_job(name=f"{parent}/jobs/handmade").schedule == "0 1 * * *"
    assert client.get_job(name=job_name(emu, "nightly")).schedule == "0 3 * * *"


def test_prune_without_schedules_still_removes_managed_jobs(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    configure({}, SCHEDULES={"nightly": NIGHTLY})
    sync()
    configure({})

    assert "Scheduler jobs" not in sync()  # nothing named, nothing to prune: jobs not read
    out = sync("--prune")

    assert "delete    job nightly" in out
    assert (
        list(
            emu.scheduler_client().list_jobs(
                parent=f"projects/{emu.project}/locations/{emu.location}"
            )
        )
        == []
    )


def test_schedules_without_the_scheduler_client_name_the_extra(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if google-cloud-scheduler were not installed (it is, for the other tests).
    monkeypatch.setattr(cron, "HAVE_SCHEDULER", False)
    configure({}, SCHEDULES={"nightly": NIGHTLY})

    with pytest.raises(CommandError) as raised:
        sync()

    assert str(raised.value) == (
        "Cloud Scheduler needs google-cloud-scheduler: pip install 'dj-cloud-task[scheduler]'."
    )
