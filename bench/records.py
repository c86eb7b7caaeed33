"""Benchmark execution records: the endpoint with CLOUDTASK["RECORDS"] on against the same
endpoint with them off, on PostgreSQL, measured in one run.

Each delivery runs a no-op task through Django's WSGI handler in-process (the strictest view:
no network or server cost dilutes the records' share) and carries a task id of its own, as
Cloud Tasks' deliveries do, so every delivery with records on claims a new id: an INSERT, then
the UPDATE that settles it. The database connection is persistent (CONN_MAX_AGE), as in any
deployment that cares about its endpoint's throughput; the statements of one delivery are
captured and printed, so a regression in their number shows here.

Rounds alternate between records on and off so drift hits both; the fastest round of each is
reported. Goal: records on >= 0.75x the requests/s of records off.

The database: PostgreSQL at PGHOST:PGPORT (127.0.0.1:5432), user PGUSER (postgres), trust
auth, like the test suite's; a throwaway database is created and dropped.
Run: ``.venv/bin/python bench/records.py``.
"""

from __future__ import annotations

import io
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

GOAL = 0.75

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",  # noqa: S106 - a throwaway key for an in-process benchmark
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    INSTALLED_APPS=["cloudtask"],
    MIDDLEWARE=[],
    ROOT_URLCONF="cloudtask.urls",
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "postgres"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "CONN_MAX_AGE": None,
            "TEST": {"NAME": f"cloudtask_bench_records_{os.getpid()}"},
        }
    },
    LOGGING_CONFIG=None,
    CLOUDTASK={
        "TRANSPORT": "capture",
        "PROJECT": "local-project",
        "LOCATION": "local",
        "URL": "http://127.0.0.1:9/",
        "QUEUE": "bench",
        "SECRET": "bench-secret",
    },
)
django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402

from cloudtask import CloudTaskRequest, records, task  # noqa: E402
from cloudtask.models import TaskExecution  # noqa: E402


@task(name="bench.records.noop")
def noop(request: CloudTaskRequest, a: int = 1, b: str = "x") -> None:
    pass


@contextmanager
def records_on(on: bool) -> Iterator[None]:
    with override_settings(CLOUDTASK={**settings.CLOUDTASK, "RECORDS": on}):
        yield


class Deliveries:
    """Deliveries of one signed no-op call, each under a new task id, to the endpoint."""

    def __init__(self) -> None:
        self.handler = WSGIHandler()
        message = noop(a=2, b="y").encode()
        self.body = message.body
        self.base = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(self.body)),
            "HTTP_X_CLOUDTASKS_QUEUENAME": "bench",
            "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "0",
            "HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT": "0",
            "HTTP_X_CLOUDTASKS_TASKETA": "1767225600.0",
            "HTTP_USER_AGENT": "Google-Cloud-Tasks",
            **{
                "HTTP_" + k.upper().replace("-", "_"): v
                for k, v in message.headers.items()
                if k != "Content-Type"
            },
        }
        self._ids = itertools.count()
        self._prefix = f"b{os.getpid()}-"

    def deliver(self, task_id: str | None = None, retry_count: int = 0) -> str:
        environ = {
            **self.base,
            "wsgi.input": io.BytesIO(self.body),
            "HTTP_X_CLOUDTASKS_TASKNAME": task_id or f"{self._prefix}{next(self._ids)}",
            "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": str(retry_count),
        }
        status: list[str] = []
        response = self.handler(environ, lambda s, h, *exc: status.append(s))  # type: ignore[arg-type]
        b"".join(response)
        response.close()
        return status[0]

    def one(self) -> None:
        status = self.deliver()
        if not status.startswith("200"):
            raise RuntimeError(f"the endpoint answered {status}")


def rounds(n: int, repeat: int, deliveries: Deliveries) -> tuple[float, float]:
    """Seconds per delivery with records on and off, alternating rounds of n deliveries."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for on in (True, False):
            with records_on(on):
                start = time.perf_counter()
                for _ in range(n):
                    deliveries.one()
                times[on].append((time.perf_counter() - start) / n)
    # The fastest round is the least disturbed by other processes on a shared machine.
    return min(times[True]), min(times[False])


def statements(run: Callable[[], Any]) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        run()
    return [q["sql"] for q in captured.captured_queries]


def show_statements(deliveries: Deliveries) -> int:
    """Print the statements of a first delivery, a retry and a duplicate; the first's count."""
    with records_on(True):
        first_id = "bench-statements"
        first = statements(lambda: deliveries.deliver(first_id))
        # A retry of an id whose attempt failed (made "failed" by hand: the no-op cannot fail).
        TaskExecution.objects.filter(task_id=first_id).update(status="failed")
        retry = statements(lambda: deliveries.deliver(first_id, retry_count=1))
        duplicate = statements(lambda: deliveries.deliver(first_id, retry_count=2))
    with records_on(False):
        off = statements(deliveries.one)
    for title, sqls in (
        ("a first delivery (records on)", first),
        ("a retry after a failed attempt", retry),
        ("a duplicate of a succeeded id", duplicate),
        ("any delivery with records off", off),
    ):
        print(f"statements of {title}: {len(sqls)}")
        for sql in sqls:
            print(f"  {sql if len(sql) <= 160 else sql[:157] + '...'}")
    return len(first)


#: The two statements of a first delivery, written by hand (no ORM).
RAW_CLAIM = (
    "INSERT INTO cloudtask_taskexecution (task_id, task_name, queue, status, attempts, "
    "first_started_at, last_started_at, lease_until, return_repr, error_type, error_message, "
    "traceback, errors) VALUES (%s, 'bench.records.noop', 'bench', 'running', 1, now(), now(), "
    "now() + interval '10 minutes', '', '', '', '', '[]') RETURNING id"
)
RAW_FINISH = (
    "UPDATE cloudtask_taskexecution SET status = 'succeeded', finished_at = now(), "
    "duration = 0, lease_until = NULL, return_value = 'null', return_repr = '' WHERE id = %s"
)


def breakdown(n: int = 200, repeat: int = 7) -> None:
    """Where a delivery's records time goes: the ORM, the round trips, the durable commits.
    The variants alternate round by round; the fastest round of each is printed."""
    lease = timedelta(minutes=10)
    ids = itertools.count()
    tag = f"x{os.getpid()}"
    cursor = connection.cursor()

    def orm() -> None:
        held = records.claim(f"{tag}-{next(ids)}", "bench.records.noop", "bench", lease)
        records.finish(held, "succeeded", duration=0.0, value=None)

    def raw() -> None:
        cursor.execute(RAW_CLAIM, [f"{tag}-{next(ids)}"])
        cursor.execute(RAW_FINISH, [cursor.fetchone()[0]])

    def raw_async() -> None:
        cursor.execute("SET synchronous_commit TO off")
        try:
            raw()
        finally:
            cursor.execute("SET synchronous_commit TO on")

    def ping() -> None:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT 1")

    variants: dict[str, Callable[[], None]] = {
        "claim + finish through the ORM, as the endpoint does": orm,
        "the same two statements as raw SQL": raw,
        "the same, synchronous_commit off (+2 SETs)": raw_async,
        "two round trips (SELECT 1)": ping,
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeat):
        for title, run in variants.items():
            start = time.perf_counter()
            for _ in range(n):
                run()
            best[title] = min(best[title], (time.perf_counter() - start) / n)
    cursor.close()
    print(f"where records' time goes (us per delivery, fastest of {repeat} rounds of {n}):")
    for title, seconds in best.items():
        print(f"  {title:<54} {seconds * 1e6:7.0f}")


def main() -> int:
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        deliveries = Deliveries()
        with records_on(True), records_on(False):
            for _ in range(300):  # warm up both paths and the connection
                deliveries.one()
        with records_on(True):
            for _ in range(300):
                deliveries.one()
        per_delivery = show_statements(deliveries)
        on, off = rounds(n=500, repeat=15, deliveries=deliveries)
        rows = TaskExecution.objects.count()
        breakdown()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    ratio = off / on  # requests/s with records on over requests/s with them off
    print(
        f"endpoint, records on: {1 / on:,.0f} req/s ({on * 1e6:.0f} us); records off: "
        f"{1 / off:,.0f} req/s ({off * 1e6:.0f} us); ratio {ratio:.3f}x (goal >= {GOAL:.2f}x); "
        f"{rows:,} records written"
    )
    ok = ratio >= GOAL and per_delivery <= 2
    print("goal met" if ok else "goal missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
