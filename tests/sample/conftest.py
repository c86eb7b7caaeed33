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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MANAGE = REPO / "sample_app" / "manage.py"
#: Upper bound for a sample process to start or finish: a hang guard, not a timing assertion.
PROCESS_TIMEOUT = 120.0


def sample_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the sample project's settings, not the suite's
    env["SAMPLE_DB"] = str(tmp_path / "shop.sqlite3")
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
    log: Path


@pytest.fixture
def sample_server(tmp_path: Path) -> Iterator[SampleServer]:
    """``manage.py demo --serve --port 0``: the shop on a free port with its embedded emulator."""
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, as above
            [sys.executable, str(MANAGE), "demo", "--serve", "--port", "0"],
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
        while url is None:
            try:
                line = lines.get(timeout=PROCESS_TIMEOUT)
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(
                    f"the sample server did not start; stdout: {seen}; stderr: {log.read_text()}"
                )
            seen.append(line)
            match = re.search(r"Serving the sample shop at (http://\S+/)", line)
            if match:
                url = match.group(1)
        yield SampleServer(process, url, log)
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
