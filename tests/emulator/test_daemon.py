"""The background emulator: ``python -m cloudtask.emulator --state-dir DIR`` as a spawner runs it
(``daemon_command``), found with ``read_running``, stopped with ``stop_running``."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from google.cloud import tasks_v2

from cloudtask.emulator import Emulator
from cloudtask.emulator.cli import serve
from cloudtask.emulator.persist import (
    LOCK_RETRY_DELAY,
    daemon_command,
    lock_state_dir,
    make_state_dir,
    read_running,
    stop_running,
)
from cloudtask.management.commands import cloudtask_emulator as command_module
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


def test_the_state_directory_is_private_and_ignored_by_git(
    tmp_path: Path, start_daemon: Start
) -> None:
    # .cloudtask/ beside db.sqlite3 is usually inside the project's repository, and its files
    # hold task bodies.
    state_dir = tmp_path / "state"
    start_daemon(state_dir)
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / ".gitignore").read_text().splitlines()[-1] == "*"
    for name in ("state.json", "emulator.json", "emulator.lock"):
        assert (state_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_directory_made_by_the_user_is_left_as_it_is(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    lock_state_dir(state_dir).release()
    assert state_dir.stat().st_mode & 0o777 == 0o755
    assert not (state_dir / ".gitignore").exists()


def test_a_reader_probing_the_lock_does_not_keep_an_emulator_out(tmp_path: Path) -> None:
    state_dir = make_state_dir(tmp_path / "state")
    # What read_running's probe does: take the lock, let go at once. An emulator starting at
    # that very moment takes the directory all the same.
    probe = os.open(state_dir / "emulator.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    releasing = threading.Timer(LOCK_RETRY_DELAY / 2, os.close, [probe])
    releasing.start()
    try:
        lock = lock_state_dir(state_dir)
    finally:
        releasing.join()
    lock.release()


def _stops_when_serving(emulator: Emulator, state_dir: Path) -> list[bool]:
    """Whether emulator.json was still there each time ``emulator.stop`` was called."""
    published: list[bool] = []
    stop = emulator.stop

    def watched_stop(grace: float = 1.0) -> None:
        published.append((state_dir / "emulator.json").exists())
        stop(grace)

    emulator.stop = watched_stop  # type: ignore[method-assign]
    return published


def _serving_emulator(state_dir: Path, **options: Any) -> Emulator:
    return Emulator(log=None, dashboard=False, state_path=state_dir / "state.json", **options)


def test_an_idle_stop_unpublishes_before_it_stops(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    emulator = _serving_emulator(state_dir, idle_timeout=0.3)
    published = _stops_when_serving(emulator, state_dir)
    # In a thread, as serve() has no signal to wait for there: it ends with the idle stop.
    serving = threading.Thread(
        target=serve, args=(emulator, io.StringIO()), kwargs={"state_dir": state_dir}
    )
    serving.start()
    serving.join(30)
    assert not serving.is_alive()
    # No process sent to a server already shutting down: it was unpublished first.
    assert published and not any(published)
    assert read_running(state_dir) is None


def test_sigterm_unpublishes_before_it_stops(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    emulator = _serving_emulator(state_dir)
    published = _stops_when_serving(emulator, state_dir)
    assert threading.current_thread() is threading.main_thread()  # where serve() takes signals

    def terminate_once_published() -> None:
        poll(lambda: read_running(state_dir), what="the emulator published")
        os.kill(os.getpid(), signal.SIGTERM)  # caught by serve(), which then stops

    terminating = threading.Thread(target=terminate_once_published)
    terminating.start()
    serve(emulator, io.StringIO(), state_dir=state_dir)
    terminating.join()
    assert published == [False]
    assert not (state_dir / "emulator.json").exists()


def test_reset_holds_the_directory_while_it_deletes(
    tmp_path: Path, start_daemon: Start, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    start_daemon(state_dir)
    client, channel = client_of(state_dir)
    try:
        queue = f"{PARENT}/queues/default"
        client.pause_queue(name=queue)
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/old", "http_request": {"url": target.url()}},
            }
        )
    finally:
        channel.close()
    poll(lambda: saved_task_names(state_dir) == {"old"}, what="the task saved")
    # The race: right after the reset stopped it, a sender (or a site's keep_up) starts the
    # emulator again, which loads the old state.
    respawned: list[Process] = []

    def stop_then_respawn(directory: Path, timeout: float = 10.0) -> bool:
        stopped = stop_running(directory, timeout)
        if not respawned:
            respawned.append(start_daemon(directory))
        return stopped

    monkeypatch.setattr(command_module, "stop_running", stop_then_respawn)
    out = io.StringIO()
    call_command(
        "cloudtask_emulator", "--reset", "--no-input", "--state-dir", str(state_dir), stdout=out
    )
    assert respawned, "the race was injected"
    # The emulator started in between was stopped too, and nothing brings the old task back.
    assert read_running(state_dir) is None
    assert not (state_dir / "state.json").exists()
    assert out.getvalue().strip() == (
        f"Stopped the Cloud Tasks emulator; deleted {state_dir / 'state.json'}."
    )


def test_the_foreground_emulator_holds_the_directory_from_the_stop_on(
    tmp_path: Path, start_daemon: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    background = start_daemon(state_dir)
    # The race: right after the command stopped the background emulator, a sender starts
    # another one, which would take the directory from under the foreground one.
    respawned: list[Process] = []

    def stop_then_respawn(directory: Path, timeout: float = 10.0) -> bool:
        stopped = stop_running(directory, timeout)
        if not respawned:
            respawned.append(start_daemon(directory))
        return stopped

    monkeypatch.setattr(command_module, "stop_running", stop_then_respawn)
    out = io.StringIO()
    # It serves until its idle timeout (nothing calls it here), then returns.
    call_command(
        "cloudtask_emulator",
        "--state-dir",
        str(state_dir),
        "--port",
        "0",
        "--idle-timeout",
        "0.5",
        "--quiet",
        stdout=out,
    )
    assert respawned, "the race was injected"
    assert respawned[0].popen.wait(timeout=30) == 0  # stopped too, not left serving
    text = out.getvalue()
    assert (
        f"Stopped the background Cloud Tasks emulator (pid {background.popen.pid}); taking "
        f"over its tasks from {state_dir / 'state.json'}."
    ) in text
    assert "Cloud Tasks emulator listening on" in text
    assert read_running(state_dir) is None
