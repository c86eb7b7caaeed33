"""`manage.py cloudtask_records`: a summary, and --prune for a daily job."""

from __future__ import annotations

from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from cloudtask import records
from cloudtask.models import DeadLetter, TaskExecution

from .conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = timedelta(minutes=10)


def execution(task_id: str, status: str, at: datetime, error: Exception | None = None) -> None:
    """A record written as the executor writes it, at time ``at``."""
    held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=at)
    if status != "running":
        records.finish(held, status, duration=0.5, error=error, now=at)


def letter(task_id: str, at: datetime, reason: str = DeadLetter.Reason.EXHAUSTED) -> None:
    DeadLetter.objects.create(
        created_at=at, reason=reason, task_id=task_id, task_name="shop.tasks.charge", body=b"{}"
    )


@pytest.fixture
def history() -> datetime:
    """Records and letters from 40 days ago and from today; now."""
    now = timezone.now()
    old = now - timedelta(days=40)
    execution("old-ok", "succeeded", old)
    execution("old-dead", "dead", old, RuntimeError("gave up"))
    execution("old-running", "running", old)  # a lease long gone: its process died
    # Started as long ago, under a lease that has not run out yet.
    records.claim("old-leased", "shop.tasks.charge", "orders", timedelta(days=45), now=old)
    execution("new-running", "running", now)
    execution("new-ok", "succeeded", now)
    execution("new-failed", "failed", now, ValueError("card declined"))
    letter("old-dead", old)
    letter("new-letter", now, DeadLetter.Reason.UNKNOWN_TASK)
    return now


def run(*args: str) -> str:
    out = StringIO()
    call_command("cloudtask_records", *args, stdout=out)
    return out.getvalue()


def remaining() -> tuple[set[str], set[str]]:
    return (
        set(TaskExecution.objects.values_list("task_id", flat=True)),
        set(DeadLetter.objects.values_list("task_id", flat=True)),
    )


def test_prune_keeps_the_retention(history: datetime) -> None:
    out = run("--prune")  # CLOUDTASK["RECORDS_RETENTION"]: 30 days by default

    assert out == (
        "Pruned 3 execution records and 1 dead letters older than 30 days (running ones only "
        "if their lease ran out before then).\n"
    )
    assert remaining() == (
        {"old-leased", "new-running", "new-ok", "new-failed"},
        {"new-letter"},
    )


def test_older_than_overrides_the_retention(history: datetime) -> None:
    assert "older than 50 days" in run("--prune", "--older-than", "50")
    assert len(remaining()[0]) == 7

    run("--prune", "--older-than", "1")

    assert remaining() == (
        {"old-leased", "new-running", "new-ok", "new-failed"},
        {"new-letter"},
    )


def test_a_retention_of_0_keeps_everything(settings: Any, history: datetime) -> None:
    assert "nothing pruned" in run("--prune", "--older-than", "0")
    settings.CLOUDTASK = {**BASE, "RECORDS_RETENTION": 0}

    assert run("--prune") == "Retention is 0 days (keep forever): nothing pruned.\n"

    assert remaining() == (
        {"old-ok", "old-dead", "old-running", "old-leased", "new-running", "new-ok", "new-failed"},
        {"old-dead", "new-letter"},
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(CommandError, match="a whole number of days"):
        run("--prune", "--older-than", "-3")
    with pytest.raises(CommandError, match="--older-than goes with --prune"):
        run("--older-than", "3")


def test_the_summary(history: datetime) -> None:
    out = run()

    lines = out.splitlines()
    assert lines[:6] == [
        "Execution records (7; database 'default'; kept 30 days):",
        "  running    3",
        "  succeeded  2",
        "  failed     1",
        "  discarded  0",
        "  dead       1",
    ]
    assert lines[6:10] == [
        "Dead letters (2):",
        "  exhausted    1  (max_attempts reached)",
        "  undecodable  0  (body can never decode)",
        "  unknown_task 1  (no task registered under the name)",
    ]
    assert lines[10] == "Last failures (2):"
    # Newest first, with the error.
    assert "[new-failed] failed, attempt 1: builtins.ValueError: card declined" in lines[11]
    assert "[old-dead] dead, attempt 1: builtins.RuntimeError: gave up" in lines[12]


def test_the_summary_of_nothing() -> None:
    out = run()

    assert "Execution records (0;" in out
    assert out.endswith("Last failures: none.\n")
