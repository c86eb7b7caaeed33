"""cloudtask.deadletters.replay(): a dead letter's request sent again as a new task."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask import registry
from cloudtask.conf import get_settings
from cloudtask.deadletters import replay, replay_headers, replay_message
from cloudtask.dispatch import TaskHandle, send
from cloudtask.encoding import encode_message
from cloudtask.models import DeadLetter, TaskExecution
from cloudtask.signing import sign, verify

from . import tasks
from .conftest import BASE, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b'{"v":1,"task":"tests.records_admin.tasks.mended","args":[1],"kwargs":{}}'


def test_the_headers_of_the_old_delivery_are_dropped() -> None:
    settings = get_settings()
    signature = sign(BODY, settings)
    assert signature is not None
    delivered = {
        "Content-Type": "application/json",
        "Content-Length": str(len(BODY)),
        "Host": "shop.example.com",
        "User-Agent": "Google-Cloud-Tasks",
        "Authorization": "Bearer eyJ...",
        "Connection": "keep-alive",
        "Accept-Encoding": "gzip",
        "X-Cloudtasks-Queuename": "default",
        "X-Cloudtasks-Taskname": "abc",
        "X-Cloudtasks-Taskretrycount": "4",
        "X-Forwarded-For": "10.0.0.1",
        "X-Cloud-Trace-Context": "105445aa7843bc8bf206b120001000/1;o=1",
        "Traceparent": "00-105445aa7843bc8bf206b12000100000-0000000000000001-01",
        "X-Cloudtask-Signature": signature,
        "X-Shop-Tenant": "acme",
    }

    headers = replay_headers(delivered, BODY, settings)

    assert headers == {
        "Content-Type": "application/json",
        "X-Shop-Tenant": "acme",
        "X-CloudTask-Signature": signature,
    }


def test_a_body_signed_with_a_retired_secret_is_signed_again(settings: Any) -> None:
    old = sign(BODY, get_settings())
    assert old is not None
    settings.CLOUDTASK = {**BASE, "SECRET": "the-new-secret"}

    headers = replay_headers({"X-Cloudtask-Signature": old}, BODY, get_settings())

    assert headers["X-CloudTask-Signature"] != old
    assert verify(BODY, headers["X-CloudTask-Signature"], get_settings())
    assert headers["Content-Type"] == "application/json"


def test_the_new_message(settings: Any) -> None:
    letter = DeadLetter(task_id="old", task_name=tasks.mended.name, queue="", body=BODY)

    message = replay_message(letter)

    assert message.body == BODY
    assert message.queue == BASE["QUEUE"]  # the letter did not say one
    assert message.url == BASE["URL"]
    assert message.task_id is not None and message.task_id != "old"
    assert message.oidc_service_account == BASE["SAE"]
    assert replay_message(letter).task_id != message.task_id  # a new id each time


def test_a_task_no_process_knew_runs_once_it_is_deployed(
    settings: Any, mended_runs: list[Any]
) -> None:
    settings.CLOUDTASK = {**BASE, "UNKNOWN_TASK_ATTEMPTS": 1}
    tasks.BROKEN.clear()
    message = encode_message(
        tasks.mended.name, "default", None, [3], {}, label="mended", param_names=["order_id"]
    )
    registry.unregister(tasks.mended.name)  # the code is not deployed yet
    try:
        send(TaskHandle(message))
    finally:
        registry.register(tasks.mended)
    letter = DeadLetter.objects.get()
    assert letter.reason == DeadLetter.Reason.UNKNOWN_TASK
    assert mended_runs == []

    handle = replay(letter)

    assert handle.state == "sent"
    assert mended_runs == [(handle.task_id, {"order_id": 3, "note": ""})]
    letter.refresh_from_db()
    assert letter.replayed_as == handle.task_id


def test_replay_through_cloud_tasks(via_emulator: Any, mended_runs: list[Any]) -> None:
    # Delivered over HTTP by the emulator, the letter keeps the real request's headers (Host,
    # Content-Length, User-Agent, X-CloudTasks-*...): the replay must not send those back.
    tasks.mended(21).delay()
    letter = wait_for(lambda: DeadLetter.objects.filter(task_name=tasks.mended.name).first())
    assert "X-Cloudtasks-Taskname" in letter.headers
    tasks.BROKEN.clear()

    handle = replay(letter)

    wait_for(
        lambda: TaskExecution.objects.filter(
            task_id=handle.task_id, status=TaskExecution.Status.SUCCEEDED
        ).exists()
    )
    assert mended_runs == [(handle.task_id, {"order_id": 21, "note": ""})]
    assert handle.resource_name is not None
    assert handle.resource_name.endswith(f"/queues/{BASE['QUEUE']}/tasks/{handle.task_id}")
