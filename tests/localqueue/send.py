"""``python -m tests.localqueue.send FILE TEXT COUNTDOWN [stay]``: a process that schedules one
``localqueue.note`` task and exits, printing (JSON) the task id and the emulator it used. With
``stay`` it then waits for its stdin to close, never reaping the emulator it started: that one
stays a zombie once stopped, and looks alive to a pid check."""

from __future__ import annotations

import json
import sys

import django


def main(path: str, text: str, countdown: str, stay: str = "") -> None:
    django.setup()
    from cloudtask.transports import get_transport

    from .tasks import note

    handle = note(path, text).schedule(countdown=float(countdown))
    local = get_transport().connect()  # type: ignore[attr-defined]
    print(json.dumps({"task_id": handle.task_id, "pid": local.pid, "address": local.address}))
    if stay:
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main(*sys.argv[1:])
