"""Benchmark the transactional outbox (cloudtask/outbox.py) on PostgreSQL.

1. Cost per on-commit task: 1,000 on-commit tasks deferred in one transaction and sent at commit
   by the concurrent flush, with CLOUDTASK["OUTBOX"] on (a row per call, all written together
   in the transaction just before its COMMIT, deleted together after the sends) against OUTBOX
   off (the baseline), rounds alternating. Goal: at most 1.3x (whole transaction, over
   loopback, where the send costs least).
2. A committing request while Cloud Tasks hangs (a TCP line that accepts and never forwards,
   bench/delayline.py held): the request's duration against OUTBOX_FLUSH_TIMEOUT, the bound it
   may wait. Goal: at most the bound plus 10%.
3. The relay draining rows behind a 10 ms round trip (bench/delayline.py): rows/s, against the
   same calls sent by the dispatch pool with no database (send_batch, the baseline).
   Goal: at least 500 rows/s.

Cloud Tasks is the emulator in its own process (its queue paused: nothing is delivered).
PostgreSQL: 127.0.0.1:5432, trust auth (PGHOST, PGPORT, PGUSER, PGDATABASE override), in a
throwaway database dropped at the end. Medians are reported.
Run: ``.venv/bin/python bench/outbox.py``.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
import psycopg
from django.conf import settings
from psycopg import sql

from bench.common import start_emulator
from bench.delayline import DelayLine

N = 1000
COST_GOAL = 1.3
BOUND_GOAL = 1.1
RELAY_GOAL = 500.0
#: Rows the relay drains (four passes of the default 500).
RELAY_ROWS = 2000
#: One-way delay of the remote-API line: 10 ms round trip.
ONE_WAY_DELAY = 0.005
QUEUE = "bench"

PG: dict[str, Any] = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": os.environ.get("PGPORT", "5432"),
    "user": os.environ.get("PGUSER", "postgres"),
}
ADMIN_DB = os.environ.get("PGDATABASE", "test")
BENCH_DB = f"cloudtask_bench_{os.getpid()}"


def admin(statement: sql.Composed) -> None:
    with psycopg.connect(dbname=ADMIN_DB, autocommit=True, **PG) as conn:
        conn.execute(statement)


admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
EMULATOR_PROC, EMULATOR_DIRECT = start_emulator()
REMOTE_LINE = DelayLine(EMULATOR_DIRECT, ONE_WAY_DELAY)
#: Cloud Tasks hung: connections are accepted, nothing ever comes back.
HUNG_LINE = DelayLine(EMULATOR_DIRECT, 0, held=True)

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",  # noqa: S106 - a throwaway process
    USE_TZ=True,
    ALLOWED_HOSTS=["testserver"],
    INSTALLED_APPS=["cloudtask"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": BENCH_DB,
            "HOST": PG["host"],
            "PORT": PG["port"],
            "USER": PG["user"],
            # A request is one transaction, committed when the view returns.
            "ATOMIC_REQUESTS": True,
        }
    },
    LOGGING_CONFIG=None,
    CLOUDTASK={
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": EMULATOR_DIRECT,
        "PROJECT": "local-project",
        "LOCATION": "local",
        "SAE": "bench@local-project.iam.gserviceaccount.com",
        "URL": "http://127.0.0.1:9/_tasks/",
        "QUEUE": QUEUE,
        "SECRET": "bench-secret",
        # Only the measured relay sends rows: no opportunistic background pass.
        "OUTBOX_RELAY_INTERVAL": 0,
    },
)
django.setup()
# Failed sends are logged at ERROR with a traceback (the hung scenario makes 50): keep them out
# of the report.
logging.getLogger("cloudtask").addHandler(logging.NullHandler())
logging.getLogger("cloudtask").propagate = False

from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils import timezone  # noqa: E402

from cloudtask import CloudTaskRequest, TaskHandle, on_commit_task  # noqa: E402
from cloudtask.conf import get_settings  # noqa: E402
from cloudtask.dispatch import get_dispatcher, send_batch  # noqa: E402
from cloudtask.models import OutboxMessage  # noqa: E402
from cloudtask.outbox import RelayResult, relay  # noqa: E402
from cloudtask.transports.cloudtasks import make_client  # noqa: E402


@on_commit_task(name="bench.outbox.deferred")
def deferred(request: CloudTaskRequest, i: int, label: str = "x") -> None:
    pass


def commit_view(request: HttpRequest) -> HttpResponse:
    """A request that defers ten task calls; ATOMIC_REQUESTS commits them after it returns."""
    handles = [deferred(i, label="request").delay() for i in range(10)]
    return HttpResponse(str(len(handles)))


urlpatterns = [path("commit/", commit_view)]

PARENT = f"projects/local-project/locations/local/queues/{QUEUE}"
CLIENT = make_client(EMULATOR_DIRECT)


@contextmanager
def cloudtask(**overrides: Any) -> Iterator[None]:
    with override_settings(CLOUDTASK={**settings.CLOUDTASK, **overrides}):
        yield


def purge() -> None:
    CLIENT.purge_queue(name=PARENT)


# -- 1. outbox cost per on-commit task --------------------------------------------------------


def one_transaction(count: int) -> tuple[float, float, float]:
    """Seconds of the whole transaction, of its commit, and the CPU seconds this process spent
    on it (every thread: the pool's too); every call must have been sent."""
    cpu = time.process_time()
    start = time.perf_counter()
    with transaction.atomic():
        handles = [deferred(i, label="bench").delay() for i in range(count)]
        commit_start = time.perf_counter()
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    if any(h.state != "sent" for h in handles):
        states = sorted({h.state for h in handles})
        raise RuntimeError(f"not every task was sent at commit: {states}")
    if OutboxMessage.objects.exists():
        raise RuntimeError("rows were left in the outbox")
    purge()
    return end - start, end - commit_start, cpu


def cost(title: str, host: str, rounds: int) -> float:
    """Median whole-transaction time, commit time and CPU time, outbox on and off; the
    whole-transaction ratio (on / off)."""
    times: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(rounds):
        for outbox in (True, False):
            # A generous bound, so that both wait for every send (the comparison is per task).
            with cloudtask(EMULATOR_HOST=host, OUTBOX=outbox, OUTBOX_FLUSH_TIMEOUT=60.0):
                one_transaction(50)  # warm up the new channel
                times[outbox].append(one_transaction(N))
    on = [statistics.median(t[i] for t in times[True]) for i in range(3)]
    off = [statistics.median(t[i] for t in times[False]) for i in range(3)]
    ratio = on[0] / off[0]
    print(f"{title} (median of {rounds} rounds each)")
    for label, (total, commit, cpu) in (("outbox on: ", on), ("outbox off:", off)):
        print(
            f"  {label} transaction {total * 1000:,.0f} ms ({total / N * 1e6:,.0f} us/task), "
            f"commit {commit * 1000:,.0f} ms, CPU {cpu / N * 1e6:,.0f} us/task"
        )
    # Each round's pair (outbox on, then off, back to back): how much one round can vary on a
    # busy machine, which the medians above smooth.
    pairs = sorted(a[0] / b[0] for a, b in zip(times[True], times[False], strict=True))
    print(
        f"  outbox cost: {ratio:.2f}x whole transaction (+{(on[0] - off[0]) / N * 1e6:,.0f} "
        f"us/task), {on[1] / off[1]:.2f}x commit, {on[2] / off[2]:.2f}x CPU; "
        f"round by round {pairs[0]:.2f}x to {pairs[-1]:.2f}x"
    )
    return ratio


# -- 2. a committing request while Cloud Tasks hangs ------------------------------------------


def request_durations(rounds: int) -> list[float]:
    client = Client()
    durations = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.post("/commit/")
        durations.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"the request failed: {response.status_code}")
    return durations


def hung(rounds: int) -> float:
    """Median request duration with Cloud Tasks hung, over the bound (the worst is printed
    too: on a busy machine it also measures the scheduler)."""
    bound = get_settings().outbox_flush_timeout
    with cloudtask(EMULATOR_HOST=EMULATOR_DIRECT):
        request_durations(2)
        healthy = statistics.median(request_durations(rounds))
    OutboxMessage.objects.all().delete()
    with cloudtask(EMULATOR_HOST=HUNG_LINE.address):
        durations = request_durations(rounds)
        left = OutboxMessage.objects.count()
    # Leaving the setting closed the hung channel: the sends in flight end, as failures
    # recorded on their rows; let them settle before clearing the table.
    deadline = time.monotonic() + 30
    while OutboxMessage.objects.filter(attempts=0).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    OutboxMessage.objects.all().delete()
    purge()
    median, worst = statistics.median(durations), max(durations)
    print(f"a request committing 10 on-commit tasks (median of {rounds})")
    print(f"  Cloud Tasks answering: {healthy * 1000:,.0f} ms")
    print(
        f"  Cloud Tasks hung: {median * 1000:,.0f} ms (worst {worst * 1000:,.0f} ms) against "
        f"OUTBOX_FLUSH_TIMEOUT {bound * 1000:,.0f} ms: {median / bound:.3f}x the bound "
        f"(worst {worst / bound:.3f}x); {left} rows left for the relay"
    )
    return median / bound


# -- 3. relay drain behind a 10 ms round trip -------------------------------------------------


def write_rows(count: int) -> None:
    """count committed rows, as deferred calls write them, made due at once."""
    dispatcher = get_dispatcher()
    handles = [TaskHandle(deferred(i, label="relay").encode()) for i in range(count)]
    with transaction.atomic():
        for handle in handles:
            dispatcher.prepare(handle, "default")
        dispatcher.write(handles, "default")
    OutboxMessage.objects.update(next_attempt_at=timezone.now())


def drain() -> tuple[float, RelayResult]:
    total = RelayResult()
    start = time.perf_counter()
    while True:
        result = relay(aliases=["default"])
        total += result
        if not (result.sent or result.failed or result.duplicates):
            break
    elapsed = time.perf_counter() - start
    if total.sent != RELAY_ROWS or total.failed or total.duplicates or total.skipped:
        raise RuntimeError(f"the relay did not send every row once: {total}")
    return elapsed, total


def pool_send() -> float:
    """The baseline: the same number of calls, with task ids, sent by the dispatch pool."""
    messages = [
        (deferred(i, label="relay").encode(task_id=uuid.uuid4().hex), None, None)
        for i in range(RELAY_ROWS)
    ]
    start = time.perf_counter()
    handles = send_batch(messages)
    elapsed = time.perf_counter() - start
    if any(h.state != "sent" for h in handles):
        raise RuntimeError("the baseline did not send every call")
    return elapsed


def relay_rate(rounds: int) -> float:
    relayed, pooled = [], []
    with cloudtask(EMULATOR_HOST=REMOTE_LINE.address):
        pool_send()  # warm up the channel
        purge()
        for _ in range(rounds):
            write_rows(RELAY_ROWS)
            elapsed, _ = drain()
            relayed.append(elapsed)
            purge()
            pooled.append(pool_send())
            purge()
    relay_s, pool_s = statistics.median(relayed), statistics.median(pooled)
    rate, base = RELAY_ROWS / relay_s, RELAY_ROWS / pool_s
    workers = get_settings().on_commit_workers
    print(
        f"relay draining {RELAY_ROWS:,} rows behind a {ONE_WAY_DELAY * 2000:.0f} ms round trip "
        f"(median of {rounds}, {workers} workers)"
    )
    print(f"  relay: {relay_s * 1000:,.0f} ms, {rate:,.0f} rows/s")
    print(f"  dispatch pool, no database: {pool_s * 1000:,.0f} ms, {base:,.0f} calls/s")
    print(f"  relay at {rate / base:.2f}x the pool's rate")
    return rate


def verdict(label: str, met: bool) -> None:
    print(f"goal {label}: {'met' if met else 'missed'}")


def main() -> int:
    CLIENT.create_queue(parent=PARENT.rsplit("/queues/", 1)[0], queue={"name": PARENT})
    CLIENT.pause_queue(name=PARENT)
    call_command("migrate", verbosity=0)
    results: list[tuple[str, Callable[[], bool]]] = []
    try:
        print(f"{N} on-commit tasks in one transaction, sent at commit, on PostgreSQL")
        # Nine rounds: a round is under a second, and other work on the machine moves single
        # rounds by a third either way.
        loopback = cost(
            "emulator over loopback (no network latency; CPU-bound)", EMULATOR_DIRECT, 9
        )
        cost(
            f"emulator behind a {ONE_WAY_DELAY * 2000:.0f} ms round trip (a remote API)",
            REMOTE_LINE.address,
            3,
        )
        bound = hung(9)
        rate = relay_rate(3)
        results = [
            (f"outbox cost <= {COST_GOAL}x (loopback)", lambda: loopback <= COST_GOAL),
            (f"hung commit <= {BOUND_GOAL}x the bound (median)", lambda: bound <= BOUND_GOAL),
            (f"relay >= {RELAY_GOAL:.0f} rows/s", lambda: rate >= RELAY_GOAL),
        ]
    finally:
        connections.close_all()
        REMOTE_LINE.close()
        HUNG_LINE.close()
        EMULATOR_PROC.terminate()
        EMULATOR_PROC.wait(timeout=10)
        admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
    for label, met in results:
        verdict(label, met())
    return 0


if __name__ == "__main__":
    sys.exit(main())
