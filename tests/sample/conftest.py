"""Fixtures that run the sample project as its own process, with its own settings and SQLite
file, the way a person runs it: the test suite's settings stay untouched."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MANAGE = REPO / "sample_app" / "manage.py"
#: Upper bound for a sample process to start or finish: a hang guard, not a timing assertion.
PROCESS_TIMEOUT = 120.0


def sample_db(tmp_path: Path) -> Path:
    """The SQLite file of the sample processes a test starts."""
    return tmp_path / "shop.sqlite3"


def sample_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the sample project's settings, not the suite's
    env["SAMPLE_DB"] = str(sample_db(tmp_path))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run sample_app/manage.py to completion; stdout and stderr captured."""
    return subprocess.run(  # noqa: S603 - fixed argv: this interpreter and the sample's manage.py
        [sys.executable, str(MANAGE), *args],
        cwd=REPO,
        env=sample_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


@dataclass
class SampleServer:
    process: subprocess.Popen[str]
    url: str
    #: Its stderr: log lines (cloudtask's, Django's, the emulator's deliveries).
    log: Path
    #: Its SQLite file.
    database: Path
    #: What it printed on stdout before serving, up to "Press Ctrl-C to stop".
    banner: list[str] = field(default_factory=list)


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[SampleServer]:
    """``manage.py demo --serve --port 0 [args]``: the shop on a free port with its embedded
    emulator, stopped with Ctrl-C (SIGINT) at the end."""
    # One log per server: a test may start several on one database.
    log = tmp_path / f"server-{len(list(tmp_path.glob('server-*.log')))}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, as above
            [sys.executable, str(MANAGE), "demo", "--serve", "--port", "0", *args],
            cwd=REPO,
            env=sample_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        # Drain stdout for the process's whole life so it never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = None
        seen: list[str] = []
        while not seen or "Press Ctrl-C to stop" not in seen[-1]:
            try:
                line = lines.get(timeout=PROCESS_TIMEOUT)
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(
                    f"the sample server did not start; stdout: {seen}; stderr: {log.read_text()}"
                )
            seen.append(line.rstrip("\n"))
            match = re.search(r"Serving the sample shop at (http://\S+/)", line)
            if match:
                url = match.group(1)
        assert url is not None, seen
        yield SampleServer(process, url, log, sample_db(tmp_path), seen)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the command's clean Ctrl-C path
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=15)  # EOF once the process is gone
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def sample_server(tmp_path: Path) -> Iterator[SampleServer]:
    """The shop served on a free port (``make demo-serve`` on a new database)."""
    with serving(tmp_path) as server:
        yield server


@pytest.fixture
def start_sample_server(tmp_path: Path) -> Iterator[Callable[..., SampleServer]]:
    """Start the shop with extra ``demo --serve`` arguments; every one is stopped at the end."""
    with ExitStack() as stack:
        yield lambda *args: stack.enter_context(serving(tmp_path, *args))
