"""Django's enqueue() on a backend with ON_COMMIT, and model-signal bindings, go through the
outbox like every other call sent at commit: with Cloud Tasks unreachable at the commit, the
call is a durable row afterwards; once Cloud Tasks answers, the relay sends it and the task runs
once, as the id the row was given.

Unreachable is real: nothing listens at the address the transport is given (the connection is
refused, UNAVAILABLE). Then the working emulator takes over, delivering to the live server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from cloudtask.backends import TaskResultStatus
from cloudtask.emulator import Emulator
from cloudtask.models import OutboxMessage
from cloudtask.outbox import message_of, relay
from cloudtask.transports import get_transport
from tests.api.conftest import Runs
from tests.djangotasks import tasks as django_tasks
from tests.models import Parcel, TaskRecord
from tests.oncommit.jobs import Deliveries

from .conftest import WAIT, Configure, CreateCalls, make_due, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

#: Nothing listens on port 1: a connection is refused at once.
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture
def runs() -> Iterator[Runs]:
    recorder = Runs(django_tasks.RUNS, django_tasks.RUN_EVENT)
    recorder.clear()
    yield recorder
    recorder.clear()


@pytest.fixture
def down(configure: Configure, settings: Any) -> Configure:
    """Cloud Tasks unreachable; the send at the commit is tried once (no retries to wait out)."""
    configure(UNREACHABLE, ENQUEUE_RETRY_DEADLINE=0)
    settings.TASKS = {
        "default": {
            "BACKEND": "cloudtask.backends.CloudTasksBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"ON_COMMIT": True},
        }
    }
    return configure


def left_row() -> OutboxMessage:
    """The one row the commit left, after its failed send."""
    (row,) = OutboxMessage.objects.all()
    assert row.attempts == 1 and row.last_error
    return row


def relay_now() -> None:
    make_due()
    result = relay(aliases=["default"])
    assert (result.sent, result.failed, result.duplicates, result.skipped) == (1, 0, 0, {})
    assert not OutboxMessage.objects.exists()


def relay_then_ran_once(
    down: Configure,
    running_emulator: Emulator,
    create_calls: CreateCalls,
    parcel: Parcel,
    row: OutboxMessage,
) -> None:
    """Cloud Tasks answers again: the relay sends the binding's row, and parcel_created runs
    once, for parcel, as the row's task id."""
    down(running_emulator.address)
    relay_now()

    def ran() -> list[dict[str, Any]]:
        return [r.payload for r in TaskRecord.objects.filter(label="parcel_created")]

    wait_for(ran, what="parcel_created ran")
    assert running_emulator.wait_idle(timeout=WAIT)
    (payload,) = ran()
    assert payload["pk"] == parcel.pk
    assert create_calls.by_id == Counter({row.task_id: 1})


def test_django_enqueue_on_commit_is_an_outbox_row_until_sent(
    down: Configure,
    running_emulator: Emulator,
    deliveries: Deliveries,
    create_calls: CreateCalls,
    runs: Runs,
) -> None:
    with transaction.atomic():
        result = django_tasks.add.enqueue(2, b=3)

    # Committed with Cloud Tasks unreachable: the call is a row, under the result's id.
    row = left_row()
    assert (row.task_name, row.task_id, row.queue) == (
        django_tasks.add.module_path,
        result.id,
        "default",
    )
    assert result.status == TaskResultStatus.READY
    assert runs.of("add") == []

    down(running_emulator.address)
    relay_now()

    (run,) = runs.wait("add")
    assert running_emulator.wait_idle(timeout=WAIT)
    assert (run["a"], run["b"], run["task_id"]) == (2, 3, result.id)
    assert len(runs.of("add")) == 1
    assert create_calls.by_id == Counter({result.id: 1})


def test_a_django_enqueue_row_sent_again_after_its_send_reached_cloud_tasks_counts_as_sent(
    down: Configure, running_emulator: Emulator, create_calls: CreateCalls, runs: Runs
) -> None:
    with transaction.atomic():
        result = django_tasks.add.enqueue(2, b=3)
    row = left_row()
    # The backend made the id up: nobody else can have taken it.
    assert not row.named

    down(running_emulator.address)
    # The send reached Cloud Tasks, but the process died before it could delete the row.
    get_transport().enqueue(message_of(row))
    # So the relay's send meets ALREADY_EXISTS: for the call's own id, that means sent.
    relay_now()

    runs.wait("add")
    assert running_emulator.wait_idle(timeout=WAIT)
    assert len(runs.of("add")) == 1
    assert create_calls.by_id == Counter({result.id: 2})


def test_a_model_signal_binding_is_an_outbox_row_until_sent(
    down: Configure,
    running_emulator: Emulator,
    deliveries: Deliveries,
    create_calls: CreateCalls,
) -> None:
    with transaction.atomic():
        parcel = Parcel.objects.create(note="fragile")  # parcel_created is bound to this

    row = left_row()
    assert row.task_name == "tests.oncommit.jobs.parcel_created"
    assert not TaskRecord.objects.filter(label="parcel_created").exists()

    relay_then_ran_once(down, running_emulator, create_calls, parcel, row)


def test_a_binding_fired_in_autocommit_is_an_outbox_row_until_sent(
    down: Configure,
    running_emulator: Emulator,
    deliveries: Deliveries,
    create_calls: CreateCalls,
) -> None:
    # No transaction: the save commits on its own, then the binding's call gets a transaction
    # of its own, so an unreachable Cloud Tasks leaves it as a row instead of losing it.
    parcel = Parcel.objects.create(note="autocommit")

    row = left_row()
    assert row.task_name == "tests.oncommit.jobs.parcel_created"
    assert Parcel.objects.filter(pk=parcel.pk).exists()

    relay_then_ran_once(down, running_emulator, create_calls, parcel, row)
