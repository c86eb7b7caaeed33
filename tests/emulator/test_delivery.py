"""HTTP delivery: the request a handler receives, completion, failures, schedule, pause, RunTask."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtask.emulator import Emulator, ManualClock

from .conftest import Reply, Target, wait_until


def test_request_is_delivered_exactly_as_given(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "name": f"{queue}/tasks/exact-1",
                "http_request": {
                    "url": target.url("/hook?a=1&b=two"),
                    "http_method": "PUT",
                    "headers": {"X-Custom": "Value", "Content-Type": "application/json"},
                    "body": b'{"x": 1}',
                },
            },
        }
    )
    (request,) = target.wait_for(1)
    assert request.method == "PUT"
    assert request.path == "/hook?a=1&b=two"
    assert request.body == b'{"x": 1}'
    assert request.header("X-Custom") == "Value"
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == "Google-Cloud-Tasks"
    assert request.header("X-CloudTasks-QueueName") == "default"
    assert request.header("X-CloudTasks-TaskName") == "exact-1"
    assert request.header("X-CloudTasks-TaskRetryCount") == "0"
    assert request.header("X-CloudTasks-TaskExecutionCount") == "0"
    assert request.header("X-CloudTasks-TaskPreviousResponse") is None
    assert request.header("X-CloudTasks-TaskRetryReason") is None
    eta = request.header("X-CloudTasks-TaskETA")
    assert eta is not None
    assert abs(float(eta) - dt.datetime.now(dt.UTC).timestamp()) < 60


def test_content_type_is_never_added(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    # Cloud Tasks does not set Content-Type; adding one (say, a form type) would change how
    # Django parses the body.
    client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url(), "body": b"a=b"}}}
    )
    (request,) = target.wait_for(1)
    assert request.header("Content-Type") is None
    assert request.body == b"a=b"


def test_user_agent_is_replaced(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url(), "headers": {"User-Agent": "mine"}}},
        }
    )
    (request,) = target.wait_for(1)
    assert request.header("User-Agent") == "Google-Cloud-Tasks"


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "POST"])
def test_http_methods(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target, method: str
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url(), "http_method": method}},
        }
    )
    (request,) = target.wait_for(1)
    assert request.method == method


def test_success_completes_and_removes_the_task(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    target.script("/task", 204)
    task = client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
    )
    target.wait_for(1)
    assert emulator.wait_idle(5)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=task.name)
    (record,) = emulator.dispatches
    assert (record.queue, record.attempt, record.status, record.error) == ("default", 1, 204, None)
    assert record.task == task.name.rsplit("/", 1)[1]
    assert record.latency >= 0


@pytest.mark.parametrize("status", [404, 500, 302])
def test_any_other_status_is_retried(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target, status: int
) -> None:
    target.script("/task", status, 200)
    client.create_task(request={"parent": queue, "task": {"http_request": {"url": target.url()}}})
    _, second = target.wait_for(2)
    assert second.header("X-CloudTasks-TaskRetryCount") == "1"
    assert second.header("X-CloudTasks-TaskPreviousResponse") == str(status)
    assert second.header("X-CloudTasks-TaskRetryReason")
    assert emulator.wait_idle(5)
    assert [r.status for r in emulator.dispatches] == [status, 200]


def test_execution_count_skips_5xx(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    target.script("/task", 500, 404, 503, 200)
    client.create_task(request={"parent": queue, "task": {"http_request": {"url": target.url()}}})
    requests = target.wait_for(4)
    assert [r.header("X-CloudTasks-TaskRetryCount") for r in requests] == ["0", "1", "2", "3"]
    # Responses before each attempt, not counting 5xx: 500 no, 404 yes, 503 no.
    assert [r.header("X-CloudTasks-TaskExecutionCount") for r in requests] == ["0", "0", "1", "1"]


def test_refused_connection_is_a_failed_attempt(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str
) -> None:
    closed = Target()
    url = closed.url()
    closed.close()  # nothing listens on this port any more
    client.update_queue(request={"queue": {"name": queue, "retry_config": {"max_attempts": 2}}})
    task = client.create_task(request={"parent": queue, "task": {"http_request": {"url": url}}})
    assert emulator.wait_idle(10)
    records = emulator.dispatches
    assert [r.status for r in records] == [None, None]
    assert all("refused" in (r.error or "") for r in records)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=task.name)  # given up after max_attempts


def test_max_attempts_counts_the_first_attempt(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    target.script("/task", 500)
    client.update_queue(request={"queue": {"name": queue, "retry_config": {"max_attempts": 3}}})
    client.create_task(request={"parent": queue, "task": {"http_request": {"url": target.url()}}})
    assert emulator.wait_idle(10)
    assert len(target.received) == 3
    assert list(client.list_tasks(parent=queue)) == []


def test_task_state_after_a_failure(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    target.script("/task", 503)
    created = client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
    )
    target.wait_for(1)
    wait_until(lambda: client.get_task(name=created.name).response_count == 1)
    task = client.get_task(name=created.name)
    assert task.dispatch_count == 1
    assert task.first_attempt.dispatch_time == created.create_time
    assert task.last_attempt.response_status.code == 14  # UNAVAILABLE for HTTP 503
    assert "503" in task.last_attempt.response_status.message
    assert task.last_attempt.response_time is not None
    # The next attempt waits for the queue's min_backoff (0.1 s by default).
    assert task.schedule_time == created.create_time + dt.timedelta(seconds=0.1)


def test_schedule_time_is_honoured(
    manual_emulator: Emulator, manual_clock: ManualClock, target: Target
) -> None:
    client = manual_emulator.client()
    queue = manual_emulator.ensure_queue("default")
    later = dt.datetime.fromtimestamp(manual_clock.now() + 3600, tz=dt.UTC)
    client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url()}, "schedule_time": later},
        }
    )
    client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url("/now")}}}
    )
    target.wait_for(1, path="/now")
    assert manual_emulator.wait_idle(0.2) is False  # the later task is still waiting
    assert target.received[0].path == "/now" and len(target.received) == 1
    manual_clock.advance(3599)
    assert manual_emulator.wait_idle(0.2) is False
    manual_clock.advance(1)
    (request,) = target.wait_for(1, path="/task")
    assert float(request.header("X-CloudTasks-TaskETA") or 0) == later.timestamp()


def test_past_schedule_time_means_now(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url()}, "schedule_time": past},
        }
    )
    target.wait_for(1)


def test_pause_holds_everything_and_resume_releases(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    for _ in range(3):
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
        )
    # Paused work does not count as pending, so wait_idle returns at once while nothing went out.
    assert emulator.wait_idle(1)
    assert target.received == []
    assert len(list(client.list_tasks(parent=queue))) == 3
    client.resume_queue(name=queue)
    target.wait_for(3)
    assert emulator.wait_idle(5)


def test_run_task_dispatches_at_once_even_paused_or_scheduled_later(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    task = client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url()}, "schedule_time": later},
        }
    )
    returned = client.run_task(name=task.name)
    assert returned.name == task.name
    target.wait_for(1)
    wait_until(lambda: not list(client.list_tasks(parent=queue)), what="task completed")


def test_run_task_of_a_missing_task_is_not_found(
    client: tasks_v2.CloudTasksClient, queue: str
) -> None:
    with pytest.raises(exceptions.NotFound):
        client.run_task(name=f"{queue}/tasks/nope")


def test_deleting_a_task_in_flight_keeps_it_deleted(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    release = threading.Event()
    target.script("/task", Reply(500, wait=release))
    task = client.create_task(
        request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
    )
    target.wait_for(1)
    client.delete_task(name=task.name)
    release.set()
    assert emulator.wait_idle(5)
    assert len(target.received) == 1  # the failed attempt is not retried
