"""Trap: CLOUDTASK["EMULATOR_HOST"] set, with a PROJECT (or queue) the running emulator lacks.

Google's "wait at least a minute" advice is wrong for an emulator, whose queues exist from its
start: the error says where the emulator's queues are and which setting to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions

from cloudtask import QueueNotFound
from cloudtask.conf import build_settings
from cloudtask.emulator import Emulator
from cloudtask.transports.cloudtasks import CloudTasksTransport
from tests.api.conftest import BASE
from tests.tasks import add, echo

GOOGLE = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue "
    "to initialize."
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """An emulator started for project A (as `manage.py cloudtask_emulator --project a` would)."""
    with Emulator(project="project-a", queues=["default"], log=None, dashboard=False) as emu:
        yield emu


def against(settings: Any, emulator: Emulator, **cloudtask: Any) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
        "URL": "http://127.0.0.1:9/_tasks/",
        **cloudtask,
    }


def test_settings_for_another_project(settings: Any, emulator: Emulator) -> None:
    against(settings, emulator, PROJECT="project-b", LOCATION="local")
    with pytest.raises(QueueNotFound) as info:
        add().delay()
    assert str(info.value) == (
        f"The emulator at {emulator.address} refused the task: Queue "
        "projects/project-b/locations/local/queues/default does not exist on this emulator; it "
        'has queues in projects/project-a/locations/local. Set CLOUDTASK["PROJECT"] and '
        'CLOUDTASK["LOCATION"] to those of its queues (left unset with EMULATOR_HOST, they are '
        'local-project and local: the emulator\'s defaults), or fix CLOUDTASK["QUEUE"] / '
        "@task(queue=...) of task 'tests.tasks.add'."
    )


def test_a_queue_the_emulator_lacks(settings: Any, emulator: Emulator) -> None:
    against(settings, emulator, PROJECT="project-a", LOCATION="local", QUEUE="emails")
    with pytest.raises(QueueNotFound) as info:
        echo().delay()
    assert str(info.value) == (
        f"The emulator at {emulator.address} refused the task: Queue "
        "projects/project-a/locations/local/queues/emails does not exist on this emulator. "
        "Start the emulator with --queue emails (or --auto-create-queues), check "
        'CLOUDTASK["PROJECT"] and CLOUDTASK["LOCATION"], or fix CLOUDTASK["QUEUE"] / '
        "@task(queue=...) of task 'tests.tasks.echo'."
    )


def test_googles_service_keeps_its_advice_and_names_cloudtask_sync() -> None:
    # Google's own answer cannot be had offline: the error it raises is built as the client
    # builds it from the gRPC status.
    s = build_settings({**BASE, "TRANSPORT": "cloudtasks", "PROJECT": "p", "LOCATION": "l"})
    transport = CloudTasksTransport(s)
    parent = transport.parent("default")
    not_found = api_exceptions.NotFound(GOOGLE)  # type: ignore[no-untyped-call]
    error = transport.translate_error(not_found, add().encode(), parent)
    assert isinstance(error, QueueNotFound)
    assert str(error) == (
        f"Queue projects/p/locations/l/queues/default does not exist (task 'tests.tasks.add'): "
        f'{GOOGLE} Create it with "manage.py cloudtask_sync" (it creates the queues in '
        'CLOUDTASK["QUEUES"]) or gcloud tasks queues create default --location=l --project=p, '
        "or fix CLOUDTASK[\"QUEUE\"] / @task(queue=...) of task 'tests.tasks.add'."
    )
