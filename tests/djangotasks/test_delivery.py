"""enqueue() and aenqueue(): a django.tasks call travels to Cloud Tasks (here the emulator) and
comes back over HTTP to the one endpoint, which runs the function."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from bench.delayline import DelayLine
from cloudtask import InvalidTaskCall
from cloudtask.backends import TaskResult, TaskResultStatus
from tests import tasks as seed_tasks
from tests.tasks import add as seed_add

from .conftest import Runs, deliveries, statuses
from .tasks import add, async_add, echo, send_welcome

pytestmark = pytest.mark.django_db(transaction=True)


def test_enqueue_delivers_the_call_over_http(via_emulator: Any, runs: Runs) -> None:
    result = add.enqueue(2, b=3)

    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == ([2], {"b": 3}, "default")
    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (2, 3)
    # The id enqueue() returned is the Cloud Tasks task id the endpoint was sent.
    assert run["task_id"] == result.id
    assert statuses(via_emulator, result.id, 1) == [200]


def test_the_task_runs_on_its_queue(via_emulator: Any, runs: Runs) -> None:
    result = send_welcome.enqueue("ada@example.com", name="Ada")

    (run,) = runs.wait("send_welcome")
    assert (run["address"], run["name"]) == ("ada@example.com", "Ada")
    (delivery,) = deliveries(via_emulator, result.id)
    assert delivery.queue == "emails"


def test_each_call_gets_its_own_task_id(via_emulator: Any, runs: Runs) -> None:
    first, second = add.enqueue(1), add.enqueue(2)

    done = runs.wait("add", 2)
    assert first.id != second.id
    assert {run["task_id"]: run["a"] for run in done} == {first.id: 1, second.id: 2}


def test_arguments_arrive_as_json_values(runs: Runs) -> None:
    # Django's rule for every backend: arguments are JSON values, so a tuple arrives as a list.
    result = echo.enqueue((1, 2), {"k": [3]}, flag=True)

    (run,) = runs.of("echo")
    assert run["args"] == ([1, 2], {"k": [3]})
    assert run["kwargs"] == {"flag": True}
    assert result.args == [[1, 2], {"k": [3]}]


def test_an_argument_that_is_not_json_is_refused_by_name(runs: Runs) -> None:
    with pytest.raises(InvalidTaskCall, match=r"add\(\) argument 'b': cannot pass date"):
        add.enqueue(1, b=date(2030, 1, 1))  # type: ignore[arg-type]
    assert runs.of("add") == []


def test_arguments_that_do_not_fit_the_function_are_refused_at_enqueue(runs: Runs) -> None:
    with pytest.raises(InvalidTaskCall, match=r"add\(\): missing a required argument: 'a'"):
        add.enqueue(b=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidTaskCall, match="too many positional arguments"):
        add.enqueue(1, 2, 3)  # type: ignore[call-arg]
    assert runs.of("add") == []


def test_aenqueue_delivers_over_http(via_emulator: Any, runs: Runs) -> None:
    result = asyncio.run(add.aenqueue(4, b=5))

    assert isinstance(result, TaskResult)
    (run,) = runs.wait("add")
    assert (run["a"], run["b"], run["task_id"]) == (4, 5, result.id)


def test_an_async_task_runs_at_the_endpoint(via_emulator: Any, runs: Runs) -> None:
    result = async_add.enqueue(20, b=22)

    (run,) = runs.wait("async_add")
    assert (run["a"], run["b"], run["task_id"]) == (20, 22, result.id)


@pytest.fixture
def held_line(via_emulator: Any, settings: Any) -> Iterator[DelayLine]:
    """The emulator behind a line that forwards nothing until release()."""
    with DelayLine(via_emulator.address, delay=0.005, held=True) as line:
        settings.CLOUDTASK = {
            **settings.CLOUDTASK,
            "EMULATOR_HOST": line.address,
            # A blocked loop would fail the test here instead of hanging it.
            "CLIENT_TIMEOUT": 10.0,
        }
        yield line


def test_aenqueue_calls_in_flight_leave_the_loop_free(held_line: DelayLine, runs: Runs) -> None:
    """20 aenqueue() calls wait on a network that forwards nothing until another coroutine on
    the same loop opens it: that coroutine runs only if the sends yield the loop."""
    count = 20
    in_flight = 0
    seen_in_flight: list[int] = []
    all_started = asyncio.Event()

    async def send(i: int) -> TaskResult[int]:
        nonlocal in_flight
        in_flight += 1
        if in_flight == count:
            all_started.set()
        try:
            return await add.aenqueue(i)
        finally:
            in_flight -= 1

    async def open_the_line() -> None:
        await all_started.wait()
        seen_in_flight.append(in_flight)
        held_line.release()

    async def scenario() -> list[TaskResult[int]]:
        results, _ = await asyncio.gather(
            asyncio.gather(*(send(i) for i in range(count))), open_the_line()
        )
        return results

    results = asyncio.run(scenario())

    assert seen_in_flight == [count]
    delivered = runs.wait("add", count)
    assert {run["task_id"]: run["a"] for run in delivered} == {
        result.id: i for i, result in enumerate(results)
    }


def test_seed_and_django_tasks_share_one_endpoint(via_emulator: Any, runs: Runs) -> None:
    with seed_tasks.RUN_EVENT:
        seed_tasks.RUNS.clear()
    handle = seed_add(a=1, b=2).delay()
    result = add.enqueue(3, b=4)

    (run,) = runs.wait("add")
    assert (run["a"], run["b"], run["task_id"]) == (3, 4, result.id)
    with seed_tasks.RUN_EVENT:
        seed_tasks.RUN_EVENT.wait_for(lambda: any(r["label"] == "add" for r in seed_tasks.RUNS), 15)
        (seed_run,) = [r for r in seed_tasks.RUNS if r["label"] == "add"]
        seed_tasks.RUNS.clear()
    assert (seed_run["a"], seed_run["b"], seed_run["task_name"]) == (1, 2, handle.task_id)
    # Both went to the same URL, CLOUDTASK["URL"], and were answered 200 there.
    assert statuses(via_emulator, result.id, 1) == [200]
    assert statuses(via_emulator, str(handle.task_id), 1) == [200]
