"""The outbox in Django's admin: the list, read-only rows, "Send now" and "Discard"."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from cloudtask.models import OutboxMessage

from .fixtures import Cloud, cloud, commit_pings, outbox_emulator

__all__ = ["cloud", "outbox_emulator"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

CHANGELIST = "/admin/cloudtask/outboxmessage/"


@pytest.fixture
def admin(client: Client) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return client


def act(client: Client, action: str, rows: list[OutboxMessage]) -> list[str]:
    """Run a list action on rows; the messages the admin showed after it."""
    response = client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(r.pk) for r in rows]},
        follow=True,
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def test_the_list_shows_what_waits_and_why(cloud: Cloud, admin: Client) -> None:
    handles = commit_pings("a", "b")

    response = admin.get(CHANGELIST)

    assert response.status_code == 200
    page = response.content.decode()
    for column in (
        "Task name",
        "Queue",
        "Task id",
        "Age",
        "Attempts",
        "Next attempt",
        "Last error",
    ):
        assert f">{column}</a>" in page or f">{column}</span>" in page, column
    for handle in handles:
        assert str(handle.task_id) in page
    assert page.count("tests.oncommit.jobs.ping") >= 2
    assert cloud.queue in page
    # The last error, cut short in the list: which emulator refused it, and why.
    assert (
        f"QueueNotFound: The emulator at {cloud.emulator.address} refused the task: Queue" in page
    )
    assert "Send now" in page and "Discard (delete without sending)" in page


def test_filters_and_search(cloud: Cloud, admin: Client) -> None:
    first, _ = commit_pings("a", "b")

    found = admin.get(CHANGELIST, {"q": str(first.task_id)})
    by_queue = admin.get(CHANGELIST, {"queue": cloud.queue})

    assert found.context["cl"].result_count == 1
    assert by_queue.context["cl"].result_count == 2


def test_a_row_is_read_only_and_none_can_be_added(cloud: Cloud, admin: Client) -> None:
    (handle,) = commit_pings("look")
    row = OutboxMessage.objects.get()

    page = admin.get(f"{CHANGELIST}{row.pk}/change/")

    assert page.status_code == 200
    text = page.content.decode()
    assert str(handle.task_id) in text
    assert '"args":["look"]' in text.replace("&quot;", '"')  # the body, as text
    assert 'name="_save"' not in text
    assert admin.get(f"{CHANGELIST}add/").status_code == 403


def test_send_now_sends_the_chosen_rows_even_before_they_are_due(
    cloud: Cloud, admin: Client
) -> None:
    handle, _ = commit_pings("chosen", "left")
    cloud.restore()
    # Backing off for ten more minutes: the relay would leave it alone.
    OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(minutes=10))
    chosen = OutboxMessage.objects.get(task_id=handle.task_id)

    assert act(admin, "send_now", [chosen]) == ["Sent 1 of 1 outbox row."]

    assert cloud.delivered(1) == ["chosen"]
    assert not OutboxMessage.objects.filter(pk=chosen.pk).exists()
    assert OutboxMessage.objects.count() == 1


def test_send_now_reports_rows_that_fail(cloud: Cloud, admin: Client) -> None:
    commit_pings("down")  # and Cloud Tasks stays down

    messages = act(admin, "send_now", list(OutboxMessage.objects.all()))

    assert messages == [
        "Sent 0 of 1 outbox row; 1 failed and stay, backing off (see their last error)."
    ]
    assert OutboxMessage.objects.get().attempts == 2


def test_discard_deletes_and_logs_each_row(
    cloud: Cloud, admin: Client, caplog: pytest.LogCaptureFixture
) -> None:
    handles = commit_pings("x", "y")
    rows = list(OutboxMessage.objects.all())

    with caplog.at_level(logging.WARNING, logger="cloudtask.outbox"):
        messages = act(admin, "discard", rows)

    assert messages == ["Discarded 2 outbox rows: their tasks will not be sent."]
    assert not OutboxMessage.objects.exists()
    logged = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert len(logged) == 2
    for handle, line in zip(handles, sorted(logged, key=lambda m: int(m.split()[2])), strict=True):
        assert f"(task tests.oncommit.jobs.ping, task id {handle.task_id}," in line
        assert line.endswith("in the admin by admin: it will not be sent.")
    assert all(r.levelno == logging.WARNING for r in caplog.records if "discarded" in r.msg)
    assert cloud.deliveries.of("ping") == []


def test_actions_follow_permissions(cloud: Cloud, client: Client) -> None:
    """Viewing shows no action; "Send now" needs the change permission, "Discard" delete."""
    staff = User.objects.create_user("staff", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
    client.force_login(staff)
    commit_pings("seen")

    page = client.get(CHANGELIST).content.decode()
    assert "Send now" not in page and "Discard" not in page

    staff.user_permissions.add(Permission.objects.get(codename="change_outboxmessage"))
    page = client.get(CHANGELIST).content.decode()
    assert "Send now" in page and "Discard" not in page
