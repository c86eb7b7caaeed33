"""Execution records and dead letters in Django's admin: lists with filters, readable detail
pages, read-only rows, and "Replay as a new task"."""

from __future__ import annotations

import html
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.templatetags.admin_list import result_headers
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from cloudtask.models import DeadLetter, TaskExecution
from tests import tasks as seed_tasks
from tests.djangotasks.tasks import add, explode

from . import tasks
from .conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)

EXECUTIONS = "/admin/cloudtask/taskexecution/"
LETTERS = "/admin/cloudtask/deadletter/"


def dead_letter_of_mended(order_id: int = 7) -> DeadLetter:
    """A real dead letter: mended() fails on its only attempt, delivered by the immediate
    transport through the endpoint, which keeps the request."""
    with pytest.raises(ConnectionError):
        tasks.mended(order_id, note="fragile").delay()
    return DeadLetter.objects.get(task_name=tasks.mended.name, task_id__isnull=False)


def act(client: Client, action: str, rows: list[DeadLetter]) -> list[str]:
    """Run a list action on rows; the messages the admin showed after it."""
    response = client.post(
        LETTERS,
        {"action": action, "_selected_action": [str(r.pk) for r in rows]},
        follow=True,
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def headers_of(page: Any) -> list[str]:
    """The list's column titles."""
    texts = [str(h["text"]) for h in result_headers(page.context["cl"])]
    return [text for text in texts if not text.startswith("<")]  # not the select-all box


# -- execution records -------------------------------------------------------------------------


def test_the_execution_list_shows_each_task_id(admin: Client) -> None:
    ok = add.enqueue(1, b=2)
    with pytest.raises(ValueError):
        explode.enqueue("boom")

    page = admin.get(EXECUTIONS)

    assert page.status_code == 200
    assert headers_of(page) == [
        "task name",
        "task id",
        "queue",
        "status",
        "attempts",
        "first start",
        "last start",
        "duration",
        "last error",
    ]
    text = page.content.decode()
    assert ok.id in text
    assert add.module_path in text and explode.module_path in text
    assert ">ValueError<" in text  # the failed one's last error, by class
    # Filters by status, task, queue and date, and a date hierarchy.
    filters = {spec.title for spec in page.context["cl"].filter_specs}
    assert filters == {"status", "task name", "queue", "last started at"}
    assert page.context["cl"].date_hierarchy == "last_started_at"


def test_filters_and_search_narrow_the_executions(admin: Client) -> None:
    first = add.enqueue(1)
    add.enqueue(2)
    with pytest.raises(ValueError):
        explode.enqueue("boom")
    today = timezone.localdate()

    def count(**query: Any) -> int:
        page = admin.get(EXECUTIONS, query)
        assert page.status_code == 200, query
        return int(page.context["cl"].result_count)

    assert count() == 3
    assert count(status="succeeded") == 2
    assert count(status="failed") == 1
    assert count(task_name=explode.module_path) == 1
    assert count(queue="default") == 3
    assert count(q=first.id) == 1
    assert count(last_started_at__year=today.year, last_started_at__month=today.month) == 3
    yesterday = timezone.now() - timedelta(days=1)
    assert count(**{"last_started_at__lt": yesterday.isoformat()}) == 0


def test_an_execution_is_read_only_and_shows_its_errors(admin: Client) -> None:
    with pytest.raises(ValueError):
        explode.enqueue("kaboom")
    row = TaskExecution.objects.get()

    page = admin.get(f"{EXECUTIONS}{row.pk}/change/")

    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert row.task_id in text
    assert "Attempt 1" in text and "builtins.ValueError" in text
    assert "raise ValueError(message)" in text  # the traceback
    assert 'name="_save"' not in text
    assert admin.get(f"{EXECUTIONS}add/").status_code == 403


def test_an_execution_can_be_deleted(admin: Client) -> None:
    add.enqueue(1)
    row = TaskExecution.objects.get()

    response = admin.post(f"{EXECUTIONS}{row.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not TaskExecution.objects.exists()


# -- dead letters ------------------------------------------------------------------------------


def test_the_dead_letter_list_and_its_filters(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended()

    page = admin.get(LETTERS)

    assert page.status_code == 200
    assert headers_of(page) == [
        "created at",
        "reason",
        "task name",
        "task id",
        "queue",
        "attempts",
        "replayed as",
    ]
    assert letter.task_id in page.content.decode()
    assert {spec.title for spec in page.context["cl"].filter_specs} == {
        "reason",
        "task name",
        "created at",
    }
    assert admin.get(LETTERS, {"reason": "exhausted"}).context["cl"].result_count == 1
    assert admin.get(LETTERS, {"reason": "unknown_task"}).context["cl"].result_count == 0
    by_task = admin.get(LETTERS, {"task_name": tasks.mended.name})
    assert by_task.context["cl"].result_count == 1
    assert admin.get(LETTERS, {"q": letter.task_id}).context["cl"].result_count == 1
    assert "Replay as a new task" in page.content.decode()


def test_a_dead_letter_shows_its_request_and_errors(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended(order_id=12)

    page = admin.get(f"{LETTERS}{letter.pk}/change/")

    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    # The body, as pretty JSON.
    body = json.dumps(json.loads(bytes(letter.body)), indent=2, ensure_ascii=False, sort_keys=True)
    assert body in text
    assert '"args": [\n    12\n  ]' in text
    # The headers as delivered, the task's own among them.
    assert "X-Cloudtasks-Taskname: " + letter.task_id in text
    assert "X-Shop-Tenant: acme" in text
    # Every error, with its traceback.
    assert "builtins.ConnectionError" in text
    assert "order 12: the warehouse API is down" in text
    assert "Traceback (most recent call last)" in text
    assert 'name="_save"' not in text
    assert admin.get(f"{LETTERS}add/").status_code == 403


def test_a_body_that_is_not_json_is_shown_as_text(admin: Client) -> None:
    letter = DeadLetter.objects.create(
        created_at=timezone.now(),
        reason=DeadLetter.Reason.UNDECODABLE,
        task_id="garbled",
        body=b"\xffnot json <b>",
        headers={"Content-Type": "application/json"},
        errors=[],
    )

    text = admin.get(f"{LETTERS}{letter.pk}/change/").content.decode()

    assert "\ufffdnot json &lt;b&gt;" in text


def test_replay_sends_a_new_task_that_runs(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended(order_id=31)
    tasks.BROKEN.clear()  # the warehouse API is back

    shown = act(admin, "replay", [letter])

    letter.refresh_from_db()
    assert letter.replayed_as and letter.replayed_as != letter.task_id
    assert shown == [
        f"Replayed 1 dead letter as new tasks: {letter.task_id} as {letter.replayed_as}."
    ]
    # The immediate transport ran it: same arguments, under the new task id.
    assert mended_runs == [(letter.replayed_as, {"order_id": 31, "note": "fragile"})]
    record = TaskExecution.objects.get(task_id=letter.replayed_as)
    assert record.status == TaskExecution.Status.SUCCEEDED


def test_a_letter_is_replayed_once(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended()
    tasks.BROKEN.clear()
    act(admin, "replay", [letter])
    letter.refresh_from_db()

    shown = act(admin, "replay", [letter])

    assert shown == [
        f"Not replayed: the dead letter of task id {letter.task_id} was already replayed as "
        f"task {letter.replayed_as}."
    ]
    assert len(mended_runs) == 1


def test_a_failed_replay_is_reported_not_a_server_error(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended(order_id=5)  # and the API stays down

    shown = act(admin, "replay", [letter])

    assert shown == [
        f"Replaying the dead letter of task id {letter.task_id} failed: ConnectionError: "
        "order 5: the warehouse API is down"
    ]
    letter.refresh_from_db()
    assert letter.replayed_as == ""


def test_replay_needs_the_change_permission(client: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended()
    tasks.BROKEN.clear()
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_deadletter"),
        Permission.objects.get(codename="delete_deadletter"),
    )
    client.force_login(viewer)

    page = client.get(LETTERS)
    assert page.status_code == 200
    assert "Replay as a new task" not in page.content.decode()
    assert "Delete selected dead letters" in page.content.decode()

    response = client.post(LETTERS, {"action": "replay", "_selected_action": [str(letter.pk)]})
    assert response.status_code == 302  # "No action selected": it is not one of theirs
    assert mended_runs == []


def test_dead_letters_can_be_deleted(admin: Client, mended_runs: Any) -> None:
    letter = dead_letter_of_mended()

    response = admin.post(
        LETTERS,
        {"action": "delete_selected", "_selected_action": [str(letter.pk)], "post": "yes"},
    )

    assert response.status_code == 302
    assert not DeadLetter.objects.exists()


def test_the_pages_work_with_records_off(settings: Any, admin: Client) -> None:
    settings.CLOUDTASK = {**BASE, "RECORDS": False}
    seed_tasks.add(1, 2).delay()

    assert admin.get(EXECUTIONS).context["cl"].result_count == 0
    assert admin.get(LETTERS).status_code == 200
