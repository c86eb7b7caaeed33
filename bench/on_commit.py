"""Benchmark on-commit dispatch: 1,000 task calls deferred in one transaction, sent at commit.

Subject: cloudtask's commit-time flush, which sends the transaction's calls concurrently on
CLOUDTASK["ON_COMMIT_WORKERS"] threads over the one client and waits for all of them.
Baseline, in the same run: the naive design, one transaction.on_commit callback per call, each
sending its call when Django runs it, one after another.

Both go over gRPC to the same emulator, run in its own process as Cloud Tasks is a separate
service (queue paused, so deliveries do not compete for the CPU), on a SQLite database; rounds
alternate so drift hits both; medians are reported.
Goal: the commit at least 5x faster than one-by-one. Run: ``.venv/bin/python bench/on_commit.py``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

from bench.common import start_emulator
from bench.delayline import DelayLine

N = 1000
ROUNDS = 5
GOAL = 5.0


EMULATOR_PROC, EMULATOR_DIRECT = start_emulator()
#: One-way delay the second scenario adds between the app and the emulator.
ONE_WAY_DELAY = 0.005
DELAY_LINE = DelayLine(EMULATOR_DIRECT, ONE_WAY_DELAY)
EMULATOR_REMOTE = DELAY_LINE.address
_DB_DIR = tempfile.TemporaryDirectory(prefix="cloudtask-bench-")
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",  # noqa: S106 - a throwaway process
    USE_TZ=True,
    INSTALLED_APPS=["cloudtask"],
    DATABASES={
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{_DB_DIR.name}/bench.db"}
    },
    LOGGING_CONFIG=None,
    CLOUDTASK={
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": EMULATOR_DIRECT,
        "PROJECT": "local-project",
        "LOCATION": "local",
        "SAE": "bench@local-project.iam.gserviceaccount.com",
        "URL": "http://127.0.0.1:9/_tasks/",
        "QUEUE": "bench",
        "SECRET": "bench-secret",
        # The commit waits for every send (by default it leaves the slow ones to the outbox
        # relay after a second): the figure is the time to get all 1,000 into Cloud Tasks.
        "OUTBOX_FLUSH_TIMEOUT": 60.0,
    },
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from cloudtask import CloudTaskRequest, TaskHandle, on_commit_task, task  # noqa: E402
from cloudtask.conf import get_settings  # noqa: E402
from cloudtask.dispatch import send  # noqa: E402
from cloudtask.transports import get_transport  # noqa: E402
from cloudtask.transports.cloudtasks import make_client  # noqa: E402


@on_commit_task(name="bench.on_commit")
def deferred(request: CloudTaskRequest, i: int, label: str = "x") -> None:
    pass


@task(name="bench.plain")
def plain(request: CloudTaskRequest, i: int, label: str = "x") -> None:
    pass


def concurrent_round() -> tuple[float, float, list[TaskHandle]]:
    start = time.perf_counter()
    with transaction.atomic():
        handles = [deferred(i, label="bench").delay() for i in range(N)]
        commit_start = time.perf_counter()
    end = time.perf_counter()
    return end - commit_start, end - start, handles


def one_by_one_round() -> tuple[float, float, list[TaskHandle]]:
    start = time.perf_counter()
    with transaction.atomic():
        handles: list[TaskHandle] = []
        for i in range(N):
            call = plain(i, label="bench")
            handle = TaskHandle(call.encode(), call=call, sender=call.task)
            handles.append(handle)
            transaction.on_commit(lambda h=handle: send(h))  # type: ignore[misc]
        commit_start = time.perf_counter()
    end = time.perf_counter()
    return end - commit_start, end - start, handles


def scenario(title: str, emulator_host: str, rounds: int) -> float:
    """Median commit times of both designs against emulator_host; returns the speed-up."""
    cloudtask = {**settings.CLOUDTASK, "EMULATOR_HOST": emulator_host}
    with override_settings(CLOUDTASK=cloudtask):
        transport: Any = get_transport()
        parent = transport.parent("bench")
        client = make_client(emulator_host)

        def run(fn: Callable[[], tuple[float, float, list[TaskHandle]]]) -> tuple[float, float]:
            commit, total, handles = fn()
            unsent = [h for h in handles if h.state != "sent"]
            if unsent:
                raise RuntimeError(
                    f"{fn.__name__}: {len(unsent)} of {len(handles)} tasks not sent; "
                    f"the first is {unsent[0].state}: {unsent[0].error!r}"
                )
            client.purge_queue(name=parent)
            return commit, total

        run(concurrent_round)  # warm up both paths and the channel
        run(one_by_one_round)
        ours_commit, ours_total, base_commit, base_total = [], [], [], []
        for _ in range(rounds):
            commit, total = run(concurrent_round)
            ours_commit.append(commit)
            ours_total.append(total)
            commit, total = run(one_by_one_round)
            base_commit.append(commit)
            base_total.append(total)
        workers = get_settings().on_commit_workers

    oc, ot = statistics.median(ours_commit), statistics.median(ours_total)
    bc, bt = statistics.median(base_commit), statistics.median(base_total)
    ratio = bc / oc
    print(f"{title} (median of {rounds} rounds)")
    print(
        f"  concurrent flush ({workers} workers): commit {oc * 1000:,.0f} ms "
        f"({N / oc:,.0f} tasks/s); whole transaction {ot * 1000:,.0f} ms"
    )
    print(
        f"  one-by-one on_commit callbacks:  commit {bc * 1000:,.0f} ms "
        f"({N / bc:,.0f} tasks/s); whole transaction {bt * 1000:,.0f} ms"
    )
    print(f"  commit speed-up {ratio:.2f}x; whole transaction {bt / ot:.2f}x")
    return ratio


def main() -> int:
    client = make_client(EMULATOR_DIRECT)
    parent = "projects/local-project/locations/local/queues/bench"
    client.create_queue(parent=parent.rsplit("/queues/", 1)[0], queue={"name": parent})
    client.pause_queue(name=parent)
    # cloudtask's own tables (the transactional outbox) in the throwaway database.
    call_command("migrate", verbosity=0)
    connection.ensure_connection()
    print(f"{N} on-commit tasks deferred in one transaction, sent at commit")
    try:
        scenario("emulator over loopback (no network latency; CPU-bound)", EMULATOR_DIRECT, 5)
        remote = scenario(
            f"emulator behind a {ONE_WAY_DELAY * 2000:.0f} ms round trip (a remote API)",
            EMULATOR_REMOTE,
            3,
        )
    finally:
        DELAY_LINE.close()
        EMULATOR_PROC.terminate()
        EMULATOR_PROC.wait(timeout=10)
        _DB_DIR.cleanup()
    print(f"goal (>= {GOAL:.0f}x with a network between app and API): ", end="")
    print("met" if remote >= GOAL else "missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
