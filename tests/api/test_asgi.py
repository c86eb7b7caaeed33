"""The endpoint under a real ASGI server: uvicorn serving tests/asgi.py, fed by the emulator.

Under ASGI Django runs the (synchronous) endpoint in a sync_to_async thread; an ``async def``
task goes back through async_to_sync to run on the server's own event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from cloudtask import CloudTaskRequest, Retry, task
from cloudtask.conf import get_settings
from cloudtask.models import DeadLetter
from cloudtask.signing import HEADER as SIGNATURE_HEADER
from cloudtask.signing import sign
from tests.models import TaskRecord
from tests.tasks import record

from .conftest import poll

pytestmark = pytest.mark.django_db(transaction=True)


@task(name="asgi.where_sync")
def where_sync(request: CloudTaskRequest, tag: str) -> str:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    record("where_sync", request, tag=tag, thread=threading.get_ident(), loop=loop)
    return tag


@task(name="asgi.where_async")
async def where_async(request: CloudTaskRequest, tag: str) -> str:
    await asyncio.sleep(0)
    record(
        "where_async",
        request,
        tag=tag,
        thread=threading.get_ident(),
        loop=asyncio.get_running_loop(),
    )
    return tag


@task(name="asgi.write_async")
async def write_async(request: CloudTaskRequest, tag: str) -> None:
    await TaskRecord.objects.acreate(label=tag, payload={"task_id": request.task_id})
    record("write_async", request, tag=tag)


@task(name="asgi.retry_async")
async def retry_async(request: CloudTaskRequest) -> None:
    await asyncio.sleep(0)
    raise Retry("later", after=7.5)


class UvicornThread:
    """uvicorn serving tests.asgi:application on a free loopback port, in a thread of this
    process (so the tasks registered here are the ones it runs, and a test can compare its
    event loop with the one a task saw)."""

    def __init__(self) -> None:
        # Bound now, listening once uvicorn starts: no window for another process to take it.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            "tests.asgi:application",
            loop="asyncio",
            lifespan="off",  # Django's ASGIHandler serves no lifespan protocol
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="uvicorn")

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def _accepts(self) -> bool:
        if not self.thread.is_alive():
            raise RuntimeError("uvicorn stopped before it was ready")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return self.server.started

    def start(self) -> None:
        self.thread.start()
        poll(self._accepts, timeout=15.0, interval=0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15.0)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response
        finally:
            conn.close()


@pytest.fixture(scope="module")
def asgi_server() -> Iterator[UvicornThread]:
    server = UvicornThread()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def via_asgi(via_emulator: Any, settings: Any, asgi_server: UvicornThread) -> Any:
    """The emulator delivering to uvicorn instead of the live (WSGI) server."""
    settings.CLOUDTASK = {**settings.CLOUDTASK, "URL": f"{asgi_server.url}/_tasks/"}
    return via_emulator


MALFORMED = b'{"not": "an envelope"'


def statuses(emulator: Any, task_id: str | None) -> list[int | None] | None:
    found = [d.status for d in emulator.dispatches if d.task == task_id]
    return found or None


def test_sync_task_runs_in_a_worker_thread(
    via_asgi: Any, asgi_server: UvicornThread, runs: Any
) -> None:
    handle = where_sync("sync").delay()

    (run,) = runs.wait("where_sync")
    assert run["tag"] == "sync"
    assert run["task_name"] == handle.task_id
    # Django ran the endpoint (and so the sync task) off the server's loop thread.
    assert run["thread"] != asgi_server.thread.ident
    assert run["loop"] is None
    assert poll(lambda: statuses(via_asgi, handle.task_id)) == [200]


def test_async_task_runs_on_the_servers_event_loop(
    via_asgi: Any, asgi_server: UvicornThread, runs: Any
) -> None:
    handle = where_async("async").delay()

    (run,) = runs.wait("where_async")
    assert run["tag"] == "async"
    assert run["task_name"] == handle.task_id
    assert run["loop"] is asgi_server.loop
    assert run["thread"] == asgi_server.thread.ident
    assert poll(lambda: statuses(via_asgi, handle.task_id)) == [200]


def test_async_task_uses_the_async_orm(via_asgi: Any, runs: Any) -> None:
    tag = f"asgi-{uuid.uuid4().hex}"
    handle = write_async(tag).delay()

    runs.wait("write_async")
    assert TaskRecord.objects.get(label=tag).payload == {"task_id": handle.task_id}


def test_async_retry_answers_503_with_retry_after(asgi_server: UvicornThread) -> None:
    message = retry_async().encode()

    response = asgi_server.post("/_tasks/", message.body, message.headers)

    assert response.status == 503
    assert response.getheader("Retry-After") == "8"


def signed(body: bytes) -> dict[str, str]:
    signature = sign(body, get_settings())
    assert signature is not None
    return {"Content-Type": "application/json", SIGNATURE_HEADER: signature}


def test_malformed_body_is_a_400(asgi_server: UvicornThread, settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "RECORDS": False}

    response = asgi_server.post("/_tasks/", MALFORMED, signed(MALFORMED))

    assert response.status == 400


def test_malformed_body_is_dead_lettered_with_records_on(asgi_server: UvicornThread) -> None:
    # With execution records (the default) a signed body that can never decode is kept as a
    # dead letter and answered 2xx, so Cloud Tasks stops retrying it.
    response = asgi_server.post("/_tasks/", MALFORMED, signed(MALFORMED))

    assert response.status == 200
    (letter,) = DeadLetter.objects.all()
    assert (letter.reason, bytes(letter.body)) == ("undecodable", MALFORMED)


def test_bad_signature_is_a_403(asgi_server: UvicornThread, runs: Any) -> None:
    message = where_sync("forged").encode()
    headers = {**message.headers, SIGNATURE_HEADER: "sha256=" + "0" * 64}

    response = asgi_server.post("/_tasks/", message.body, headers)

    assert response.status == 403
    assert runs.of("where_sync") == []
