"""Fixtures for the emulator tests: a started Emulator, its real client, and an HTTP target."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud import tasks_v2

from cloudtask.emulator import Emulator, ManualClock


@dataclass
class Reply:
    """A scripted answer: status, extra headers, and optionally an event to wait for first."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    wait: threading.Event | None = None
    body: bytes = b"ok"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # as sent (original case)
    body: bytes
    at: float  # time.monotonic() on arrival

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class Target:
    """A threaded HTTP/1.1 (keep-alive) server that records requests and answers as scripted."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.active = 0  # requests being answered now
        self.peak = 0  # most requests ever answered at once
        self._scripts: dict[str, list[Reply]] = {}
        self._cond = threading.Condition()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm and
                # the client's delayed ACK add 40 ms to every keep-alive response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path
                with target._cond:
                    target.received.append(
                        Received(
                            self.command, path, dict(self.headers.items()), body, time.monotonic()
                        )
                    )
                    target._cond.notify_all()
                    script = target._scripts.get(path.split("?", 1)[0])
                    reply = (script.pop(0) if len(script) > 1 else script[0]) if script else Reply()
                    target.active += 1
                    target.peak = max(target.peak, target.active)
                try:
                    if reply.wait is not None:
                        reply.wait.wait(60)
                finally:
                    with target._cond:
                        target.active -= 1
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str = "/task") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def script(self, path: str, *replies: Reply | int) -> None:
        """Answer requests to ``path`` with ``replies`` in order; the last one repeats."""
        with self._cond:
            self._scripts[path] = [r if isinstance(r, Reply) else Reply(r) for r in replies]

    def wait_for(
        self, count: int, timeout: float = 10.0, path: str | None = None
    ) -> list[Received]:
        """Block until ``count`` requests (to ``path``, if given) arrived; return them."""

        def matching() -> list[Received]:
            return [r for r in self.received if path is None or r.path.split("?")[0] == path]

        with self._cond:
            ok = self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            assert ok, f"expected {count} requests, got {len(matching())}: {self.received}"
            return matching()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.005)


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(queues=["default"], log=None) as emu:
        yield emu


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def manual_emulator(manual_clock: ManualClock) -> Iterator[Emulator]:
    with Emulator(queues=["default"], log=None, clock=manual_clock) as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> tasks_v2.CloudTasksClient:
    return emulator.client()


@pytest.fixture
def queue(emulator: Emulator) -> str:
    return emulator.ensure_queue("default")
