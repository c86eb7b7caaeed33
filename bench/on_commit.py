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

import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

from bench.common import start_emulator

N = 1000
ROUNDS = 5
GOAL = 5.0


class DelayProxy:
    """A TCP delay line: every byte reaches the other side `delay` seconds later, in order.

    It models the network between an app and a remote API (the loopback has none), without
    limiting throughput: many calls can be in flight at once, as on a real connection.
    """

    def __init__(self, target: str, delay: float) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.address = ""

        async def serve() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
            ready.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True).start()
        ready.wait()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                if not data:
                    writer.close()
                    return
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        while True:
            data = await reader.read(65536)
            line.put_nowait((self.loop.time() + self.delay, data))
            if not data:
                break
        await sender


EMULATOR_PROC, EMULATOR_DIRECT = start_emulator()
#: One-way delay the second scenario adds between the app and the emulator.
ONE_WAY_DELAY = 0.005
EMULATOR_REMOTE = DelayProxy(EMULATOR_DIRECT, ONE_WAY_DELAY).address
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
        "BACKEND": "cloudtasks",
        "EMULATOR_HOST": EMULATOR_DIRECT,
        "PROJECT": "local-project",
        "LOCATION": "local",
        "SAE": "bench@local-project.iam.gserviceaccount.com",
        "URL": "http://127.0.0.1:9/_tasks/",
        "QUEUE": "bench",
        "SECRET": "bench-secret",
    },
)
django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from cloudtask import CloudTaskRequest, TaskHandle, on_commit_task, task  # noqa: E402
from cloudtask.backends import get_backend  # noqa: E402
from cloudtask.backends.cloudtasks import make_client  # noqa: E402
from cloudtask.conf import get_settings  # noqa: E402
from cloudtask.tasks import send  # noqa: E402


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
            handle = TaskHandle(call, call.encode())
            handles.append(handle)
            transaction.on_commit(lambda h=handle: send(h))  # type: ignore[misc]
        commit_start = time.perf_counter()
    end = time.perf_counter()
    return end - commit_start, end - start, handles


def scenario(title: str, emulator_host: str, rounds: int) -> float:
    """Median commit times of both designs against emulator_host; returns the speed-up."""
    cloudtask = {**settings.CLOUDTASK, "EMULATOR_HOST": emulator_host}
    with override_settings(CLOUDTASK=cloudtask):
        backend: Any = get_backend()
        parent = backend.parent("bench")
        client = make_client(emulator_host)

        def run(fn: Callable[[], tuple[float, float, list[TaskHandle]]]) -> tuple[float, float]:
            commit, total, handles = fn()
            if any(h.state != "sent" for h in handles):
                raise RuntimeError(f"{fn.__name__}: not every task was sent")
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
        EMULATOR_PROC.terminate()
        EMULATOR_PROC.wait(timeout=10)
        _DB_DIR.cleanup()
    print(f"goal (>= {GOAL:.0f}x with a network between app and API): ", end="")
    print("met" if remote >= GOAL else "missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
