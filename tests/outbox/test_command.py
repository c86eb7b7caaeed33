"""`manage.py cloudtask_outbox`: the status, --drain and --watch, against a real outage."""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from cloudtask.management.commands.cloudtask_outbox import Command, format_age
from cloudtask.models import OutboxMessage

from .fixtures import Cloud, cloud, commit_pings, make_due, outbox_emulator

__all__ = ["cloud", "outbox_emulator"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def run(*args: str) -> str:
    out = StringIO()
    call_command("cloudtask_outbox", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def failing(*args: str) -> tuple[CommandError, str]:
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("cloudtask_outbox", *args, stdout=out, stderr=StringIO())
    return caught.value, out.getvalue()


# -- status ------------------------------------------------------------------------------------


def test_status_of_an_empty_outbox() -> None:
    assert run() == (
        "Database 'default': the outbox is empty.\nDatabase 'other': the outbox is empty.\n"
    )


def test_status_shows_counts_age_and_last_errors(cloud: Cloud) -> None:
    handles = commit_pings("a", "b")
    now = timezone.now()
    OutboxMessage.objects.update(next_attempt_at=now + timedelta(minutes=10))
    OutboxMessage.objects.filter(task_id=handles[0].task_id).update(
        created_at=now - timedelta(hours=2, minutes=5)
    )

    text = run("--database", "default")

    lines = text.splitlines()
    assert lines[0].startswith(
        "Database 'default': 2 rows waiting, 0 due now, 2 failing, 0 being sent; the oldest is "
        "2h05m old; most attempts: 1; next one due in "
    )
    assert lines[1] == "  Last errors:"
    assert lines[2].split() == ["TASK", "TASK", "ID", "AGE", "ATTEMPTS", "ERROR"]
    rows = {line.split()[1]: line for line in lines[3:]}
    assert set(rows) == {h.task_id for h in handles}
    for line in rows.values():
        assert line.split()[0] == "tests.oncommit.jobs.ping"
        assert "NotFound" in line or "not found" in line.lower()


def test_status_as_json(cloud: Cloud) -> None:
    handles = commit_pings("a")
    make_due()

    data = json.loads(run("--json"))

    assert data["skipped"] == {}
    assert data["databases"]["other"]["rows"] == 0
    state = data["databases"]["default"]
    assert {k: state[k] for k in ("rows", "due", "failing", "leased", "most_attempts")} == {
        "rows": 1,
        "due": 1,
        "failing": 1,
        "leased": 0,
        "most_attempts": 1,
    }
    assert state["oldest_age"] >= 0 and state["next_attempt_in"] is None
    (error,) = state["errors"]
    assert error["task"] == "tests.oncommit.jobs.ping"
    assert error["task_id"] == handles[0].task_id
    assert error["attempts"] == 1 and error["error"]


def test_format_age() -> None:
    assert [format_age(s) for s in (-3, 42, 192, 7500, 273600)] == [
        "0s",
        "42s",
        "3m12s",
        "2h05m",
        "3d04h",
    ]


def test_an_unknown_database_is_refused() -> None:
    error, _ = failing("--database", "nope")
    assert str(error) == "Unknown database 'nope'; DATABASES has 'default', 'other'."


# -- drain -------------------------------------------------------------------------------------


def test_drain_sends_every_due_row_once_and_deletes_it(cloud: Cloud) -> None:
    commit_pings("a", "b", "c")
    cloud.restore()
    make_due()

    text = run("--drain")

    assert text == (
        "Database 'default': 3 sent, 0 failed, 0 duplicates; 0 rows left.\n"
        "Database 'other': 0 sent, 0 failed, 0 duplicates; 0 rows left.\n"
    )
    assert cloud.delivered(3) == ["a", "b", "c"]
    assert [r.status for r in cloud.dispatched()] == [200, 200, 200]
    assert not OutboxMessage.objects.exists()


def test_drain_passes_until_nothing_due_is_left(cloud: Cloud) -> None:
    commit_pings(*"abcde")
    # Deliveries wait until the drain is over: on SQLite a delivery's writes can make a relay's
    # claim fail with "database is locked" (a known limit of the relay's claim on SQLite).
    cloud.restore(paused=True)
    make_due()

    assert run("--drain", "--limit", "2", "--database", "default") == (
        "Database 'default': 5 sent, 0 failed, 0 duplicates; 0 rows left.\n"
    )
    cloud.resume()
    assert cloud.delivered(5) == list("abcde")


def test_drain_leaves_rows_that_are_not_due_unless_all(cloud: Cloud) -> None:
    commit_pings("early")
    # Backing off after the failed send at commit (or just written by a committing process).
    OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(minutes=10))
    cloud.restore()

    assert run("--drain", "--database", "default") == (
        "Database 'default': 0 sent, 0 failed, 0 duplicates; 1 row left.\n"
    )
    assert cloud.deliveries.of("ping") == []

    assert run("--drain", "--all", "--database", "default") == (
        "Database 'default': 1 sent, 0 failed, 0 duplicates; 0 rows left.\n"
    )
    assert cloud.delivered(1) == ["early"]


def test_drain_exits_1_when_a_row_cannot_be_sent(cloud: Cloud) -> None:
    commit_pings("x", "y")
    make_due()  # Cloud Tasks is still down

    error, text = failing("--drain", "--database", "default")

    assert error.returncode == 1
    assert str(error).startswith("2 sends failed; those rows stay in the outbox and back off")
    assert text == "Database 'default': 0 sent, 2 failed, 0 duplicates; 2 rows left.\n"
    assert sorted(OutboxMessage.objects.values_list("attempts", flat=True)) == [2, 2]
    assert all(r.next_attempt_at > timezone.now() for r in OutboxMessage.objects.all())


def test_drain_one_database_and_json(cloud: Cloud) -> None:
    commit_pings("on default")
    commit_pings("on other", other=True)
    cloud.restore()
    make_due("default")
    make_due("other")

    data = json.loads(run("--drain", "--database", "other", "--json"))

    assert data == {
        "databases": {"other": {"sent": 1, "failed": 0, "duplicates": 0, "left": 0}},
        "skipped": {},
    }
    assert cloud.deliveries.wait("ping_other") == [{"label": "on other"}]
    assert OutboxMessage.objects.using("default").count() == 1
    assert cloud.deliveries.of("ping") == []


def test_status_and_drain_report_a_database_they_cannot_read() -> None:
    call_command("migrate", "cloudtask", "zero", database="other", verbosity=0)
    try:
        status_error, status_text = failing()
        drain_error, drain_text = failing("--drain")
    finally:
        call_command("migrate", "cloudtask", database="other", verbosity=0)

    for error in (status_error, drain_error):
        assert error.returncode == 1
        assert str(error).startswith("could not read the outbox of database 'other' (")
    assert status_text == "Database 'default': the outbox is empty.\n"
    assert drain_text == "Database 'default': 0 sent, 0 failed, 0 duplicates; 0 rows left.\n"


def test_options_that_go_together() -> None:
    assert str(failing("--all")[0]) == "--all goes with --drain."
    assert str(failing("--drain", "--interval", "1")[0]) == (
        "--interval and --max-passes go with --watch."
    )
    assert str(failing("--drain", "--limit", "0")[0]) == "--limit must be at least 1."


# -- watch -------------------------------------------------------------------------------------


def test_watch_relays_each_pass(cloud: Cloud) -> None:
    commit_pings("w1", "w2")
    cloud.restore(paused=True)  # delivered after the command, as in the test above
    make_due()

    text = run("--watch", "--max-passes", "2", "--interval", "0", "--database", "default")
    cloud.resume()

    lines = text.splitlines()
    assert lines[0] == (
        "Relaying the outbox of 'default' every 0 s; SIGTERM or SIGINT stops after the current "
        "pass."
    )
    # The first pass sent both; the second found nothing and logged nothing.
    assert len(lines) == 3
    assert lines[1].endswith(" database 'default': 2 sent, 0 failed, 0 duplicates.")
    assert lines[2] == "Stopped after 2 passes."
    assert cloud.delivered(2) == ["w1", "w2"]
    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watch_stops_on_a_signal_after_its_pass(cloud: Cloud, signum: int) -> None:
    commit_pings("sig")
    cloud.restore()
    make_due()
    before = signal.getsignal(signum)
    problems: list[BaseException] = []

    def stop_once_delivered() -> None:
        try:
            cloud.deliveries.wait("ping")
        except BaseException as exc:  # still stop the command, and fail the test below
            problems.append(exc)
        os.kill(os.getpid(), signum)

    killer = threading.Thread(target=stop_once_delivered)
    killer.start()
    # The pause is an hour: only the signal ends it.
    text = run("--watch", "--interval", "3600", "--database", "default")
    killer.join()

    assert problems == []
    assert text.splitlines()[-1] == "Stopped after 1 passes."
    assert signal.getsignal(signum) is before
    assert cloud.delivered(1) == ["sig"]


def test_watch_stops_when_its_event_is_set(cloud: Cloud) -> None:
    """Where signals cannot be set (a thread), the command's stop event ends the loop."""
    command = Command()
    out = StringIO()
    done = threading.Event()

    def watch() -> None:
        try:
            call_command(command, "--watch", "--interval", "3600", stdout=out, stderr=StringIO())
            done.set()
        finally:
            connections.close_all()

    runner = threading.Thread(target=watch)
    runner.start()
    command.stop.set()
    runner.join(timeout=30)

    assert done.is_set()
    assert out.getvalue().splitlines()[-1].startswith("Stopped after ")
