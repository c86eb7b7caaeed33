"""CLOUDTASK["RECORDS"] = False: no execution records, no dead letters, and so no defence
against duplicates: delivery is at least once again, the documented trade-off."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask.models import DeadLetter, TaskExecution
from tests.tasks import add, records_ping

from .conftest import WAIT, create_raw_task, fast_queue, replay, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def records_off(settings: Any, delivering: Any) -> Any:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "RECORDS": False}
    return delivering


def test_a_duplicate_delivery_runs_again_and_nothing_is_written(
    records_off: Any, endpoint_url: str, runs: Any
) -> None:
    task_id = unique("off")
    handle = records_ping("twice").delay(task_id=task_id)
    (delivery,) = runs.wait("records_ping")
    assert statuses(records_off, task_id, 1) == [200]

    answer = replay(endpoint_url, delivery)

    assert (answer.status, answer.text) == (200, "ok")
    assert len(runs.of("records_ping")) == 2
    assert not TaskExecution.objects.exists()
    assert handle.get_result() is None


def test_a_poison_message_is_a_bad_request_and_not_kept(
    records_off: Any, endpoint_url: str
) -> None:
    # Without dead letters a body that can never decode is answered 400: still never a 5xx,
    # but Cloud Tasks retries it under the queue's retry config.
    task_id = unique("off-poison")
    fast_queue(records_off, "records-off-poison", max_attempts=2)
    envelope = {"v": 1, "task": add.name, "args": [{"__ct__": "uuid", "v": 5}], "kwargs": {}}
    create_raw_task(records_off, "records-off-poison", task_id, endpoint_url, envelope)

    assert statuses(records_off, task_id, 2) == [400, 400]
    assert records_off.wait_idle(timeout=WAIT)
    assert not DeadLetter.objects.exists()
