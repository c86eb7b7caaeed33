"""The crash of issue 9, recovered the way an operator does it: a process commits N on-commit
tasks and is killed with SIGKILL while its sends hang; then one `cloudtask_outbox --drain --all`,
run as a command in a process of its own. Every task runs exactly once and sees its committed
data.

--all because the rows were just written: a plain --drain leaves each row to its committing
process until that process's send has surely ended (OUTBOX_FLUSH_TIMEOUT + CLIENT_TIMEOUT +
ENQUEUE_RETRY_DEADLINE), and that process is dead (docs/outbox-operations.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connections

from cloudtask.emulator import Emulator
from cloudtask.models import OutboxMessage
from tests.models import Order, TaskRecord

from .conftest import (
    ROOT,
    WAIT,
    BlackHole,
    Child,
    Configure,
    CreateCalls,
    killed_mid_send,
)

pytestmark = pytest.mark.django_db(transaction=True)


def manage(configure: Configure, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m django ARGS` in a new process, on this test's database and CLOUDTASK."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.outbox.drain_settings",
        "CLOUDTASK_CHILD_DATABASE": str(connections["default"].settings_dict["NAME"]),
        "CLOUDTASK_CHILD_SETTINGS": json.dumps(configure.current),
    }
    return subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_process_killed_mid_send_then_one_drain_command_runs_each_task_once(
    emulator: Emulator,
    configure: Configure,
    black_hole: BlackHole,
    child: Callable[..., Child],
    create_calls: CreateCalls,
) -> None:
    count = 20
    rows = killed_mid_send(child, black_hole, count)
    task_ids = [row.task_id for row in rows]

    # The operator's command, with Cloud Tasks answering (this test's emulator); on the one
    # database the subprocess is given (the test run's "other" has a name of its own).
    drained = manage(configure, "cloudtask_outbox", "--drain", "--all", "--database", "default")

    assert (drained.returncode, drained.stdout) == (
        0,
        f"Database 'default': {count} sent, 0 failed, 0 duplicates; 0 rows left.\n",
    ), drained.stderr[-3000:]
    assert not OutboxMessage.objects.exists()
    assert emulator.wait_idle(timeout=WAIT)
    # Each task ran once and saw the committed data (the orders were paid after the calls).
    ran = Counter(
        (r.payload["order"], r.payload["status"])
        for r in TaskRecord.objects.filter(label="read_order")
    )
    assert ran == Counter({(pk, "paid"): 1 for pk in Order.objects.values_list("pk", flat=True)})
    delivered = Counter(
        d.task for d in emulator.dispatches if d.task in set(task_ids) and d.status == 200
    )
    assert delivered == Counter(dict.fromkeys(task_ids, 1))
    # The hung sends never reached Cloud Tasks: the drain's call was each task's only one.
    assert create_calls.by_id == Counter(dict.fromkeys(task_ids, 1))
