"""Dead letters: deliveries that failed for good, kept with their raw body, headers and every
error, and answered 2xx so Cloud Tasks stops. Poison messages are real Cloud Tasks tasks, made
with the real client, correctly signed, whose body can never decode."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtask.models import DeadLetter, TaskExecution
from tests.tasks import add, records_dead_end

from .conftest import WAIT, create_raw_task, fast_queue, poll, replay, statuses, unique

pytestmark = pytest.mark.django_db(transaction=True)


def header(letter: DeadLetter, name: str) -> str | None:
    """A header of the kept request, by name in any case (Django title-cases them)."""
    found = [v for k, v in letter.headers.items() if k.lower() == name.lower()]
    return found[0] if found else None


def the_letter(task_id: str) -> DeadLetter:
    letter: DeadLetter = poll(lambda: DeadLetter.objects.filter(task_id=task_id).first())
    return letter


def only_attempts(emulator: Any, task_id: str, count: int) -> list[int | None]:
    """The statuses of task_id's attempts once Cloud Tasks is done with it (no retry waiting)."""
    statuses(emulator, task_id, count)
    assert emulator.wait_idle(timeout=WAIT)
    return [d.status for d in emulator.dispatches if d.task == task_id]


POISON = {
    # A registered task with an argument no decoder accepts (a "uuid" that is a number).
    "bad-arguments": (
        {"v": 1, "task": add.name, "args": [{"__ct__": "uuid", "v": 5}], "kwargs": {}},
        add.name,
        "Malformed 'uuid' value 5",
    ),
    # Not even an envelope: the name of the task cannot be read.
    "bad-envelope": (
        b'{"v": 1, "task": ',
        "",
        "The request body is not JSON",
    ),
}


@pytest.mark.parametrize(("envelope", "name", "message"), POISON.values(), ids=POISON)
def test_a_poison_message_is_dead_lettered_and_answered_2xx_once(
    delivering: Any, endpoint_url: str, envelope: Any, name: str, message: str
) -> None:
    task_id = unique("poison")
    fast_queue(delivering, "records-poison")
    body = create_raw_task(delivering, "records-poison", task_id, endpoint_url, envelope)

    assert only_attempts(delivering, task_id, 1) == [200]

    letter = the_letter(task_id)
    assert (letter.reason, letter.task_name) == ("undecodable", name)
    assert letter.queue == "records-poison"
    assert bytes(letter.body) == body
    assert header(letter, "X-CloudTasks-TaskName") == task_id
    assert header(letter, "X-CloudTasks-QueueName") == "records-poison"
    assert (header(letter, "X-CloudTask-Signature") or "").startswith("sha256=")
    assert letter.attempts == 1
    (error,) = letter.errors
    assert error["exception_class"] == "cloudtask.exceptions.InvalidTaskRequest"
    assert message in error["message"]
    assert error["traceback"]
    # Nothing ran, so nothing was claimed.
    assert not TaskExecution.objects.filter(task_id=task_id).exists()


def test_an_unknown_task_is_dead_lettered_after_the_configured_attempts(
    delivering: Any, settings: Any, endpoint_url: str
) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "UNKNOWN_TASK_ATTEMPTS": 2}
    task_id = unique("unknown")
    fast_queue(delivering, "records-unknown")
    envelope = {"v": 1, "task": "tests.tasks.no_such_task", "args": [], "kwargs": {}}
    body = create_raw_task(delivering, "records-unknown", task_id, endpoint_url, envelope)

    # The first delivery may meet a process that lacks the code (a deploy rolling out): 404,
    # retried. The second, as configured, is dead-lettered and answered 2xx.
    assert only_attempts(delivering, task_id, 2) == [404, 200]

    letter = the_letter(task_id)
    assert (letter.reason, letter.task_name, letter.attempts) == (
        "unknown_task",
        "tests.tasks.no_such_task",
        2,
    )
    assert bytes(letter.body) == body
    assert header(letter, "X-CloudTasks-TaskRetryCount") == "1"
    (error,) = letter.errors
    assert error["exception_class"] == "cloudtask.exceptions.UnknownTask"
    assert "tests.tasks.no_such_task" in error["message"]


def test_max_attempts_reached_makes_the_record_dead_with_every_error(
    delivering: Any, runs: Any, endpoint_url: str
) -> None:
    task_id = unique("dead-end")
    records_dead_end("z").delay(task_id=task_id)
    runs.wait("records_dead_end", 3)

    # max_attempts=3: the third failure is final, answered 2xx so Cloud Tasks stops there.
    assert only_attempts(delivering, task_id, 3) == [500, 500, 200]

    row = poll(lambda: TaskExecution.objects.filter(task_id=task_id, status="dead").first())
    assert row.attempts == 3
    assert [e["attempt"] for e in row.errors] == [1, 2, 3]
    letter = the_letter(task_id)
    assert (letter.reason, letter.task_name, letter.attempts) == (
        "exhausted",
        records_dead_end.name,
        3,
    )
    assert letter.errors == row.errors
    assert [e["message"] for e in letter.errors] == [
        "z: attempt 1 failed",
        "z: attempt 2 failed",
        "z: attempt 3 failed",
    ]
    assert {e["exception_class"] for e in letter.errors} == {"builtins.RuntimeError"}
    delivered = runs.of("records_dead_end")[-1]
    assert bytes(letter.body) == delivered["body"]
    assert header(letter, "X-CloudTasks-TaskRetryCount") == "2"
    assert len(runs.of("records_dead_end")) == 3

    # A replay of a dead task is a duplicate: it does not run a fourth time.
    answer = replay(endpoint_url, delivered)
    assert (answer.status, answer.text) == (200, "duplicate delivery; already done, not run again")
    assert len(runs.of("records_dead_end")) == 3
    assert DeadLetter.objects.filter(task_id=task_id).count() == 1
