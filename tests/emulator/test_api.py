"""The CloudTasks gRPC API through the real google-cloud-tasks client: queues, tasks, errors."""

from __future__ import annotations

import datetime as dt

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.protobuf import field_mask_pb2

from cloudtask.emulator import Emulator, ManualClock

from .conftest import Target

PARENT = "projects/local-project/locations/local"
QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue "
    "to initialize."
)


def http_task(url: str, **fields: object) -> dict[str, object]:
    return {"http_request": {"url": url, "body": b"{}"}, **fields}


def test_queue_lifecycle(client: tasks_v2.CloudTasksClient) -> None:
    name = f"{PARENT}/queues/emails"
    created = client.create_queue(request={"parent": PARENT, "queue": {"name": name}})
    assert created.name == name
    assert created.state == tasks_v2.Queue.State.RUNNING
    # Google's defaults for a queue created without rate limits or retry config.
    assert created.rate_limits.max_dispatches_per_second == 500
    assert created.rate_limits.max_concurrent_dispatches == 1000
    assert created.retry_config.max_attempts == 100
    assert created.retry_config.min_backoff == dt.timedelta(seconds=0.1)
    assert created.retry_config.max_backoff == dt.timedelta(seconds=3600)
    assert created.retry_config.max_doublings == 16

    assert client.get_queue(name=name).name == name
    assert {q.name for q in client.list_queues(parent=PARENT)} == {
        f"{PARENT}/queues/default",
        name,
    }
    with pytest.raises(exceptions.AlreadyExists, match="Requested entity already exists"):
        client.create_queue(request={"parent": PARENT, "queue": {"name": name}})

    assert client.pause_queue(name=name).state == tasks_v2.Queue.State.PAUSED
    assert client.get_queue(name=name).state == tasks_v2.Queue.State.PAUSED
    assert client.resume_queue(name=name).state == tasks_v2.Queue.State.RUNNING

    client.delete_queue(name=name)
    # Like Cloud Tasks, a recently deleted queue is a failed precondition, not a missing one.
    with pytest.raises(exceptions.FailedPrecondition):
        client.get_queue(name=name)
    with pytest.raises(exceptions.NotFound):
        client.get_queue(name=f"{PARENT}/queues/never-created")


def test_list_queues_pages(client: tasks_v2.CloudTasksClient) -> None:
    for i in range(5):
        client.create_queue(request={"parent": PARENT, "queue": {"name": f"{PARENT}/queues/q{i}"}})
    pager = client.list_queues(request={"parent": PARENT, "page_size": 2})
    assert len([q.name for q in pager]) == 6  # default + 5, across three pages


def test_update_queue_applies_the_mask(client: tasks_v2.CloudTasksClient, queue: str) -> None:
    updated = client.update_queue(
        request={
            "queue": {
                "name": queue,
                "retry_config": {"max_attempts": 3, "min_backoff": dt.timedelta(seconds=1)},
                "rate_limits": {"max_dispatches_per_second": 7},
            },
            "update_mask": field_mask_pb2.FieldMask(paths=["retry_config.max_attempts"]),
        }
    )
    assert updated.retry_config.max_attempts == 3
    assert updated.retry_config.min_backoff == dt.timedelta(seconds=0.1)  # not in the mask
    assert updated.rate_limits.max_dispatches_per_second == 500
    updated = client.update_queue(
        request={
            "queue": {"name": queue, "rate_limits": {"max_dispatches_per_second": 10}},
            "update_mask": field_mask_pb2.FieldMask(paths=["rate_limits"]),
        }
    )
    assert updated.rate_limits.max_dispatches_per_second == 10
    assert updated.rate_limits.max_burst_size == 2
    assert client.get_queue(name=queue).retry_config.max_attempts == 3


def test_update_queue_creates_a_missing_queue(client: tasks_v2.CloudTasksClient) -> None:
    name = f"{PARENT}/queues/made-by-update"
    client.update_queue(request={"queue": {"name": name, "retry_config": {"max_attempts": 5}}})
    assert client.get_queue(name=name).retry_config.max_attempts == 5


@pytest.mark.parametrize(
    "retry_config",
    [
        {"max_attempts": -2},
        {"min_backoff": dt.timedelta(seconds=-1)},
        {"max_doublings": -1},
        {"min_backoff": dt.timedelta(seconds=20), "max_backoff": dt.timedelta(seconds=10)},
    ],
)
def test_bad_retry_config_is_invalid_argument(
    client: tasks_v2.CloudTasksClient, retry_config: dict[str, object]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_queue(
            request={
                "parent": PARENT,
                "queue": {"name": f"{PARENT}/queues/bad", "retry_config": retry_config},
            }
        )


def test_rate_limits_above_google_caps_are_invalid(client: tasks_v2.CloudTasksClient) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="max_dispatches_per_second"):
        client.create_queue(
            request={
                "parent": PARENT,
                "queue": {
                    "name": f"{PARENT}/queues/fast",
                    "rate_limits": {"max_dispatches_per_second": 501},
                },
            }
        )


@pytest.mark.parametrize(
    "parent",
    [
        f"{PARENT}/queues/under_score",  # underscores are not allowed in queue ids
        f"{PARENT}/queues/" + "q" * 101,
        "projects/bad project/locations/local/queues/default",
        "projects/p/queues/default",
    ],
)
def test_invalid_queue_names(
    client: tasks_v2.CloudTasksClient, target: Target, parent: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(request={"parent": parent, "task": http_task(target.url())})


def test_project_ids_may_hold_domain_and_colon(client: tasks_v2.CloudTasksClient) -> None:
    parent = "projects/example.com:my-project/locations/us-central1"
    created = client.create_queue(
        request={"parent": parent, "queue": {"name": f"{parent}/queues/q"}}
    )
    assert created.name == f"{parent}/queues/q"


@pytest.mark.parametrize("task_id", ["has.dot", "has space", "x" * 501, "ümlaut"])
def test_invalid_task_ids(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target, task_id: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(
            request={
                "parent": queue,
                "task": http_task(target.url(), name=f"{queue}/tasks/{task_id}"),
            }
        )


def test_task_ids_allow_letters_digits_dash_underscore(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    name = f"{queue}/tasks/Ab-9_" + "z" * 495
    assert (
        client.create_task(
            request={"parent": queue, "task": http_task(target.url(), name=name)}
        ).name
        == name
    )


def test_missing_queue_is_not_found_with_googles_message(
    client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    with pytest.raises(exceptions.NotFound) as info:
        client.create_task(
            request={"parent": f"{PARENT}/queues/missing", "task": http_task(target.url())}
        )
    assert info.value.message == QUEUE_MISSING


def test_auto_create_queues(target: Target) -> None:
    with Emulator(log=None, auto_create_queues=True) as emu:
        client = emu.client()
        parent = f"{PARENT}/queues/made-on-demand"
        client.create_task(request={"parent": parent, "task": http_task(target.url())})
        target.wait_for(1)
        assert client.get_queue(name=parent).name == parent


def test_other_methods_are_unimplemented(client: tasks_v2.CloudTasksClient, queue: str) -> None:
    with pytest.raises(exceptions.MethodNotImplemented):
        client.get_iam_policy(resource=queue)
    with pytest.raises(exceptions.MethodNotImplemented):
        client.test_iam_permissions(resource=queue, permissions=["cloudtasks.tasks.create"])


def test_get_list_and_delete_tasks(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    created = client.create_task(
        request={"parent": queue, "task": http_task(target.url(), name=f"{queue}/tasks/first")}
    )
    client.create_task(request={"parent": queue, "task": http_task(target.url())})
    assert created.create_time is not None
    assert created.schedule_time >= created.create_time
    assert created.dispatch_count == 0
    assert created.dispatch_deadline == dt.timedelta(minutes=10)  # Google's default

    basic = client.get_task(name=created.name)
    assert basic.view == tasks_v2.Task.View.BASIC
    assert basic.http_request.body == b""  # BASIC leaves the body out
    full = client.get_task(request={"name": created.name, "response_view": "FULL"})
    assert full.http_request.body == b"{}"
    assert full.http_request.url == target.url()

    listed = list(client.list_tasks(request={"parent": queue, "response_view": "FULL"}))
    assert len(listed) == 2
    assert all(t.http_request.body == b"{}" for t in listed)
    assert len(list(client.list_tasks(request={"parent": queue, "page_size": 1}))) == 2

    client.delete_task(name=created.name)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=created.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_task(name=created.name)


def test_purge_removes_every_task(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    for _ in range(3):
        client.create_task(request={"parent": queue, "task": http_task(target.url())})
    purged = client.purge_queue(name=queue)
    assert purged.purge_time is not None
    assert list(client.list_tasks(parent=queue)) == []
    client.resume_queue(name=queue)
    assert emulator.wait_idle(5)
    assert target.received == []


def test_name_dedup_existing_completed_and_deleted(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    done = f"{queue}/tasks/done"
    client.create_task(request={"parent": queue, "task": http_task(target.url(), name=done)})
    target.wait_for(1)
    assert emulator.wait_idle(5)
    with pytest.raises(exceptions.AlreadyExists, match="Requested entity already exists"):
        client.create_task(request={"parent": queue, "task": http_task(target.url(), name=done)})

    client.pause_queue(name=queue)
    waiting = f"{queue}/tasks/waiting"
    client.create_task(request={"parent": queue, "task": http_task(target.url(), name=waiting)})
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(request={"parent": queue, "task": http_task(target.url(), name=waiting)})
    client.delete_task(name=waiting)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(request={"parent": queue, "task": http_task(target.url(), name=waiting)})
    # AlreadyExists is a Conflict, which is what callers on the REST transport catch.
    assert issubclass(exceptions.AlreadyExists, exceptions.Conflict)


def test_dedup_window_expires(manual_clock: ManualClock, target: Target) -> None:
    with Emulator(queues=["default"], log=None, clock=manual_clock, dedup_window=60) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        name = f"{queue}/tasks/once"
        client.create_task(request={"parent": queue, "task": http_task(target.url(), name=name)})
        target.wait_for(1)
        assert emu.wait_idle(5)
        manual_clock.advance(59)
        with pytest.raises(exceptions.AlreadyExists):
            client.create_task(
                request={"parent": queue, "task": http_task(target.url(), name=name)}
            )
        manual_clock.advance(2)
        client.create_task(request={"parent": queue, "task": http_task(target.url(), name=name)})
        target.wait_for(2)


def test_schedule_time_limit_is_30_days(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    now = dt.datetime.now(dt.UTC)
    client.pause_queue(name=queue)
    ok = client.create_task(
        request={
            "parent": queue,
            "task": http_task(target.url(), schedule_time=now + dt.timedelta(days=29)),
        }
    )
    assert ok.schedule_time > now + dt.timedelta(days=28)
    with pytest.raises(exceptions.InvalidArgument, match="30 days"):
        client.create_task(
            request={
                "parent": queue,
                "task": http_task(target.url(), schedule_time=now + dt.timedelta(days=31)),
            }
        )


@pytest.mark.parametrize("seconds", [14, 1801])
def test_dispatch_deadline_outside_15s_to_30min_is_invalid(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target, seconds: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="dispatch_deadline"):
        client.create_task(
            request={
                "parent": queue,
                "task": http_task(target.url(), dispatch_deadline=dt.timedelta(seconds=seconds)),
            }
        )


@pytest.mark.parametrize("seconds", [15, 1800])
def test_dispatch_deadline_bounds_are_accepted(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target, seconds: int
) -> None:
    task = client.create_task(
        request={
            "parent": queue,
            "task": http_task(target.url(), dispatch_deadline=dt.timedelta(seconds=seconds)),
        }
    )
    assert task.dispatch_deadline == dt.timedelta(seconds=seconds)


def test_task_size_limit(target: Target) -> None:
    with Emulator(queues=["default"], log=None, max_task_size=2000) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.create_task(
            request={
                "parent": queue,
                "task": {"http_request": {"url": target.url(), "body": b"x" * 1900}},
            }
        )
        with pytest.raises(exceptions.InvalidArgument, match="Task size too large"):
            client.create_task(
                request={
                    "parent": queue,
                    "task": {"http_request": {"url": target.url(), "body": b"x" * 2000}},
                }
            )


def test_default_task_size_limit_is_one_mebibyte(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.pause_queue(name=queue)
    client.create_task(
        request={
            "parent": queue,
            "task": {"http_request": {"url": target.url(), "body": b"x" * 1_000_000}},
        }
    )
    with pytest.raises(exceptions.InvalidArgument, match="1048576"):
        client.create_task(
            request={
                "parent": queue,
                "task": {"http_request": {"url": target.url(), "body": b"x" * 1_048_576}},
            }
        )


def test_body_only_with_post_put_patch(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="body"):
        client.create_task(
            request={
                "parent": queue,
                "task": {"http_request": {"url": target.url(), "http_method": "GET", "body": b"x"}},
            }
        )


def test_url_must_be_absolute_http(client: tasks_v2.CloudTasksClient, queue: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="url"):
        client.create_task(
            request={"parent": queue, "task": {"http_request": {"url": "/relative"}}}
        )
