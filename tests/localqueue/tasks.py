"""The task these tests schedule: it appends what it saw to a file, so a test in another
process counts its runs."""

from __future__ import annotations

import json

from cloudtask import CloudTaskRequest, task
from cloudtask.signing import HEADER


@task(name="localqueue.note")
def note(request: CloudTaskRequest, path: str, text: str) -> None:
    seen = {
        "text": text,
        "task_id": request.task_id,
        "retry_count": request.retry_count,
        # The endpoint ran it, so the signature was verified; record that one was sent.
        "signed": bool(request.headers.get(HEADER)),
    }
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(seen) + "\n")
