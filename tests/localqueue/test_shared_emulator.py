"""The default transport's shared background emulator: a task outlives the process that sent
it, a runserver reload, and a site that is down; the project's processes share one emulator;
with PERSIST off, what is lost at exit is said."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudtask.schedules import make_scheduler_client
from tests import waiting

# Registers localqueue.note in this process too, so the live server below can run it.
from . import tasks  # noqa: F401
from .conftest import ROOT, WAIT, Env, Process, free_port, read_notes


def delivered(notes: Path, env: Env) -> list[dict[str, Any]]:
    """The runs of localqueue.note once the emulator holds nothing more."""
    waiting.poll(lambda: read_notes(notes), WAIT, "the task ran")
    waiting.poll(lambda: env.held() == 0, WAIT, "the emulator holds nothing more")
    return read_notes(notes)


def runserver(env: Env, port: int, processes: list[Process], **extra: str) -> Process:
    server = env.start("-m", "django", "runserver", f"127.0.0.1:{port}", **extra)
    processes.append(server)
    server.wait_for(lambda out: "development server at" in out, "runserver serves")
    return server


@pytest.mark.django_db(transaction=True)
def test_a_task_sent_by_a_process_that_exited_runs_once_on_the_site(
    state_dir: Path, notes: Path, live_server: Any
) -> None:
    env = Env(state_dir, f"{live_server.url}/_tasks/")
    sent = env.send(notes, "from a shell", countdown=3)

    # The sender has exited; the project's emulator holds the task until it is due.
    running = env.running()
    assert running is not None and running.pid == sent["pid"]
    assert sent["pid"] != os.getpid()

    [run] = delivered(notes, env)
    # Run by this site's endpoint, which verified the signature with CLOUDTASK["SECRET"].
    assert run == {
        "text": "from a shell",
        "task_id": sent["task_id"],
        "retry_count": 0,
        "signed": True,
    }


def test_a_runserver_reload_loses_nothing(
    state_dir: Path, notes: Path, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    env = Env(state_dir, f"http://127.0.0.1:{port}/_tasks/")
    # A module of this test's own for the autoreloader to watch: touching it restarts only
    # this test's server.
    watched = tmp_path / "watched" / f"localqueue_watch_{os.getpid()}_{port}.py"
    watched.parent.mkdir()
    watched.write_text("")
    server = runserver(
        env,
        port,
        processes,
        PYTHONPATH=f"{ROOT}{os.pathsep}{watched.parent}",
        LOCALQUEUE_WATCH=watched.stem,
    )
    # The serving process starts the project's emulator itself, before any task is sent.
    started = waiting.poll(env.running, WAIT, "runserver started the shared emulator")

    sent = env.send(notes, "across a reload", countdown=4)
    assert sent["pid"] == started.pid
    later = time.time() + 2
    os.utime(watched, (later, later))
    server.wait_for(lambda out: out.count("development server at") == 2, "runserver restarted")

    [run] = delivered(notes, env)
    assert (run["text"], run["task_id"], run["retry_count"]) == (
        "across a reload",
        sent["task_id"],
        0,
    )
    assert env.running() == started  # the same emulator throughout


def test_runserver_alone_brings_up_the_emulator_with_the_projects_schedules(
    state_dir: Path, notes: Path, processes: list[Process]
) -> None:
    port = free_port()
    env = Env(state_dir, f"http://127.0.0.1:{port}/_tasks/")
    runserver(env, port, processes, LOCALQUEUE_NOTES=str(notes))

    # Nothing sent a task: the serving process started the emulator and applied SCHEDULES.
    running = waiting.poll(env.running, WAIT, "runserver started the shared emulator")
    client = make_scheduler_client(running.address)
    try:
        parent = f"projects/{running.project}/locations/{running.location}"
        jobs = waiting.poll(
            lambda: list(client.list_jobs(parent=parent)), WAIT, "the schedule applied"
        )
        assert [(job.name, job.schedule, job.time_zone) for job in jobs] == [
            (f"{parent}/jobs/nightly-note", "30 2 * * *", "Europe/Zurich")
        ]
        # It fires at 02:30 in Zurich (cron times are tested on a manual clock); run it now,
        # as `gcloud scheduler jobs run` would: the site runs the task with its arguments.
        client.run_job(name=jobs[0].name)
    finally:
        transport: Any = client.transport  # google's close() is untyped
        transport.close()
    [run] = waiting.poll(lambda: read_notes(notes), WAIT, "the schedule's task ran")
    assert (run["text"], run["signed"]) == ("fired by cron", True)


def test_a_site_that_comes_up_late_gets_its_task_without_used_attempts(
    env: Env, notes: Path, processes: list[Process]
) -> None:
    sent = env.send(notes, "while the site is down", countdown=0)
    log = env.state_dir / "emulator.log"
    # Due at once, tried, refused: held, not counted as an attempt.
    waiting.poll(
        lambda: "not answering (connection refused)" in log.read_text(),
        WAIT,
        "the emulator tried the site that is down",
    )
    assert env.held() == 1

    port = int(env.vars["LOCALQUEUE_URL"].rsplit(":", 1)[1].split("/")[0])
    runserver(env, port, processes)

    [run] = delivered(notes, env)
    assert (run["task_id"], run["retry_count"]) == (sent["task_id"], 0)


def test_the_projects_processes_share_one_emulator(env: Env, notes: Path) -> None:
    senders = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "tests.localqueue.send", str(notes), f"sender {n}", "3600"],
            cwd=ROOT,
            env=env.vars,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    outputs = [sender.communicate(timeout=WAIT) for sender in senders]
    assert [sender.returncode for sender in senders] == [0, 0, 0], outputs
    pids = {out.splitlines()[-1].split('"pid": ')[1].split(",")[0] for out, _ in outputs}

    running = env.running()
    assert running is not None and pids == {str(running.pid)}
    assert env.held() == 3


def test_without_persist_the_tasks_lost_at_exit_are_counted(env: Env, notes: Path) -> None:
    done = env.run(
        "-m", "tests.localqueue.send", str(notes), "dropped", "60", LOCALQUEUE_PERSIST="0"
    )
    assert done.returncode == 0, done.stderr
    assert (
        "cloudtask: the in-process emulator dropped 1 undelivered task(s) at exit (scheduled "
        'or retrying); CLOUDTASK["EMULATOR"]["PERSIST"] = True keeps them'
    ) in done.stderr.splitlines()
    # Nothing ran in the background.
    assert env.running() is None and not env.state_dir.exists()
