"""Benchmark sending many calls at once behind a network: adelay() under asyncio.gather, and
cloudtask.send_many(), against the same calls sent one by one with .delay().

1. 1,000 ``await call.adelay()`` under ``asyncio.gather`` on one event loop (the async gRPC
   client, every call in flight at once). Goal: at least 10x faster than the baseline.
2. ``cloudtask.send_many()`` of 1,000 calls (the dispatch pool, CLOUDTASK["ON_COMMIT_WORKERS"]
   threads over the one sync client). Goal: at least 5x faster than the baseline.

Baseline, in the same run: 1,000 sequential ``.delay()`` calls. Everything goes through the
same 10 ms round-trip TCP delay line (bench/delayline.py, the network between an app and a
remote API) to the same emulator, run in its own process as Cloud Tasks is a separate service,
its queue paused (no deliveries compete for the CPU) and emptied after each round. Rounds
alternate so drift hits all three; medians are reported.
Run: ``.venv/bin/python bench/async_send.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

from bench.common import start_emulator
from bench.delayline import DelayLine

N = 1000
ROUNDS = 3
#: One-way delay of the line: a 10 ms round trip.
ONE_WAY_DELAY = 0.005
GATHER_GOAL = 10.0
SEND_MANY_GOAL = 5.0
QUEUE = "bench-async"

EMULATOR_PROC, EMULATOR_DIRECT = start_emulator()
LINE = DelayLine(EMULATOR_DIRECT, ONE_WAY_DELAY)
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",  # noqa: S106 - a throwaway process
    USE_TZ=True,
    INSTALLED_APPS=["cloudtask"],
    DATABASES={},
    LOGGING_CONFIG=None,
    CLOUDTASK={
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": LINE.address,
        "PROJECT": "local-project",
        "LOCATION": "local",
        "SAE": "bench@local-project.iam.gserviceaccount.com",
        "URL": "http://127.0.0.1:9/_tasks/",
        "QUEUE": QUEUE,
        "SECRET": "bench-secret",
    },
)
django.setup()

from cloudtask import CloudTaskRequest, TaskHandle, send_many, task  # noqa: E402
from cloudtask.conf import get_settings  # noqa: E402
from cloudtask.transports import BaseTransport, get_transport  # noqa: E402
from cloudtask.transports.cloudtasks import make_client  # noqa: E402


@task(name="bench.async_send")
def noop(request: CloudTaskRequest, i: int, label: str = "x") -> None:
    pass


def sequential_delay() -> list[TaskHandle]:
    return [noop(i, label="bench").delay() for i in range(N)]


async def _gather(n: int = N) -> list[TaskHandle]:
    return await asyncio.gather(*(noop(i, label="bench").adelay() for i in range(n)))


def bulk_send_many() -> list[TaskHandle]:
    return send_many(noop(i, label="bench") for i in range(N))


def main() -> int:
    # Administration goes straight to the emulator; only the measured calls cross the line.
    admin = make_client(EMULATOR_DIRECT)
    parent = f"projects/local-project/locations/local/queues/{QUEUE}"
    admin.create_queue(parent=parent.rsplit("/queues/", 1)[0], queue={"name": parent})
    admin.pause_queue(name=parent)
    # One loop for every gather round: the async client (and its channel) is made once per
    # loop, as in a long-running ASGI server.
    loop = asyncio.new_event_loop()

    def gather_adelay() -> list[TaskHandle]:
        return loop.run_until_complete(_gather())

    subjects: list[tuple[str, Callable[[], list[TaskHandle]]]] = [
        ("sequential .delay()", sequential_delay),
        ("adelay() under gather", gather_adelay),
        ("send_many()", bulk_send_many),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in subjects}

    def run(name: str, fn: Callable[[], list[TaskHandle]]) -> float:
        start = time.perf_counter()
        handles = fn()
        elapsed = time.perf_counter() - start
        unsent = [h for h in handles if h.state != "sent"]
        if len(handles) != N or unsent:
            raise RuntimeError(f"{name}: {len(unsent)} of {len(handles)} calls not sent")
        admin.purge_queue(name=parent)
        return elapsed

    try:
        # Warm up every path: channels connected, the pool's threads started.
        for _ in range(20):
            noop(0).delay()
        loop.run_until_complete(_gather(20))
        send_many(noop(0) for _ in range(20))
        admin.purge_queue(name=parent)

        for _ in range(ROUNDS):
            for name, fn in subjects:
                times[name].append(run(name, fn))
        workers = get_settings().on_commit_workers
        # A transport that overrides aenqueue() awaits the network natively; the base class's
        # runs enqueue() in a worker thread.
        native_async = type(get_transport()).aenqueue is not BaseTransport.aenqueue
    finally:
        loop.close()
        LINE.close()
        EMULATOR_PROC.terminate()
        EMULATOR_PROC.wait(timeout=10)

    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["sequential .delay()"]
    print(
        f"{N} calls over a {ONE_WAY_DELAY * 2000:.0f} ms round trip to the emulator "
        f"(median of {ROUNDS} rounds)"
    )
    print(f"  sequential .delay():     {base * 1000:8,.0f} ms ({N / base:7,.0f} calls/s)")
    gather = median["adelay() under gather"]
    gather_ratio = base / gather
    print(
        f"  adelay() under gather:   {gather * 1000:8,.0f} ms ({N / gather:7,.0f} calls/s); "
        f"{gather_ratio:.1f}x faster (goal >= {GATHER_GOAL:.0f}x: "
        f"{'met' if gather_ratio >= GATHER_GOAL else 'missed'}; "
        f"{'native async client' if native_async else 'enqueue() in threads'})"
    )
    bulk = median["send_many()"]
    bulk_ratio = base / bulk
    print(
        f"  send_many():             {bulk * 1000:8,.0f} ms ({N / bulk:7,.0f} calls/s); "
        f"{bulk_ratio:.1f}x faster (goal >= {SEND_MANY_GOAL:.0f}x: "
        f"{'met' if bulk_ratio >= SEND_MANY_GOAL else 'missed'}; {workers} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
