"""Benchmark the core API against its baselines, each ratio measured in one run.

1. ``.delay()`` (validate, encode, sign, build the task, create_task over gRPC) against the raw
   google-cloud-tasks client's create_task of the same prepared payload (a dict, as its docs
   show), through the same CloudTasksClient to the same emulator (in its own process, like the
   real service), queue paused so no deliveries compete for the CPU and emptied after each
   round. Goal: <= 1.05x.
2. Django's ``enqueue()`` of a ``django.tasks`` task on ``cloudtask.backends.CloudTasksBackend``
   against the same raw create_task, named like the backend names its tasks (a fresh id per
   call, so the emulator does the same dedup work for both). Skipped, with the reason, when
   the backend or django.tasks (django-tasks on Django 5.2) cannot be imported. Goal: <= 1.05x.
   In the same rounds, the floor Django's contract sets for any backend: the raw create_task
   plus a TaskResult (Django normalizes its arguments) and the task_enqueued signal.
3. The endpoint's requests/s running a no-op task (signature check, envelope decode, routing,
   signals, run) against a bare Django view that reads the body and answers 200, mounted the
   same way. Measured through Django's WSGI handler in-process (the strictest view: no network
   or server cost dilutes the difference), and through a real HTTP server (Django's own
   threaded WSGI server on 127.0.0.1, one connection per request, as Cloud Tasks sends them).
   Both with execution records off (CLOUDTASK["RECORDS"] = False). Goal: >= 0.90x.
   In the same rounds, in-process: this machine's floor, a view that does only what any
   endpoint that keeps the brief's promises must do (check the body's HMAC signature with a
   pre-keyed standard-library HMAC, as cloudtask.signing does, parse the JSON body, call the
   function), printed beside the goal: where the floor misses it, no endpoint can meet it here.
   For information, in-process: with execution records on (the default; an INSERT and an
   UPDATE per delivery, SQLite here), and an ``async def`` no-op task under WSGI.

Rounds alternate between subject and baseline (and floor), each round starting with the next
one, so drift (other processes, CPU boost) hits all; the fastest round of each is reported.
Run: ``.venv/bin/python bench/api.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

from bench.common import fastest, start_emulator

DELAY_GOAL = 1.05
ENDPOINT_GOAL = 0.90

EMULATOR_PROC, EMULATOR_HOST = start_emulator("--auto-create-queues")
_DB_DIR = tempfile.TemporaryDirectory(prefix="cloudtask-bench-")
CLOUDTASK = {
    "TRANSPORT": "cloudtasks",
    "EMULATOR_HOST": EMULATOR_HOST,
    "PROJECT": "local-project",
    "LOCATION": "local",
    "SAE": "bench@local-project.iam.gserviceaccount.com",
    "URL": "http://127.0.0.1:9/_tasks/",
    "QUEUE": "bench",
    "SECRET": "bench-secret",
    "RECORDS": False,
}
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",  # noqa: S106 - a throwaway key for an in-process benchmark
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    INSTALLED_APPS=["cloudtask"],
    MIDDLEWARE=[],
    ROOT_URLCONF=__name__ if __name__ == "__main__" else "bench.api",
    DATABASES={
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{_DB_DIR.name}/bench.db"}
    },
    LOGGING_CONFIG=None,
    CLOUDTASK=CLOUDTASK,
    TASKS={"default": {"BACKEND": "cloudtask.backends.CloudTasksBackend", "QUEUES": ["bench"]}},
)
django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from google.cloud import tasks_v2  # noqa: E402

from cloudtask import CloudTaskRequest, task  # noqa: E402
from cloudtask.message import TaskMessage  # noqa: E402
from cloudtask.transports import get_transport  # noqa: E402

# Django's enqueue() goes through cloudtask.backends (written alongside this benchmark):
# measured only when it, and django.tasks or its backport, import.
django_task: Any
try:
    from cloudtask import backends  # the backend TASKS names

    try:
        from django.tasks import task as django_task
    except ImportError:  # Django 5.2: the django-tasks backport
        from django_tasks import task as django_task
    DJANGO_TASKS_MISSING: str | None = None
except ImportError as exc:
    django_task = None
    DJANGO_TASKS_MISSING = str(exc)


@task(name="bench.noop")
def noop(request: CloudTaskRequest, a: int = 1, b: str = "x") -> None:
    pass


@task(name="bench.async_noop")
async def async_noop(request: CloudTaskRequest, a: int = 1, b: str = "x") -> None:
    pass


def dj_noop(a: int = 1, b: str = "x") -> None:
    pass


# Decorated at module level, as django.tasks requires of a task function.
dj_noop_task: Any = django_task(queue_name="bench")(dj_noop) if django_task else None


@csrf_exempt
def bare_view(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    request.body  # noqa: B018 - read the body like the endpoint does
    return HttpResponse("ok", content_type="text/plain")


#: The floor's key: the HMAC keyed once, copied per body (as cloudtask.signing keeps it).
_FLOOR_MAC = hmac.new(str(CLOUDTASK["SECRET"]).encode(), digestmod=hashlib.sha256)
#: The floor's JSON parser: a decoder's bound decode() on text, json.loads without its checks.
_FLOOR_DECODE = json.JSONDecoder().decode


@csrf_exempt
def floor_view(request: HttpRequest) -> HttpResponse:
    """The least an endpoint does: refuse an unsigned body, parse it, call the function. No
    routing by name, no argument check, no Cloud Tasks headers, no error handling."""
    if request.method != "POST":
        return HttpResponse(status=405)
    body = request.body
    mac = _FLOOR_MAC.copy()
    mac.update(body)
    given = request.META.get("HTTP_X_CLOUDTASK_SIGNATURE", "")
    if not hmac.compare_digest(mac.hexdigest(), given[7:]):  # after "sha256="
        return HttpResponse(status=403)
    envelope = _FLOOR_DECODE(body.decode())
    dj_noop(*envelope["args"], **envelope["kwargs"])
    return HttpResponse("ok", content_type="text/plain")


# The bare view and the floor are mounted like the endpoint (an include of a one-URL module), so
# all pay the same URL resolution and only the views differ; patterns are tried in order, so
# each also pays a failed match of the prefixes above it, which if anything favours the
# endpoint.
urlpatterns = [
    path("_tasks/", include("cloudtask.urls")),
    path("bare/", include(([path("", bare_view)], "bare"))),
    path("floor/", include(([path("", floor_view)], "floor"))),
]


def rounds(
    calls: dict[str, Callable[[], None]],
    n: int,
    repeat: int,
    between: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Seconds per call of each of calls, timed by bench.common.fastest (no context)."""
    return fastest({name: (fn, nullcontext) for name, fn in calls.items()}, n, repeat, between)


def raw_task(message: TaskMessage) -> dict[str, Any]:
    """The task a user of the raw client would build for the same call."""
    return {
        "http_request": {
            "url": message.url,
            "http_method": tasks_v2.HttpMethod.POST,
            "headers": message.headers,
            "body": message.body,
            "oidc_token": {"service_account_email": message.oidc_service_account},
        }
    }


def bench_delay(n: int, repeat: int) -> float:
    transport: Any = get_transport()
    parent = transport.parent("bench")
    # The very CloudTasksClient the transport uses: the ratio isolates cloudtask's own work
    # (two clients on two channels differ by a few percent between themselves).
    raw_client = transport.client
    message = noop(a=2, b="y").encode()
    transport.enqueue(message)  # creates the queue (--auto-create-queues)
    raw_client.pause_queue(name=parent)
    prepared = raw_task(message)

    def delay() -> None:
        noop(a=2, b="y").delay()

    def raw() -> None:
        raw_client.create_task(parent=parent, task=prepared, timeout=20.0)

    for _ in range(200):  # warm both paths
        delay()
        raw()

    def purge() -> None:
        raw_client.purge_queue(name=parent)

    best = rounds({"delay": delay, "raw": raw}, n, repeat, between=purge)
    ours, base = best["delay"], best["raw"]
    ratio = ours / base
    print(
        f".delay(): {ours * 1e6:.0f} us/call; raw create_task: {base * 1e6:.0f} us/call; "
        f"ratio {ratio:.3f}x (goal <= {DELAY_GOAL:.2f}x: {verdict(ratio <= DELAY_GOAL)})"
    )
    raw_client.purge_queue(name=parent)
    return ratio


def bench_enqueue(n: int, repeat: int) -> float | None:
    if dj_noop_task is None:
        print(f"Django enqueue(): skipped, cannot import the backend: {DJANGO_TASKS_MISSING}")
        return None
    transport: Any = get_transport()
    parent = transport.parent("bench")
    raw_client = transport.client
    raw_client.pause_queue(name=parent)
    try:
        dj_noop_task.enqueue(a=2, b="y")
    except Exception as exc:  # a backend still being written: report, do not stop the run
        print(f"Django enqueue(): skipped, it failed: {type(exc).__name__}: {exc}")
        return None
    # The same message the backend builds (same envelope, signature, headers), named per call.
    prepared = raw_task(noop(a=2, b="y").encode())

    def enqueue() -> None:
        dj_noop_task.enqueue(a=2, b="y")

    def raw() -> None:
        named = {**prepared, "name": f"{parent}/tasks/{uuid.uuid4().hex}"}
        raw_client.create_task(parent=parent, task=named, timeout=20.0)

    backend = type(dj_noop_task.get_backend())

    def floor() -> None:
        # What Django's enqueue() contract asks of any backend beside the send: a TaskResult
        # (its arguments normalized to JSON by Django) and the task_enqueued signal.
        task_id = uuid.uuid4().hex
        raw_client.create_task(
            parent=parent, task={**prepared, "name": f"{parent}/tasks/{task_id}"}, timeout=20.0
        )
        result: Any = backends.TaskResult(
            task=dj_noop_task,
            id=task_id,
            status=backends.TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=[],
            kwargs={"a": 2, "b": "y"},
            backend="default",
            errors=[],
            worker_ids=[],
        )
        backends.task_enqueued.send(sender=backend, task_result=result)

    calls = {"enqueue": enqueue, "raw": raw, "floor": floor}
    for _ in range(200):
        for call in calls.values():
            call()

    def purge() -> None:
        raw_client.purge_queue(name=parent)

    best = rounds(calls, n, repeat, between=purge)
    ours, base = best["enqueue"], best["raw"]
    ratio = ours / base
    print(
        f"Django enqueue(): {ours * 1e6:.0f} us/call; raw create_task (named): "
        f"{base * 1e6:.0f} us/call; ratio {ratio:.3f}x "
        f"(goal <= {DELAY_GOAL:.2f}x: {verdict(ratio <= DELAY_GOAL)})"
    )
    least = best["floor"] / base
    print(
        f"  the floor Django's contract sets: raw create_task, a TaskResult and task_enqueued, "
        f"{best['floor'] * 1e6:.0f} us/call; ratio {least:.3f}x"
    )
    raw_client.purge_queue(name=parent)
    return ratio


def cloudtasks_environ(message: TaskMessage, task_id: str) -> dict[str, str]:
    """The request headers of a delivery of message, as WSGI environ keys."""
    return {
        **{
            "HTTP_" + k.upper().replace("-", "_"): v
            for k, v in message.headers.items()
            if k != "Content-Type"
        },
        "HTTP_X_CLOUDTASKS_QUEUENAME": "bench",
        "HTTP_X_CLOUDTASKS_TASKNAME": task_id,
        "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "0",
        "HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT": "0",
        "HTTP_X_CLOUDTASKS_TASKETA": "1767225600.0",
        "HTTP_USER_AGENT": "Google-Cloud-Tasks",
    }


def in_process_call(
    handler: WSGIHandler, message: TaskMessage, path_info: str
) -> Callable[[], None]:
    """One POST of message through Django's WSGI handler, checked to answer 200. Each call has
    a task id of its own (with execution records on, a repeated id is a duplicate)."""
    body = message.body

    def run() -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path_info,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            **cloudtasks_environ(message, uuid.uuid4().hex),
        }
        status: list[str] = []
        response = handler(environ, lambda s, h, *exc: status.append(s))  # type: ignore[arg-type]
        b"".join(response)
        response.close()
        if not status[0].startswith("200"):
            raise RuntimeError(f"{path_info} answered {status[0]}")

    return run


def bench_endpoint(
    n: int, repeat: int, *, title: str, message: TaskMessage, floor: bool = False
) -> float:
    handler = WSGIHandler()
    calls = {
        "endpoint": in_process_call(handler, message, "/_tasks/"),
        "bare": in_process_call(handler, message, "/bare/"),
    }
    if floor:
        calls["floor"] = in_process_call(handler, message, "/floor/")
    for _ in range(500):
        for call in calls.values():
            call()
    best = rounds(calls, n, repeat)
    ours, base = best["endpoint"], best["bare"]
    ratio = base / ours  # requests/s of the endpoint over requests/s of the bare view
    print(
        f"{title}: {1 / ours:,.0f} req/s; bare Django view: {1 / base:,.0f} req/s; "
        f"ratio {ratio:.3f}x"
    )
    if floor:
        least = base / best["floor"]
        print(
            f"  this machine's floor: a view that checks the signature, parses the body and "
            f"calls the function, {1 / best['floor']:,.0f} req/s; ratio {least:.3f}x"
            + (f", under the {ENDPOINT_GOAL:.2f}x goal on its own" if least < ENDPOINT_GOAL else "")
        )
    return ratio


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def bench_endpoint_http(n: int, repeat: int) -> float:
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    message = noop(a=2, b="y").encode()
    headers = {
        **message.headers,
        "X-CloudTasks-QueueName": "bench",
        "X-CloudTasks-TaskName": "0123456789abcdef",
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
        "X-CloudTasks-TaskETA": "1767225600.0",
        "User-Agent": "Google-Cloud-Tasks",
    }

    def call(url_path: str) -> Callable[[], None]:
        def run() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", url_path, body=message.body, headers=headers)
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status != 200:
                raise RuntimeError(f"{url_path} answered {response.status}")

        return run

    try:
        endpoint, bare = call("/_tasks/"), call("/bare/")
        for _ in range(100):
            endpoint()
            bare()
        best = rounds({"endpoint": endpoint, "bare": bare}, n, repeat)
    finally:
        server.shutdown()
        server.server_close()
    ours, base = best["endpoint"], best["bare"]
    ratio = base / ours
    print(
        f"endpoint over HTTP: {1 / ours:,.0f} req/s; bare Django view: {1 / base:,.0f} req/s; "
        f"ratio {ratio:.3f}x (goal >= {ENDPOINT_GOAL:.2f}x: {verdict(ratio >= ENDPOINT_GOAL)})"
    )
    return ratio


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def main() -> int:
    try:
        call_command("migrate", verbosity=0)  # execution records' tables
        delay_ratio = bench_delay(n=100, repeat=25)
        enqueue_ratio = bench_enqueue(n=100, repeat=25)
        endpoint_ratio = bench_endpoint(
            500, 25, title="endpoint in-process", message=noop(a=2, b="y").encode(), floor=True
        )
        print(f"  (goal >= {ENDPOINT_GOAL:.2f}x: {verdict(endpoint_ratio >= ENDPOINT_GOAL)})")
        http_ratio = bench_endpoint_http(n=50, repeat=25)
        with override_settings(CLOUDTASK={**CLOUDTASK, "RECORDS": True}):
            bench_endpoint(
                200,
                10,
                title="  for information, with execution records (SQLite)",
                message=noop(a=2, b="y").encode(),
            )
        bench_endpoint(
            200,
            10,
            title="  for information, an async def task (WSGI: a loop per delivery)",
            message=async_noop(a=2, b="y").encode(),
        )
    finally:
        EMULATOR_PROC.terminate()
        EMULATOR_PROC.wait(timeout=10)
        _DB_DIR.cleanup()
    ok = (
        delay_ratio <= DELAY_GOAL
        and (enqueue_ratio is None or enqueue_ratio <= DELAY_GOAL)
        and endpoint_ratio >= ENDPOINT_GOAL
        and http_ratio >= ENDPOINT_GOAL
    )
    print("goals met" if ok else "goal missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
