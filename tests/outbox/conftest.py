"""Fixtures for the outbox fault tests: real parts only.

* ``emulator``: the in-process Cloud Tasks emulator, delivering to a live Django server.
* ``black_hole``: a TCP server that accepts connections and never answers (a hung API).
* ``create_calls``: every CreateTask the emulator receives, counted by task id; it can also
  make the server answer UNAVAILABLE, or answer late, which no real part does on demand.
* ``child``: a second process on the same test database (tests/outbox/fault_child.py).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone
from google.cloud import tasks_v2

from cloudtask import signals
from cloudtask.emulator import Emulator
from cloudtask.emulator.state import ApiError, TaskRecord
from cloudtask.models import OutboxMessage
from tests.models import Order
from tests.oncommit.jobs import DELIVERIES, Deliveries
from tests.waiting import poll

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = dict(django_settings.CLOUDTASK)
#: Bound of every wait in these tests (seconds): generous, never reached when all is well.
WAIT = 20.0


def wait_for(condition: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """condition()'s first truthy value, polled until timeout (for state with no event to wait
    on: rows in the database, another process's progress)."""
    return poll(condition, timeout, what, interval=0.01)


def make_due(using: str = "default") -> int:
    """Make every outbox row due now, as time passing would (the relay leaves a fresh row to
    its committing process until its send surely ended, and a failed one backs off)."""
    past = timezone.now() - timedelta(seconds=1)
    return OutboxMessage.objects.using(using).update(next_attempt_at=past)


# -- Cloud Tasks: working, stopped, hung -------------------------------------------------------


def create_queue(emulator: Emulator) -> None:
    """The tasks' queue, delivering 4 at a time, retrying within a second: deliveries write
    execution records, and SQLite serializes writers; the tests count what ran, not attempts."""
    emulator.client().create_queue(
        parent=f"projects/{emulator.project}/locations/{emulator.location}",
        queue=tasks_v2.Queue(
            name=emulator.queue_path(BASE["QUEUE"]),
            rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=4),
            retry_config=tasks_v2.RetryConfig(max_backoff=timedelta(seconds=1)),
        ),
    )


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with Emulator(auto_create_queues=True, log=None) as emu:
        create_queue(emu)
        yield emu


@pytest.fixture
def deliveries() -> Iterator[Deliveries]:
    """What tests/oncommit/jobs.py's tasks were delivered (in this process's live server)."""
    DELIVERIES.clear()
    yield DELIVERIES
    DELIVERIES.clear()


class BlackHole:
    """A listening TCP socket that accepts every connection and never answers: Cloud Tasks
    hung. A gRPC call to it waits until its deadline or until its channel is closed."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._connections: list[socket.socket] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._cond:
                self._connections.append(conn)
                self._cond.notify_all()

    @property
    def accepted(self) -> int:
        with self._cond:
            return len(self._connections)

    def wait_accepted(self, count: int = 1, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._connections) >= count, timeout):
                raise AssertionError(f"{len(self._connections)} connections, not {count}")

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self._server.close()
        self._thread.join(timeout=5)
        with self._cond:
            for conn in self._connections:
                conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


class Configure:
    """Sets CLOUDTASK for the test: the cloudtasks transport over gRPC to ``host``, delivering
    to the live server; overrides given once are kept when the host is switched later."""

    def __init__(self, settings: Any, url: str) -> None:
        self._settings = settings
        self._url = url
        self._overrides: dict[str, Any] = {}

    def __call__(self, host: str, **overrides: Any) -> None:
        self._overrides.update(overrides)
        self._settings.CLOUDTASK = {
            **BASE,
            "TRANSPORT": "cloudtasks",
            "EMULATOR_HOST": host,
            "PROJECT": "local-project",
            "LOCATION": "local",
            "URL": self._url,
            # The tests run the relay themselves: no background pass may race them.
            "OUTBOX_RELAY_INTERVAL": 0,
            **self._overrides,
        }

    @property
    def current(self) -> dict[str, Any]:
        return dict(self._settings.CLOUDTASK)


@pytest.fixture
def configure(settings: Any, live_server: Any) -> Configure:
    return Configure(settings, str(live_server.url) + "/_tasks/")


@pytest.fixture
def emulator(
    running_emulator: Emulator, configure: Configure, deliveries: Deliveries
) -> Iterator[Emulator]:
    """The working emulator, configured; nothing it holds may reach the next test."""
    configure(running_emulator.address)
    yield running_emulator
    assert running_emulator.wait_idle(timeout=WAIT)


# -- observing (and faulting) CreateTask on the server side ------------------------------------

#: A server-side fault: (the real Store.create_task, parent, task) -> the created record.
Fault = Callable[[Callable[[str, tasks_v2.Task], TaskRecord], str, tasks_v2.Task], TaskRecord]


class CreateCalls:
    """Every CreateTask the emulator received, by task id (a generated one counts as "")."""

    def __init__(self, emulator: Emulator) -> None:
        self._real = emulator.store.create_task
        self.by_id: Counter[str] = Counter()
        self._faults: deque[Fault] = deque()
        self._cond = threading.Condition()

    def __call__(self, parent: str, task: tasks_v2.Task) -> TaskRecord:
        name: str = tasks_v2.Task.pb(task).name
        with self._cond:
            self.by_id[name.rsplit("/", 1)[-1] if name else ""] += 1
            self._cond.notify_all()
            fault = self._faults.popleft() if self._faults else None
        if fault is None:
            return self._real(parent, task)
        return fault(self._real, parent, task)

    def inject(self, fault: Fault) -> None:
        """The next CreateTask suffers fault (faults queue up, one per call)."""
        with self._cond:
            self._faults.append(fault)

    def wait(self, task_id: str, count: int, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.by_id[task_id] >= count, timeout):
                raise AssertionError(f"{self.by_id[task_id]} CreateTask for {task_id}, not {count}")

    @property
    def total(self) -> int:
        with self._cond:
            return sum(self.by_id.values())


def unavailable(
    real: Callable[[str, tasks_v2.Task], TaskRecord], parent: str, task: tasks_v2.Task
) -> TaskRecord:
    """Cloud Tasks refusing one call: UNAVAILABLE, as a front end being restarted answers."""
    raise ApiError(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")


def answers_after_retry(calls: CreateCalls) -> Fault:
    """Cloud Tasks creating the task, then answering only after the client gave up (its
    deadline passed) and sent the call again: the answer of the first attempt is lost."""

    def fault(
        real: Callable[[str, tasks_v2.Task], TaskRecord], parent: str, task: tasks_v2.Task
    ) -> TaskRecord:
        record = real(parent, task)
        task_id = tasks_v2.Task.pb(task).name.rsplit("/", 1)[-1]
        calls.wait(task_id, 2)
        return record

    return fault


def rows_at_each_send(
    calls: CreateCalls, count: int, aliases: tuple[str, ...] = ("default",)
) -> list[dict[str, set[str | None]]]:
    """For each of the next count CreateTask calls, the outbox rows (task ids, per database)
    that another connection sees while Cloud Tasks handles it: what was committed before the
    send, read from the emulator's own thread while the committing thread waits on it."""
    seen: list[dict[str, set[str | None]]] = []

    def observe(
        real: Callable[[str, tasks_v2.Task], TaskRecord], parent: str, task: tasks_v2.Task
    ) -> TaskRecord:
        try:
            seen.append(
                {
                    alias: set(OutboxMessage.objects.using(alias).values_list("task_id", flat=True))
                    for alias in aliases
                }
            )
        finally:
            connections.close_all()  # this thread's own connections: the server's thread
        return real(parent, task)

    for _ in range(count):
        calls.inject(observe)
    return seen


@pytest.fixture
def create_calls(running_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> CreateCalls:
    calls = CreateCalls(running_emulator)
    # The gRPC service looks store.create_task up on every call.
    monkeypatch.setattr(running_emulator.store, "create_task", calls)
    return calls


# -- failures reported after commit ------------------------------------------------------------


class Failures:
    """task_enqueue_failed calls, from any thread, with a condition-based wait."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        with self._cond:
            self.calls.append(kwargs)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"{len(self.calls)} failures reported, not {count}")
            return list(self.calls)


@pytest.fixture
def failures() -> Iterator[Failures]:
    recorder = Failures()
    signals.task_enqueue_failed.connect(recorder)
    yield recorder
    signals.task_enqueue_failed.disconnect(recorder)


# -- a second process on the same database -----------------------------------------------------


class Child:
    """tests/outbox/fault_child.py in its own process, on this test's database. It prints one
    line per step; its stderr goes to a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, config: dict[str, Any], stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            [sys.executable, "-m", "tests.outbox.fault_child", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="child-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("")  # end of output

    def readline(self, timeout: float = WAIT) -> str:
        """The child's next line; fails (with what the child wrote) if it ends or stalls."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line:
            raise AssertionError(f"the child said nothing more: {self.finish()}")
        return line

    def said(self) -> list[str]:
        """The lines the child wrote and nobody read yet."""
        lines = []
        while not self._lines.empty():
            if line := self._lines.get_nowait():
                lines.append(line)
        return lines

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        """SIGKILL: no cleanup, no atexit, nothing in memory survives."""
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=WAIT)

    def finish(self) -> str:
        """Wait for the child to exit (killing it past the bound); its exit status and stderr."""
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=WAIT)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._stderr.close()
        return f"exit {self.proc.returncode}; stderr: {self._stderr_path.read_text()[-3000:]}"


@pytest.fixture
def child(configure: Configure, tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start children that use the test database and this test's CLOUDTASK (plus overrides)."""
    started: list[Child] = []
    # pytest-django renamed the connection to the test database; the child gets the same name.
    database = connections["default"].settings_dict["NAME"]

    def start(mode: str, *, cloudtask: dict[str, Any] | None = None, **config: Any) -> Child:
        process = Child(
            {
                "mode": mode,
                "database": str(database),
                "cloudtask": {**configure.current, **(cloudtask or {})},
                **config,
            },
            tmp_path / f"child-{len(started)}.stderr",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
        process.finish()


def killed_mid_send(
    child: Callable[..., Child], black_hole: BlackHole, count: int
) -> list[OutboxMessage]:
    """A child process commits count on-commit tasks (each marks its order paid) and is killed
    with SIGKILL while their sends hang on the black hole; the rows its commit left."""
    process = child(
        "commit",
        count=count,
        # Hung, with the commit willing to wait a minute: it is surely mid-send when killed.
        cloudtask={
            "EMULATOR_HOST": black_hole.address,
            "OUTBOX_FLUSH_TIMEOUT": 60.0,
            "CLIENT_TIMEOUT": 60.0,
        },
    )
    # The rows show once the transaction committed; the sends then hang on the black hole.
    wait_for(lambda: OutboxMessage.objects.count() == count, what="the child's commit")
    black_hole.wait_accepted()
    assert process.kill() == -signal.SIGKILL
    assert process.said() == [], "the commit returned: the process was not killed mid-send"
    rows = list(OutboxMessage.objects.all())
    assert [row.attempts for row in rows] == [0] * count
    # The child's transaction committed: every order it marked paid is paid.
    statuses = list(Order.objects.values_list("status", flat=True))
    assert statuses == ["paid"] * count
    return rows
