"""Fixtures for the execution-record tests: the in-process emulator delivering to a live server
(tests/api's fixtures), plus ways to replay a delivery, hold back an answer, and create a Cloud
Tasks task by hand."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from google.cloud import tasks_v2

from cloudtask import handler
from cloudtask.conf import get_settings
from cloudtask.emulator import Emulator
from cloudtask.signing import HEADER, sign
from tests import tasks as test_tasks
from tests.api.conftest import Runs, emulator, endpoint_url, poll, runs, via_emulator

__all__ = [
    "Answer",
    "HeldAnswers",
    "Runs",
    "create_raw_task",
    "delivery",
    "emulator",
    "endpoint_url",
    "fast_queue",
    "poll",
    "replay",
    "runs",
    "statuses",
    "unique",
    "via_emulator",
]

#: Bound of every wait in these tests that is not a dispatch deadline.
WAIT = 20.0
#: Headers of a recorded delivery that belong to the connection, not to the request.
_HOP_HEADERS = {"host", "content-length", "connection", "accept-encoding"}


def unique(prefix: str) -> str:
    """A task id no earlier test used (the emulator keeps used names for an hour)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def statuses(emulator: Any, task_id: str, count: int, timeout: float = WAIT) -> list[int | None]:
    """The HTTP status of each delivery attempt of task_id, once there are count of them."""

    def probe() -> list[int | None]:
        found = [d.status for d in emulator.dispatches if d.task == task_id]
        return found if len(found) >= count else []

    return list(poll(probe, timeout=timeout))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    text: str


def replay(url: str, delivery: dict[str, Any]) -> Answer:
    """POST again, over HTTP, the very body and headers a task saw (as recorded by
    tests.tasks.record_delivery): what anyone who captured a signed request could do."""
    headers = {k: v for k, v in delivery["headers"].items() if k.lower() not in _HOP_HEADERS}
    request = urllib.request.Request(url, data=delivery["body"], headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return Answer(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read().decode())


def delivery(call: Any, task_id: str, attempt: int, queue: str = "default") -> dict[str, Any]:
    """The request Cloud Tasks sends for attempt number attempt of a task call under task_id
    (body and headers, as replay() takes them)."""
    message = call.encode(task_id=task_id)
    return {
        "body": message.body,
        "headers": {
            **message.headers,
            "X-CloudTasks-QueueName": queue,
            "X-CloudTasks-TaskName": task_id,
            "X-CloudTasks-TaskRetryCount": str(attempt - 1),
            "X-CloudTasks-TaskExecutionCount": "0",
        },
    }


def create_raw_task(
    emulator: Emulator, queue: str, task_id: str, url: str, envelope: bytes | dict[str, Any]
) -> bytes:
    """Create a Cloud Tasks task with the real client, its body made by hand and signed with
    the endpoint's secret (a sender with the secret and a bug, or another version's encoder).
    Returns the body."""
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    signature = sign(body, get_settings())
    assert signature is not None
    parent = emulator.queue_path(queue)
    task: Any = {
        "name": f"{parent}/tasks/{task_id}",
        "http_request": {
            "url": url,
            "http_method": tasks_v2.HttpMethod.POST,
            "headers": {"Content-Type": "application/json", HEADER: signature},
            "body": body,
        },
    }
    emulator.client().create_task(parent=parent, task=task)
    return body


def fast_queue(emulator: Emulator, queue: str, max_attempts: int = 5) -> str:
    """A queue that retries after 0.1 s, a few times at most (so a regression ends quickly)."""
    name = emulator.ensure_queue(queue)
    emulator.client().update_queue(
        request={
            "queue": {
                "name": name,
                "retry_config": {
                    "max_attempts": max_attempts,
                    "min_backoff": {"nanos": 100_000_000},
                    "max_backoff": {"seconds": 1},
                },
            },
            "update_mask": {"paths": ["retry_config"]},
        }
    )
    return name


@pytest.fixture
def delivering(via_emulator: Emulator) -> Iterator[Emulator]:
    """via_emulator, and nothing of this test still in flight when the next one starts."""
    yield via_emulator
    assert via_emulator.wait_idle(timeout=40), "deliveries still pending after the test"


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """RECORDS_GATE, closed; opened at the end whatever happens, so no run stays blocked."""
    test_tasks.RECORDS_GATE.clear()
    yield test_tasks.RECORDS_GATE
    test_tasks.RECORDS_GATE.set()


class HeldAnswers:
    """Holds back the endpoint's answer to the first delivery of chosen task ids, as a network
    that lost it would: the task ran and its record is written, Cloud Tasks never hears back.

    Wraps cloudtask.handler.handle (the endpoint view calls it), in the live server's thread.
    """

    def __init__(self, handle: Callable[[HttpRequest], HttpResponse]) -> None:
        self._handle = handle
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self.holding = threading.Event()
        self.released = threading.Event()
        #: The status of each answer that was held back.
        self.held: list[int] = []

    def hold_first(self, task_id: str) -> None:
        with self._lock:
            self._ids.add(task_id)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self._handle(request)
        task_id = request.headers.get("X-CloudTasks-TaskName", "")
        with self._lock:
            hold = task_id in self._ids
            self._ids.discard(task_id)
        if hold:
            self.held.append(response.status_code)
            self.holding.set()
            self.released.wait(timeout=60)  # bounded: a failed test never strands the thread
        return response


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldAnswers]:
    answers = HeldAnswers(handler.handle)
    monkeypatch.setattr(handler, "handle", answers)
    yield answers
    answers.released.set()
