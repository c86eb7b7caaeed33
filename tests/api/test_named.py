"""Named tasks: fixed, derived, per-call and argument-hash ids, and TaskAlreadyExists."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksRestTransport

import cloudtask
from cloudtask import ARGS_HASH, InvalidTaskCall, TaskAlreadyExists, TaskRegistrationError, task
from cloudtask.conf import get_settings
from cloudtask.exceptions import EnqueueError, QueueNotFound
from cloudtask.message import derived_task_id
from cloudtask.transports.cloudtasks import CloudTasksTransport
from tests.tasks import add, clean_expired, fixed_name, once_per_args

pytestmark = pytest.mark.django_db(transaction=True)


def test_named_true_uses_the_registered_name(via_emulator: Any, runs: Any) -> None:
    handle = clean_expired().delay()
    assert handle.id == "tests-tasks-clean_expired"
    with pytest.raises(TaskAlreadyExists) as caught:
        clean_expired().delay()
    assert isinstance(caught.value, cloudtask.CloudTaskError)
    assert isinstance(caught.value.__cause__, api_exceptions.AlreadyExists)
    assert "tests-tasks-clean_expired" in str(caught.value)
    runs.wait("clean_expired")


def test_named_string_and_queue(via_emulator: Any, runs: Any) -> None:
    handle = fixed_name().delay()
    assert (handle.name or "").endswith("/queues/other-queue/tasks/fixed-name-task")
    with pytest.raises(TaskAlreadyExists):
        fixed_name().delay()
    (run,) = runs.wait("fixed_name")
    assert (run["queue_name"], run["task_name"]) == ("other-queue", "fixed-name-task")


def test_per_call_name(via_emulator: Any, runs: Any) -> None:
    handle = add(a=1, b=1).delay(name="report-2026-11")
    assert handle.id == "report-2026-11"
    with pytest.raises(TaskAlreadyExists):
        add(a=2, b=2).push(name="report-2026-11")
    with pytest.raises(TaskAlreadyExists):
        add(a=2, b=2).schedule(countdown=60, name="report-2026-11")
    (run,) = runs.wait("add")
    assert run["task_name"] == "report-2026-11"


def test_args_hash_names_equal_calls_alike(via_emulator: Any, runs: Any) -> None:
    first = once_per_args("k", n=1).delay()
    with pytest.raises(TaskAlreadyExists):
        once_per_args(key="k", n=1).delay()  # same arguments, spelled differently
    other = once_per_args("k").delay()
    assert first.id != other.id
    expected = hashlib.sha256(
        json.dumps(
            ["tests.tasks.once_per_args", [], {"key": "k", "n": 1}],
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
    ).hexdigest()
    assert first.id == expected
    with pytest.raises(TaskAlreadyExists):
        once_per_args("k", 0).delay()
    assert once_per_args("k").encode().task_id == once_per_args("k", 0).encode().task_id
    runs.wait("once_per_args", 2)
    assert len(runs.of("once_per_args")) == 2


def test_args_hash_is_independent_of_set_order() -> None:
    @task(named=ARGS_HASH, name="api.test_named.sets")
    def sets(request: Any, s: set[str]) -> None:
        pass

    try:
        ids = {sets({str(i) for i in range(50)}).encode().task_id for _ in range(3)}
        ids.add(sets(set(reversed([str(i) for i in range(50)]))).encode().task_id)
        assert len(ids) == 1
    finally:
        cloudtask.registry.unregister("api.test_named.sets")


def test_derived_ids_replace_invalid_characters() -> None:
    assert derived_task_id("shop.tasks.Mailer.send") == "shop-tasks-Mailer-send"
    assert derived_task_id("x" * 600) == "x" * 500


@pytest.mark.parametrize("bad", ["", "has space", "dots.are.bad", "x" * 501, "é"])
def test_invalid_ids_fail_locally(bad: str) -> None:
    with pytest.raises(InvalidTaskCall, match="task id"):
        add(a=1, b=1).delay(name=bad)
    with pytest.raises(TaskRegistrationError, match="task id"):

        @task(named=bad, name="api.test_named.bad")
        def bad_named(request: Any) -> None:
            pass


@pytest.fixture
def rest_conflict_server() -> Iterator[str]:
    """A stand-in for the REST endpoint answering 409 ALREADY_EXISTS like Google's API does.

    No REST emulator exists, so this injects the one fault; the client, its REST transport and
    the error mapping are the real ones."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(
                {
                    "error": {
                        "code": 409,
                        "message": "Requested entity already exists",
                        "status": "ALREADY_EXISTS",
                    }
                }
            ).encode()
            self.send_response(409)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_rest_transport_conflict_maps_to_task_already_exists(rest_conflict_server: str) -> None:
    transport = CloudTasksRestTransport(
        host=rest_conflict_server,
        url_scheme="http",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    client = tasks_v2.CloudTasksClient(transport=transport)
    backend = CloudTasksTransport(get_settings(), client=client)
    with pytest.raises(TaskAlreadyExists) as caught:
        backend.enqueue(clean_expired().encode())
    assert isinstance(caught.value.__cause__, api_exceptions.Conflict)
    assert not isinstance(caught.value.__cause__, api_exceptions.AlreadyExists)


def test_missing_queue_is_queue_not_found(settings: Any, emulator: Any) -> None:
    from cloudtask.emulator import Emulator

    with Emulator(log=None) as strict:  # no auto-created queues
        settings.CLOUDTASK = {
            **settings.CLOUDTASK,
            "TRANSPORT": "cloudtasks",
            "EMULATOR_HOST": strict.address,
        }
        with pytest.raises(QueueNotFound) as caught:
            add(a=1, b=1).delay()
        assert isinstance(caught.value.__cause__, api_exceptions.NotFound)
        assert "default" in str(caught.value)


def test_other_api_errors_are_enqueue_errors(via_emulator: Any) -> None:
    backend = cloudtask.transports.get_transport()
    fault = api_exceptions.ServiceUnavailable("try later")  # type: ignore[no-untyped-call]
    with (
        mock.patch.object(backend.client, "create_task", side_effect=fault),  # type: ignore[attr-defined]
        pytest.raises(EnqueueError) as caught,
    ):
        add(a=1, b=1).delay()
    assert caught.value.__cause__ is fault
    assert type(caught.value) is EnqueueError


@pytest.mark.django_db(transaction=True)
def test_a_named_task_runs_again_once_cloud_tasks_lets_its_name_go(
    settings: Any, runs: Any
) -> None:
    # Execution records keep the id's "succeeded"; a later task reusing the name (Cloud Tasks
    # frees it after its dedup window, here 0 s) is a new task with a new ETA, not a duplicate.
    settings.CLOUDTASK = {**settings.CLOUDTASK, "EMULATOR": {"DEDUP_WINDOW": 0}}
    first = clean_expired().delay()
    second = clean_expired().delay()
    assert first.task_id == second.task_id
    assert len(runs.of("clean_expired")) == 2
    record = second.get_result()
    assert record is not None and (record.status, record.attempts) == ("succeeded", 1)
