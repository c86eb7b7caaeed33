"""``manage.py cloudtask_emulator``: --status, --stop and --reset of the project's background
emulator, and the foreground emulator taking over from it."""

from __future__ import annotations

import signal
from pathlib import Path

from cloudtask.emulator.persist import lock_state_dir
from tests import waiting

from .conftest import WAIT, Env, Process


def test_status_stop_and_reset(env: Env, notes: Path) -> None:
    state = env.state_dir / "state.json"
    status = env.manage("cloudtask_emulator", "--status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [
        "The project's Cloud Tasks emulator is not running.",
        f"State file: {state} (none yet)",
        f"Log file: {env.state_dir / 'emulator.log'}",
    ]

    sent = env.send(notes, "held", countdown=3600)
    status = env.manage("cloudtask_emulator", "--status")
    lines = status.stdout.splitlines()
    assert lines[0] == (
        f"The project's Cloud Tasks emulator is running at {sent['address']} (pid {sent['pid']}, "
        "project localqueue-project, location local)."
    )
    assert "Held tasks: 1 (default: 1)" in lines
    assert f"State file: {state}" in lines

    stop = env.manage("cloudtask_emulator", "--stop")
    assert stop.stdout.startswith(f"Stopped the Cloud Tasks emulator (pid {sent['pid']})")
    assert env.running() is None and state.exists()
    assert "is not running" in env.manage("cloudtask_emulator", "--stop").stdout

    # The next process starts it again, with what it held.
    again = env.send(notes, "held too", countdown=3600)
    assert again["pid"] != sent["pid"] and env.held() == 2

    refused = env.manage("cloudtask_emulator", "--reset", stdin="no\n")
    assert refused.returncode != 0 and "Reset cancelled." in refused.stderr
    assert env.held() == 2

    reset = env.manage("cloudtask_emulator", "--reset", "--no-input")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == f"Stopped the Cloud Tasks emulator; deleted {state}."
    assert env.running() is None and not state.exists()
    env.send(notes, "fresh", countdown=3600)
    assert env.held() == 1


def test_the_foreground_emulator_takes_over_the_background_one(
    env: Env, notes: Path, processes: list[Process]
) -> None:
    background = env.send(notes, "held by the background one", countdown=3600)

    foreground = env.start("-m", "django", "cloudtask_emulator", "--port", "0")
    processes.append(foreground)
    foreground.wait_for(lambda out: "listening on" in out, "the foreground emulator listens")
    assert (
        f"Stopped the background Cloud Tasks emulator (pid {background['pid']}); taking over "
        f"its tasks from {env.state_dir / 'state.json'}."
    ) in foreground.text
    running = waiting.poll(env.running, WAIT, "the foreground emulator is published")
    assert running.pid == foreground.popen.pid
    assert env.held() == 1

    # While it runs, the project's processes send to it.
    sent = env.send(notes, "sent to the foreground one", countdown=3600)
    assert sent["pid"] == foreground.popen.pid
    assert env.held() == 2

    assert foreground.stop(signal.SIGINT) == 0
    # Stopped, it left its tasks to the next background one.
    env.send(notes, "back in the background", countdown=3600)
    running = env.running()
    assert running is not None and running.pid != foreground.popen.pid
    assert env.held() == 3


def test_a_sender_waits_out_a_reset_holding_the_directory(
    env: Env, notes: Path, processes: list[Process]
) -> None:
    # `cloudtask_emulator --reset` holds the directory while it deletes the state. The emulator
    # a sender starts meanwhile finds it taken and exits; once the directory is free, the
    # sender starts another instead of failing.
    lock = lock_state_dir(env.state_dir)
    try:
        sender = env.start("-m", "tests.localqueue.send", str(notes), "after the reset", "3600")
        processes.append(sender)
        log = env.state_dir / "emulator.log"
        waiting.poll(
            lambda: log.exists() and "already runs" in log.read_text(),
            WAIT,
            "the emulator it started gave up",
        )
    finally:
        lock.release()
    assert sender.popen.wait(timeout=WAIT) == 0, sender.text
    running = env.running()
    assert running is not None and env.held() == 1
    assert (env.state_dir / "emulator.log").stat().st_mode & 0o777 == 0o600
