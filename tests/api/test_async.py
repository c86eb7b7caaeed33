"""Async dispatch and async tasks: adelay()/aschedule() over the async gRPC client, and
``async def`` tasks run by the endpoint (WSGI here; ASGI in test_asgi.py) and by .execute()."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction
from django.utils.timezone import now

from bench.delayline import DelayLine
from cloudtask import (
    CloudTaskRequest,
    Discard,
    TaskAlreadyExists,
    TaskHandle,
    on_commit_task,
    task,
)
from tests.models import TaskRecord
from tests.tasks import add, once_per_args, record

from .conftest import poll

pytestmark = pytest.mark.django_db(transaction=True)


@task(name="api.async_add")
async def async_add(request: CloudTaskRequest, a: int, b: int = 0) -> int:
    await asyncio.sleep(0)  # a real suspension point: this needs a running event loop
    record(
        "async_add",
        request,
        a=a,
        b=b,
        loop=asyncio.get_running_loop(),
        thread=threading.get_ident(),
    )
    return a + b


@task(name="api.async_write")
async def async_write(request: CloudTaskRequest, label: str) -> None:
    # Django's async ORM: sync_to_async(thread_sensitive=True) under the hood.
    await TaskRecord.objects.acreate(label=label, payload={"task_id": request.task_id})
    record("async_write", request, row=label)


@task(name="api.async_outcome")
async def async_outcome(request: CloudTaskRequest, what: str) -> str:
    await asyncio.sleep(0)
    if what == "discard":
        raise Discard("nothing to do")
    if what == "raise":
        raise LookupError("async boom")
    return what


def dispatches(emulator: Any, *task_ids: str | None) -> list[Any] | None:
    """The emulator's delivery records of these tasks once there is one for each, else None
    (a record lands after the response, so poll for it)."""
    found = [d for d in emulator.dispatches if d.task in task_ids]
    return found if len(found) >= len(task_ids) else None


def statuses(emulator: Any, *task_ids: str | None) -> list[int | None] | None:
    found = dispatches(emulator, *task_ids)
    return [d.status for d in found] if found is not None else None


@on_commit_task(name="api.async_at_commit")
def at_commit(request: CloudTaskRequest, key: str) -> None:
    record("at_commit", request, key=key)


# -- adelay() and aschedule() through the emulator -------------------------------------------


def test_adelay_delivers_over_http(via_emulator: Any, runs: Any) -> None:
    handle = asyncio.run(add(a=10, b=32).adelay())

    assert isinstance(handle, TaskHandle)
    assert handle.state == "sent"
    assert handle.done
    assert (handle.resource_name or "").startswith(
        f"projects/{via_emulator.project}/locations/{via_emulator.location}/queues/default/tasks/"
    )
    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (10, 32)
    assert run["task_name"] == handle.task_id
    assert run["is_local"] is False


def test_adelay_with_a_task_id(via_emulator: Any, runs: Any) -> None:
    task_id = f"async-{uuid.uuid4().hex}"
    handle = asyncio.run(add(a=1, b=1).adelay(task_id=task_id))

    assert handle.task_id == task_id
    (run,) = runs.wait("add")
    assert run["task_name"] == task_id


def test_adelay_of_a_taken_name_raises_task_already_exists(via_emulator: Any, runs: Any) -> None:
    call = once_per_args(key=uuid.uuid4().hex)

    async def twice() -> TaskHandle:
        first = await call.adelay()
        with pytest.raises(TaskAlreadyExists, match="already exists"):
            await call.adelay()
        return first

    first = asyncio.run(twice())
    assert first.state == "sent"
    (run,) = runs.wait("once_per_args")
    assert run["task_name"] == first.task_id


def test_aschedule_far_ahead_waits_in_the_queue(via_emulator: Any, runs: Any) -> None:
    at = now() + timedelta(days=2)
    handle = asyncio.run(add(a=3, b=6).aschedule(at=at))

    assert handle.schedule_time == at
    queued = via_emulator.client().get_task(name=handle.resource_name)
    assert abs(queued.schedule_time - at) < timedelta(milliseconds=1)
    assert runs.of("add") == []
    via_emulator.client().delete_task(name=handle.resource_name)


def test_aschedule_countdown_is_delivered_at_its_time(via_emulator: Any, runs: Any) -> None:
    before = datetime.now(UTC)
    handle = asyncio.run(add(a=2, b=2).aschedule(countdown=timedelta(seconds=0.5)))

    assert handle.schedule_time is not None
    assert handle.schedule_time >= before + timedelta(seconds=0.5)
    (run,) = runs.wait("add")
    assert abs(run["eta"] - handle.schedule_time) < timedelta(milliseconds=1)
    # The emulator dispatched it no earlier than asked.
    (dispatch,) = poll(lambda: dispatches(via_emulator, handle.task_id))
    assert dispatch.when >= handle.schedule_time.timestamp() - 0.001


def test_adelay_on_a_transport_without_async_support(runs: Any) -> None:
    # The test settings' immediate transport has no async client: its enqueue() runs in a
    # worker thread (BaseTransport.aenqueue), which here runs the task through the endpoint.
    handle = asyncio.run(add(a=4, b=5).adelay())

    assert handle.state == "sent"
    (run,) = runs.of("add")
    assert (run["a"], run["b"]) == (4, 5)


def test_adelay_of_an_on_commit_task_from_async_code_is_sent_at_once(
    via_emulator: Any, runs: Any
) -> None:
    handle = asyncio.run(at_commit("now").adelay())

    assert handle.state == "sent"
    (run,) = runs.wait("at_commit")
    assert run["task_name"] == handle.task_id


def test_adelay_of_an_on_commit_task_from_sync_code_in_a_transaction_waits_for_the_commit(
    via_emulator: Any, runs: Any
) -> None:
    async def helper() -> TaskHandle:  # async code a sync view calls through async_to_sync
        return await at_commit("later").adelay()

    with transaction.atomic():
        handle = async_to_sync(helper)()
        assert not handle.done, f"sent before the commit: {handle!r}"

    assert handle.wait(15)
    assert handle.state == "sent"
    (run,) = runs.wait("at_commit")
    assert run["key"] == "later"


def test_adelay_of_an_on_commit_task_in_a_rolled_back_transaction_is_dropped(
    via_emulator: Any, runs: Any
) -> None:
    async def helper() -> TaskHandle:
        return await at_commit("never").adelay()

    with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
        handle = async_to_sync(helper)()
        raise RuntimeError("roll back")

    assert handle.wait(15)
    assert handle.state == "dropped"
    # Nothing went out: a call sent after it runs, and it never does.
    after = add(a=99).delay()
    (run,) = runs.wait("add")
    assert run["task_name"] == after.task_id
    assert runs.of("at_commit") == []


# -- adelay() does not block the event loop ---------------------------------------------------


@pytest.fixture
def held_line(via_emulator: Any, settings: Any) -> Iterator[DelayLine]:
    """The emulator behind a 10 ms round trip, held: nothing crosses it until release()."""
    with DelayLine(via_emulator.address, delay=0.005, held=True) as line:
        settings.CLOUDTASK = {
            **settings.CLOUDTASK,
            "EMULATOR_HOST": line.address,
            # A blocked loop would fail the test here instead of hanging it.
            "CLIENT_TIMEOUT": 10.0,
        }
        yield line


def test_adelay_calls_in_flight_leave_the_loop_free(held_line: DelayLine, runs: Any) -> None:
    """50 adelay() calls wait on a network that forwards nothing until another coroutine on the
    same loop opens it. That coroutine can run only if the sends yield the loop while they wait:
    a send that blocked the loop would hold it until its deadline and fail."""
    count = 50
    in_flight = 0
    seen_in_flight: list[int] = []
    all_started = asyncio.Event()

    async def send(i: int) -> TaskHandle:
        nonlocal in_flight
        in_flight += 1
        if in_flight == count:
            all_started.set()
        try:
            return await add(a=i, b=0).adelay()
        finally:
            in_flight -= 1

    async def open_the_line() -> None:
        await all_started.wait()
        seen_in_flight.append(in_flight)
        held_line.release()

    async def scenario() -> list[TaskHandle]:
        handles, _ = await asyncio.gather(
            asyncio.gather(*(send(i) for i in range(count))), open_the_line()
        )
        return handles

    handles = asyncio.run(scenario())

    # The opener ran while every send was waiting on the network.
    assert seen_in_flight == [count]
    assert [h.state for h in handles] == ["sent"] * count
    assert len({h.task_id for h in handles}) == count
    delivered = runs.wait("add", count)
    assert sorted(r["a"] for r in delivered) == list(range(count))


# -- async def tasks --------------------------------------------------------------------------


def test_async_task_runs_at_the_endpoint_under_wsgi(via_emulator: Any, runs: Any) -> None:
    first, second = async_add(a=20, b=22).delay(), async_add(a=1).delay()

    done = runs.wait("async_add", 2)
    by_id = {run["task_name"]: run for run in done}
    assert (by_id[first.task_id]["a"], by_id[first.task_id]["b"]) == (20, 22)
    assert (by_id[second.task_id]["a"], by_id[second.task_id]["b"]) == (1, 0)
    # Under WSGI there is no server loop: asgiref runs each coroutine in a loop of its own,
    # on a thread of its own.
    assert done[0]["loop"] is not done[1]["loop"]
    assert threading.get_ident() not in {run["thread"] for run in done}
    assert poll(lambda: statuses(via_emulator, *by_id)) == [200, 200]


def test_async_task_uses_the_async_orm_under_wsgi(via_emulator: Any, runs: Any) -> None:
    label = f"wsgi-{uuid.uuid4().hex}"
    handle = async_write(label).delay()

    runs.wait("async_write")
    row = TaskRecord.objects.get(label=label)
    assert row.payload == {"task_id": handle.task_id}


def test_execute_runs_an_async_task_inline(runs: Any) -> None:
    result: Any = async_add(a=2, b=3).execute()

    assert result == 5
    (run,) = runs.of("async_add")
    assert run["is_local"] is True


def test_execute_of_an_async_task_raises_or_discards_like_a_sync_one() -> None:
    assert async_outcome("fine").execute() == "fine"
    # Discard stops a task for good without error, as over HTTP (200): execute() returns None.
    assert async_outcome("discard").execute() is None
    with pytest.raises(LookupError, match="async boom"):
        async_outcome("raise").execute()


def test_execute_from_async_code_runs_the_task_on_the_callers_loop(runs: Any) -> None:
    """.execute() is synchronous: from async code, call it through sync_to_async, and the
    coroutine comes back to run on the caller's loop."""

    async def caller() -> tuple[Any, asyncio.AbstractEventLoop]:
        result = await sync_to_async(async_add(a=7, b=8).execute)()
        return result, asyncio.get_running_loop()

    result, loop = asyncio.run(caller())

    assert result == 15
    (run,) = runs.of("async_add")
    assert run["loop"] is loop
