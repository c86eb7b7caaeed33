"""Benchmark the embedded Cloud Tasks emulator.

1. create_task calls/s through the real google-cloud-tasks client (queue paused, so nothing
   is delivered meanwhile), from one thread and from four.
2. Dispatches/s on one queue to a trivial HTTP/1.1 keep-alive target running in a subprocess
   (so it uses the other core). The queue has Google's default rate limits, whose 500/s cap
   (burst 100) is the ceiling a real queue has too: the figure shows whether the emulator keeps
   up with it. Goal: >= 500 dispatches/s.
3. The same with four queues at once, to show the emulator's headroom above one queue's cap.

Bounded in time (about 30 s). Run: ``.venv/bin/python bench/emulator.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudtask.emulator import Emulator

CREATE_SECONDS = 2.0
DISPATCH_TASKS = 3000
TIMEOUT = 30.0

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Target(asyncio.Protocol):
    """Answers every request 200 on a keep-alive connection (bodies counted via Content-Length)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_RESPONSE)  # type: ignore[attr-defined]


def serve_target() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Target, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(TIMEOUT * 3)

    asyncio.run(main())


def start_target() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, __file__, "--target"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}/task"


def bench_create(emu: Emulator, url: str, threads: int) -> float:
    client = emu.client()
    queue = emu.ensure_queue(f"create-{threads}")
    client.pause_queue(name=queue)
    counts = [0] * threads
    stop = time.perf_counter() + CREATE_SECONDS
    request = {"parent": queue, "task": {"http_request": {"url": url, "body": b'{"v": 1}'}}}

    def run(index: int) -> None:
        while time.perf_counter() < stop:
            client.create_task(request=request)
            counts[index] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = sum(counts) / (time.perf_counter() - started)
    client.purge_queue(name=queue)
    return rate


def bench_dispatch(emu: Emulator, url: str, queues: int, per_queue: int) -> tuple[float, int]:
    client = emu.client()
    names = [emu.ensure_queue(f"dispatch-{queues}-{i}") for i in range(queues)]
    for name in names:
        client.pause_queue(name=name)
    request = {"http_request": {"url": url, "body": b'{"v": 1}'}}
    for name in names:
        for _ in range(per_queue):
            client.create_task(request={"parent": name, "task": request})
    before = len(emu.dispatches)
    started = time.perf_counter()
    for name in names:
        client.resume_queue(name=name)
    if not emu.wait_idle(TIMEOUT):
        print(f"  (stopped waiting after {TIMEOUT:g} s)")
    elapsed = time.perf_counter() - started
    records = emu.dispatches[before:]
    ok = sum(1 for r in records if r.status == 200)
    return ok / elapsed, ok


def main() -> int:
    target, url = start_target()
    try:
        with Emulator(log=None) as emu:
            for threads in (1, 4):
                rate = bench_create(emu, url, threads)
                print(f"create_task, real client, {threads} thread(s): {rate:8.0f} calls/s")
            rate, ok = bench_dispatch(emu, url, 1, DISPATCH_TASKS)
            verdict = "ok" if rate >= 500 else "BELOW GOAL"
            print(
                f"dispatches, one queue (limits 500/s, burst 100): {rate:8.0f} /s "
                f"({ok} tasks; goal >= 500: {verdict})"
            )
            rate, ok = bench_dispatch(emu, url, 4, DISPATCH_TASKS // 2)
            print(f"dispatches, four queues at once: {rate:8.0f} /s ({ok} tasks)")
    finally:
        target.terminate()
        target.wait()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--target"]:
        serve_target()
    else:
        sys.exit(main())
