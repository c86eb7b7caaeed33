"""The background emulator: ``python -m cloudtask.emulator --state-dir DIR`` as a spawner runs it
(``daemon_command``), found with ``read_running``, stopped with ``stop_running``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtask.emulator.persist import daemon_command, read_running, stop_running
from tests.waiting import poll

from .conftest import Target
from .test_running import Process, client_for, env

PROJECT = "daemon-project"
LOCATION = "local"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


def command(state_dir: Path, *, idle_timeout: float | None = None) -> list[str]:
    return daemon_command(
        state_dir,
        host="127.0.0.1",
        port=0,
        project=PROJECT,
        location=LOCATION,
        queues=["default"],
        dedup_window=3600.0,
        max_task_size=1_048_576,
        idle_timeout=idle_timeout,
    )


Start = Callable[..., Process]


@pytest.fixture
def start_daemon() -> Iterator[Start]:
    """Start a background emulator on a state dir and wait until it is published; every process
    started is stopped (SIGTERM, then SIGKILL) at the end of the test."""
    processes: list[Process] = []

    def start(state_dir: Path, **options: Any) -> Process:
        process = Process(command(state_dir, **options), env())
        processes.append(process)
        poll(
            lambda: read_running(state_dir) or process.popen.poll() is not None,
            what="the emulator to publish its address",
        )
        assert process.popen.poll() is None, "".join(process.stderr)
        return process

    yield start
    for process in processes:
        # SIGTERM first: it closes its keep-alive connections to the test's target cleanly.
        if process.popen.poll() is None:
            process.popen.terminate()
        try:
            process.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()


def client_of(state_dir: Path) -> tuple[tasks_v2.CloudTasksClient, Any]:
    info = read_running(state_dir)
    assert info is not None
    return client_for(info["address"])


def saved_task_names(state_dir: Path) -> set[str]:
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except FileNotFoundError:
        return set()
    return {t["name"].rsplit("/", 1)[1] for q in data["queues"] for t in q["tasks"]}


def test_it_publishes_where_it_listens(tmp_path: Path, start_daemon: Start) -> None:
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    info = read_running(state_dir)
    assert info is not None
    assert info["pid"] == process.popen.pid
    assert info["address"].startswith("127.0.0.1:")
    assert info["certs_url"].startswith("http://127.0.0.1:")
    assert info["project"] == PROJECT and info["location"] == LOCATION
    assert info["state"] == str(state_dir / "state.json")
    assert isinstance(info["started"], float)
    assert "dashboard_url" in info
    client, channel = client_of(state_dir)
    try:
        names = [q.name for q in client.list_queues(parent=PARENT)]
        assert names == [f"{PARENT}/queues/default"]
    finally:
        channel.close()


def test_sigterm_saves_and_exits(tmp_path: Path, start_daemon: Start, target: Target) -> None:
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    client, channel = client_of(state_dir)
    try:
        queue = f"{PARENT}/queues/default"
        client.pause_queue(name=queue)
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/kept", "http_request": {"url": target.url()}},
            }
        )
    finally:
        channel.close()
    assert stop_running(state_dir) is True
    assert process.popen.wait(timeout=30) == 0
    assert saved_task_names(state_dir) == {"kept"}
    assert not (state_dir / "emulator.json").exists()
    assert read_running(state_dir) is None
    assert stop_running(state_dir) is False  # none runs


def test_sigkill_loses_nothing_already_saved(
    tmp_path: Path, start_daemon: Start, target: Target
) -> None:
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    client, channel = client_of(state_dir)
    queue = f"{PARENT}/queues/jobs"
    try:
        client.create_queue(request={"parent": PARENT, "queue": {"name": queue}})
        client.pause_queue(name=queue)
        for number in range(3):
            client.create_task(
                request={
                    "parent": queue,
                    "task": {
                        "name": f"{queue}/tasks/job-{number}",
                        "http_request": {"url": target.url(f"/job/{number}")},
                    },
                }
            )
    finally:
        channel.close()
    poll(
        lambda: saved_task_names(state_dir) == {"job-0", "job-1", "job-2"},
        what="the tasks in state.json",
    )
    process.popen.send_signal(signal.SIGKILL)
    process.popen.wait(timeout=30)
    # The dead emulator's emulator.json is still there, and stale: nobody reads it as running,
    # and it does not stop a new emulator from taking the directory.
    assert (state_dir / "emulator.json").exists()
    assert read_running(state_dir) is None

    start_daemon(state_dir)
    client, channel = client_of(state_dir)
    try:
        assert client.get_queue(name=queue).state == tasks_v2.Queue.State.PAUSED
        client.resume_queue(name=queue)
        received = target.wait_for(3)
    finally:
        channel.close()
    assert sorted(r.path for r in received) == ["/job/0", "/job/1", "/job/2"]
    assert {r.header("X-CloudTasks-TaskRetryCount") for r in received} == {"0"}
    assert {r.header("X-CloudTasks-QueueName") for r in received} == {"jobs"}


def test_a_second_emulator_on_the_same_dir_exits_3(tmp_path: Path, start_daemon: Start) -> None:
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    info = read_running(state_dir)
    assert info is not None
    state_before = (state_dir / "state.json").read_bytes()
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        command(state_dir),
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"a cloudtask emulator already runs for {state_dir} at {info['address']} "
        f"(pid {process.popen.pid})"
    )
    # The first one is untouched: same state file, still published, still serving.
    assert (state_dir / "state.json").read_bytes() == state_before
    assert read_running(state_dir) == info


def test_idle_timeout_stops_the_daemon(tmp_path: Path, start_daemon: Start, target: Target) -> None:
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir, idle_timeout=1.0)
    client, channel = client_of(state_dir)
    try:
        queue = f"{PARENT}/queues/default"
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/only", "http_request": {"url": target.url()}},
            }
        )
        target.wait_for(1)
    finally:
        channel.close()
    assert process.popen.wait(timeout=60) == 0
    assert read_running(state_dir) is None
    assert not (state_dir / "emulator.json").exists()
    tombstones = json.loads((state_dir / "state.json").read_text())["tombstones"]
    assert f"{PARENT}/queues/default/tasks/only" in tombstones
    assert "no call and no task for 1 s: stopping" in "".join(process.stderr)


def test_daemon_command() -> None:
    argv = daemon_command(
        "/srv/state",
        host="127.0.0.1",
        port=0,
        project="p",
        location="l",
        queues=["a", "b"],
        dedup_window=60,
        max_task_size=1000,
        idle_timeout=None,
        quiet=True,
    )
    assert argv[1:3] == ["-m", "cloudtask.emulator"]
    assert os.path.isabs(argv[0])
    assert argv[3:] == [
        "--state-dir",
        "/srv/state",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--project",
        "p",
        "--location",
        "l",
        "--dedup-window",
        "60.0",
        "--max-task-size",
        "1000",
        "--queue",
        "a",
        "--queue",
        "b",
        "--hold-unreachable",
        "--auto-create-queues",
        "--quiet",
    ]
