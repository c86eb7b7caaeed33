"""cloudtask.send_many(): many calls sent concurrently, their handles in order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from cloudtask import (
    ARGS_HASH,
    CloudTaskRequest,
    InvalidTaskCall,
    TaskAlreadyExists,
    TaskCall,
    TaskHandle,
    send_many,
    task,
)
from cloudtask.signals import task_enqueued
from tests.tasks import add, echo, once_per_args, record

from .conftest import Waiter

pytestmark = pytest.mark.django_db(transaction=True)


@task(name="api.send_many_at_commit", on_commit=True, named=ARGS_HASH)
def at_commit(request: CloudTaskRequest, key: str) -> None:
    record("at_commit", request, key=key)


@pytest.fixture
def enqueued() -> Iterator[Waiter]:
    """Every task_enqueued signal, i.e. every call that reached the queue."""
    waiter = Waiter()
    task_enqueued.connect(waiter, weak=False)
    yield waiter
    task_enqueued.disconnect(waiter)


def test_handles_come_back_in_order_and_all_are_delivered(via_emulator: Any, runs: Any) -> None:
    calls = [add(a=i, b=100) for i in range(20)]

    handles = send_many(calls)

    assert [h.call for h in handles] == calls
    assert [h.state for h in handles] == ["sent"] * 20
    assert len({h.task_id for h in handles}) == 20
    delivered = {run["task_name"]: run["a"] for run in runs.wait("add", 20)}
    # Handle i is the task that ran call i.
    assert [delivered[h.task_id] for h in handles] == list(range(20))


def test_accepts_any_iterable_and_an_empty_one(via_emulator: Any, runs: Any) -> None:
    assert send_many([]) == []
    handles = send_many(add(a=i) for i in range(3))
    assert [h.state for h in handles] == ["sent"] * 3
    runs.wait("add", 3)


def test_one_call_is_sent_without_the_pool(via_emulator: Any, runs: Any) -> None:
    (handle,) = send_many([add(a=1, b=2)])
    assert handle.state == "sent"
    (run,) = runs.wait("add")
    assert run["task_name"] == handle.task_id


def test_an_argument_that_will_not_serialize_fails_before_anything_is_sent(
    via_emulator: Any, enqueued: Waiter
) -> None:
    calls: list[TaskCall[Any, Any]] = [add(a=1), echo("fine", blob=object()), add(a=2)]

    with pytest.raises(InvalidTaskCall, match=r"echo\(\) argument 'blob'.*cannot serialize"):
        send_many(calls)

    # Every call is encoded before the first is sent: none reached the queue.
    assert enqueued.calls == []


def test_a_refused_call_raises_after_the_others_were_sent(
    via_emulator: Any, runs: Any, enqueued: Waiter
) -> None:
    taken = once_per_args(key=uuid.uuid4().hex)
    taken.delay()
    runs.wait("once_per_args")
    enqueued.calls.clear()

    with pytest.raises(TaskAlreadyExists, match="already exists"):
        send_many([add(a=1), taken, add(a=2)])

    # It raised once every call had settled: both others were already sent.
    sent = [call["handle"] for call in enqueued.calls]
    assert sorted(h.call.kwargs["a"] for h in sent) == [1, 2]
    assert sorted(run["a"] for run in runs.wait("add", 2)) == [1, 2]


def test_return_failures_reports_the_refused_call_on_its_handle(
    via_emulator: Any, runs: Any
) -> None:
    taken = once_per_args(key=uuid.uuid4().hex)
    first = taken.delay()

    handles = send_many([add(a=1), taken, add(a=2)], return_failures=True)

    assert [h.state for h in handles] == ["sent", "failed", "sent"]
    failed = handles[1]
    assert isinstance(failed, TaskHandle)
    assert failed.done
    assert isinstance(failed.error, TaskAlreadyExists)
    assert first.task_id is not None and first.task_id in str(failed.error)
    assert failed.resource_name is None
    assert sorted(run["a"] for run in runs.wait("add", 2)) == [1, 2]
    (run,) = runs.wait("once_per_args")
    assert run["task_name"] == first.task_id


def test_on_the_immediate_transport_each_call_runs(runs: Any) -> None:
    handles = send_many([add(a=i, b=i) for i in range(5)])

    assert [h.state for h in handles] == ["sent"] * 5
    assert sorted(run["a"] for run in runs.of("add")) == list(range(5))


def test_an_on_commit_task_waits_for_the_commit_the_others_do_not(
    via_emulator: Any, runs: Any
) -> None:
    key = uuid.uuid4().hex
    with transaction.atomic():
        handles = send_many([add(a=1), at_commit(key), add(a=2)])
        assert [h.state for h in handles] == ["sent", "pending", "sent"]

    assert handles[1].wait(15)
    assert handles[1].state == "sent"
    (run,) = runs.wait("at_commit")
    assert (run["key"], run["task_name"]) == (key, handles[1].task_id)
    assert sorted(run["a"] for run in runs.wait("add", 2)) == [1, 2]


def test_an_on_commit_task_rolled_back_is_not_sent(via_emulator: Any, runs: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        handles = send_many([at_commit(uuid.uuid4().hex), add(a=3)])
        raise RuntimeError("roll back")

    assert [h.state for h in handles] == ["dropped", "sent"]
    (run,) = runs.wait("add")
    assert run["task_name"] == handles[1].task_id
    assert runs.of("at_commit") == []


def test_return_failures_covers_an_on_commit_call_sent_at_once(
    via_emulator: Any, runs: Any
) -> None:
    # No transaction is open, so the on-commit call is sent now, like the others.
    taken = at_commit(uuid.uuid4().hex)
    taken.delay()
    runs.wait("at_commit")

    handles = send_many([add(a=1), taken, add(a=2)], return_failures=True)

    assert [h.state for h in handles] == ["sent", "failed", "sent"]
    assert isinstance(handles[1].error, TaskAlreadyExists)
    assert sorted(run["a"] for run in runs.wait("add", 2)) == [1, 2]
