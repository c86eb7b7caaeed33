"""The local emulator gets CLOUDTASK["QUEUES"] applied when a process connects to it (the
emulator_connected signal, received as apps.py connects it): a queue's retry config then
governs real deliveries, and a queue removed from the settings is pruned."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cloudtask.emulator import Emulator
from cloudtask.sync import SyncError
from cloudtask.transports import get_transport
from cloudtask.transports.emulator import EmulatorTransport, emulator_connected
from tests.api.conftest import BASE, Runs
from tests.tasks import raises_type_error

from .conftest import queue_name, sync

PARENT = "projects/{emu.project}/locations/{emu.location}"

pytestmark = pytest.mark.django_db(transaction=True)

FLAKY = {"max_attempts": 3, "min_backoff": 0, "max_backoff": 0}


@pytest.fixture
def local(settings: Any, emu: Emulator, live_server: Any) -> Any:
    """Settings that send to the emulator and deliver to the live server, with these QUEUES."""

    def apply(queues: dict[str, Any], **extra: Any) -> None:
        settings.CLOUDTASK = {
            **BASE,
            "TRANSPORT": "cloudtasks",
            "EMULATOR_HOST": emu.address,
            "PROJECT": emu.project,
            "LOCATION": emu.location,
            "URL": f"{live_server.url}/_tasks/",
            "QUEUE": "flaky",
            "QUEUES": queues,
            **extra,
        }

    return apply


def connect(emu: Emulator) -> None:
    emulator_connected.send(
        sender=EmulatorTransport, address=emu.address, project=emu.project, location=emu.location
    )


def test_connecting_applies_queues_and_their_max_attempts_governs_delivery(
    emu: Emulator, local: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    runs.clear()
    local({"flaky": FLAKY})

    with caplog.at_level(logging.INFO, logger="cloudtask.sync"):
        connect(emu)

    assert [r.getMessage() for r in caplog.records if r.name == "cloudtask.sync"] == [
        f"Applied CLOUDTASK QUEUES and SCHEDULES to the emulator at {emu.address}: 1 queue created."
    ]
    assert emu.client().get_queue(name=queue_name(emu, "flaky")).retry_config.max_attempts == 3
    handle = raises_type_error().delay()
    runs.wait("raises_type_error", 3)
    assert emu.wait_idle()
    assert [d.status for d in emu.dispatches if d.task == handle.task_id] == [500, 500, 500]
    seen = runs.of("raises_type_error")
    assert len(seen) == 3
    # The queue's marker, a queue-level header override, reaches every delivery.
    assert {r["headers"].get("X-Cloudtask-Managed") for r in seen} == {"cloudtask_sync"}
    runs.clear()


def test_a_later_connect_prunes_and_an_error_is_loud(
    emu: Emulator, local: Any, caplog: pytest.LogCaptureFixture
) -> None:
    local({"flaky": FLAKY, "gone": {}})
    connect(emu)
    local({"flaky": FLAKY})
    connect(emu)
    assert [
        q.name.rsplit("/", 1)[-1] for q in emu.client().list_queues(parent=PARENT.format(emu=emu))
    ] == ["flaky"]
    local({"flaky": FLAKY, "gone": {}})

    with caplog.at_level(logging.INFO, logger="cloudtask.sync"), pytest.raises(SyncError) as raised:
        connect(emu)

    assert "create queue gone: a queue named 'gone' was deleted recently" in str(raised.value)
    errors = [
        r for r in caplog.records if r.name == "cloudtask.sync" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1
    assert "deleted recently" in errors[0].getMessage()


def test_cloudtask_sync_on_the_embedded_emulator_dry_run_changes_nothing(settings: Any) -> None:
    # Connecting for cloudtask_sync does not apply the settings behind its back: the command
    # is the sync, and --dry-run must change nothing. (An emulator of this test's own, inside
    # the process: its options are unique, and it stops when the process exits.)
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "EMULATOR": {"LOG": False, "PERSIST": False, "DEDUP_WINDOW": 3599.25},
        "QUEUES": {"emails": {"max_attempts": 4}},
    }

    out = sync("--dry-run")

    assert "create    queue emails" in out
    emu = get_transport().emulator  # type: ignore[attr-defined]
    assert [q.name for q in emu.client().list_queues(parent=PARENT.format(emu=emu))] == []
    assert "created queue emails" in sync()
    assert emu.client().get_queue(name=queue_name(emu, "emails")).retry_config.max_attempts == 4


def test_connecting_applies_schedules_and_a_removed_one_stops_firing(
    emu: Emulator, local: Any
) -> None:
    local({"flaky": FLAKY}, SCHEDULES={"nightly": {"task": "tests.tasks.add", "cron": "0 3 * * *"}})
    connect(emu)
    client = emu.scheduler_client()
    parent = PARENT.format(emu=emu)
    assert [j.name for j in client.list_jobs(parent=parent)] == [f"{parent}/jobs/nightly"]

    local({"flaky": FLAKY})
    connect(emu)

    assert list(client.list_jobs(parent=parent)) == []


def test_a_schedule_mistake_is_logged_and_never_stops_the_send(
    emu: Emulator, local: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # docs/schedules.md: a schedule mistake never stops tasks from being sent.
    nightly = {"task": "tests.tasks.add", "cron": "0 3 * * *"}
    local({"flaky": FLAKY}, SCHEDULES={"nightly": nightly, "weekly": nightly})
    connect(emu)
    local(
        {"flaky": FLAKY},
        SCHEDULES={
            "nightly": {**nightly, "cron": "30 3 * * *"},
            "weekly": {**nightly, "cron": "0 0 31 2 *"},  # February 31: never fires
            "odd": {**nightly, "args": [object()]},  # cannot be serialized into a job
        },
    )

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cloudtask.sync"):
        connect(emu)  # no exception: the send that connected goes on

    client = emu.scheduler_client()
    parent = PARENT.format(emu=emu)
    jobs = {j.name.rsplit("/", 1)[-1]: j.schedule for j in client.list_jobs(parent=parent)}
    # The good one is applied; the one with a mistake keeps the job it had, unpruned.
    assert jobs == {"nightly": "30 3 * * *", "weekly": "0 3 * * *"}
    logged = {
        r.levelname + " " + r.getMessage() for r in caplog.records if r.name == "cloudtask.sync"
    }
    assert (
        "ERROR Schedule 'weekly' not applied to the emulator at "
        f"{emu.address} (nothing fires for it there; tasks are sent all the same): "
        "CLOUDTASK[\"SCHEDULES\"]['weekly'][\"cron\"]: cron schedule '0 0 31 2 *' never fires: "
        "no date matches its day-of-month and month fields together (e.g. February 31)."
    ) in logged
    assert any(m.startswith("ERROR Schedule 'odd' not applied") for m in logged)
    assert (
        f"INFO Applied CLOUDTASK QUEUES and SCHEDULES to the emulator at {emu.address}: "
        "1 job updated."
    ) in logged
    assert len(logged) == 3
