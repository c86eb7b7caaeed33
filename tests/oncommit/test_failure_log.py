"""The log line of a send that failed after the commit holds what a replay needs: the task id
(so a replay is deduplicated) and the schedule time (so it keeps its delay)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from .jobs import ping

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def unavailable(settings: Any) -> None:
    settings.CLOUDTASK = {
        **django_settings.CLOUDTASK,
        "TRANSPORT": "tests.oncommit.faults.UnavailableTransport",
    }


def failure_lines(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The after-commit failure lines, by the label of the call they report."""
    lines = {}
    for record in caplog.records:
        message = record.getMessage()
        if record.name == "cloudtask.dispatch" and "after commit failed" in message:
            assert record.levelno == logging.ERROR
            label = message.split("Arguments: args=('", 1)[1].split("'", 1)[0]
            lines[label] = message
    return lines


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "no outbox"])
def test_the_failure_line_names_the_task_id_and_the_schedule_time(
    outbox: bool, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "OUTBOX": outbox}
    at = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    with caplog.at_level(logging.ERROR, logger="cloudtask"), transaction.atomic():
        named = ping("named").schedule(at, task_id="order-7-reminder")
        later = ping("later").schedule(countdown=timedelta(minutes=90))
        now = ping("now").delay()

    lines = failure_lines(caplog)
    assert sorted(lines) == ["later", "named", "now"]
    head = (
        "Sending task tests.oncommit.jobs.ping (task id {}, schedule time {}) after commit "
        "failed: EnqueueError: "
    )
    assert lines["named"].startswith(head.format("order-7-reminder", at.isoformat()))

    assert later.schedule_time is not None
    assert timezone.now() + timedelta(minutes=89) < later.schedule_time
    # With the outbox the id is fixed when the row is written, so the line carries it; without
    # it Cloud Tasks would have chosen one, and the line says so.
    later_id = later.task_id if outbox else "chosen by Cloud Tasks"
    now_id = now.task_id if outbox else "chosen by Cloud Tasks"
    assert later_id and now_id
    assert lines["later"].startswith(head.format(later_id, later.schedule_time.isoformat()))
    assert lines["now"].startswith(head.format(now_id, "now"))
    assert all(
        "Cloud Tasks is unavailable (task tests.oncommit.jobs.ping)" in line
        for line in lines.values()
    )
    assert named.task_id == "order-7-reminder"
