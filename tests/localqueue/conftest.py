"""Fixtures for the shared local emulator's tests: a state directory per test (its emulator
stopped at the end), the environment of the processes a test starts, and those processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtask.emulator.persist import read_running, stop_running
from cloudtask.management.commands.cloudtask_emulator import held_tasks
from cloudtask.transports.emulator import LocalEmulator, find_running
from tests import waiting

ROOT = Path(__file__).resolve().parents[2]
#: Bound of every wait here; generous, as each one starts Python processes.
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulator_pids(directory: Path) -> set[int]:
    """The processes running an emulator for directory (read off Linux's /proc)."""
    wanted = ["--state-dir", str(directory)]
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        if any(argv[i : i + 2] == wanted for i in range(len(argv) - 1)):
            pids.add(int(entry.name))
    return pids


def _settled(directory: Path) -> bool:
    """At most one emulator for directory, serving it if there is one."""
    pids = emulator_pids(directory)
    if not pids:
        return True
    running = read_running(directory)
    return running is not None and pids == {running["pid"]}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """This test's state directory; whatever emulator serves it is stopped at the end."""
    directory = tmp_path / "state"
    yield directory
    # Processes that start the emulator at the same moment each spawn one; all but one exit
    # when they find the directory taken. One still starting could take the directory over
    # once the stop below released it, and outlive the test: wait for them first.
    waiting.poll(lambda: _settled(directory), WAIT, "the emulators that lost the directory to exit")
    stop_running(directory, timeout=WAIT)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """The file localqueue.note appends its runs to."""
    return tmp_path / "notes.jsonl"


def read_notes(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class Env:
    """The environment of the processes a test starts (tests/localqueue/settings.py)."""

    def __init__(self, state_dir: Path, url: str) -> None:
        self.vars = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        self.vars.update(
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="tests.localqueue.settings",
            LOCALQUEUE_STATE_DIR=str(state_dir),
            LOCALQUEUE_URL=url,
        )
        self.state_dir = state_dir

    def run(
        self, *args: str, stdin: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python *args`` to its end."""
        return subprocess.run(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, *args],
            cwd=ROOT,
            env={**self.vars, **extra},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def send(self, notes: Path, text: str, countdown: float, **extra: str) -> dict[str, Any]:
        """Schedule localqueue.note from a process that then exits; what it printed."""
        done = self.run("-m", "tests.localqueue.send", str(notes), text, str(countdown), **extra)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    def manage(
        self, *args: str, stdin: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "django", *args, stdin=stdin, **extra)

    def start(self, *args: str, **extra: str) -> Process:
        return Process([sys.executable, *args], {**self.vars, **extra})

    def running(self) -> LocalEmulator | None:
        return find_running(self.state_dir)

    def held(self) -> int:
        running = self.running()
        assert running is not None, "no emulator serves the state directory"
        return sum(held_tasks(running).values())


@pytest.fixture
def env(state_dir: Path) -> Env:
    """Processes on a site that is down: nothing listens at the URL."""
    return Env(state_dir, f"http://127.0.0.1:{free_port()}/_tasks/")


class Process:
    """A long-running process in its own process group (runserver and its autoreloaded child,
    a foreground emulator), its output collected by threads so waits have a deadline."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self._lock = threading.Lock()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self.output.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self.output)

    def wait_for(self, probe: Callable[[str], bool], what: str) -> str:
        try:
            return str(waiting.poll(lambda: probe(self.text) and self.text, WAIT, what))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output:\n{self.text}") from None

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Signal the whole group (runserver's parent and child) and wait for the end."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)
        try:
            status = self.popen.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            status = self.popen.wait(timeout=WAIT)
        self._pumping.join(timeout=WAIT)  # the output's end, then its pipe can close
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return status


@pytest.fixture
def processes(state_dir: Path) -> Iterator[list[Process]]:
    """Processes a test starts: stopped at its end, whatever happened (before the emulator of
    state_dir, which a running site would otherwise start again)."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()
