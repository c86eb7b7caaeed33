"""The dispatcher seam's write(): called inside the transaction, right before its COMMIT, with
the deferred calls that survived; an exception there fails the commit, and nothing is sent.

A recording dispatcher stands in for the outbox (whose rows tests/outbox checks); it sends
through the real emulator to the live server like the default one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, connections, transaction

from cloudtask.dispatch import ConcurrentDispatcher, TaskHandle, set_dispatcher
from tests.models import Order, Parcel

from .conftest import records
from .jobs import Deliveries, ping

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@dataclass
class Write:
    using: str
    #: (task's short name, first positional argument or None) of each handle.
    calls: list[tuple[str, Any]]
    in_atomic_block: bool
    in_transaction: bool
    #: Orders this connection saw at that moment (the transaction's own writes included).
    orders: int


def _first_arg(handle: TaskHandle) -> Any:
    args = getattr(handle.call, "args", ())
    return args[0] if args else None


class Recording(ConcurrentDispatcher):
    """Asks for a write of every call, records each write, and can fail it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Write] = []
        self.fail: Exception | None = None

    def prepare(self, handle: TaskHandle, using: str) -> bool:
        return True

    def write(self, handles: Sequence[TaskHandle], using: str) -> None:
        connection = connections[using]
        self.writes.append(
            Write(
                using,
                [(h.message.task_name.rsplit(".", 1)[-1], _first_arg(h)) for h in handles],
                connection.in_atomic_block,
                not connection.get_autocommit(),
                Order.objects.using(using).count(),
            )
        )
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def recording(emulator: Any) -> Iterator[Recording]:
    dispatcher = Recording()
    previous = set_dispatcher(dispatcher)
    yield dispatcher
    set_dispatcher(previous)
    dispatcher.close()


def test_write_gets_the_surviving_calls_inside_the_transaction_before_the_commit(
    recording: Recording, emulator: Any, deliveries: Deliveries
) -> None:
    parcel = Parcel.objects.create(weight=Decimal("1.00"))
    assert emulator.wait_idle()  # its creation's binding call was sent at once
    recording.writes.clear()
    with transaction.atomic():
        Order.objects.create(status=Order.Status.PAID)
        ping("kept").delay()
        with suppress(Boom), transaction.atomic():
            ping("rolled back").delay()
            raise Boom
        parcel.status = "paid"
        parcel.save()
        parcel.status = "shipped"  # supersedes the "paid" call of the coalescing binding
        parcel.save()
        assert recording.writes == []

    (write,) = recording.writes
    # Not the rolled-back call, and one call of the coalescing binding: the latest.
    assert write.calls == [("ping", "kept"), ("parcel_status_changed", None)]
    # Out of the atomic block, but the transaction still open, with its own order in it.
    assert (write.using, write.in_atomic_block, write.in_transaction, write.orders) == (
        "default",
        False,
        True,
        1,
    )
    assert [d["label"] for d in deliveries.wait("ping", 1)] == ["kept"]
    assert emulator.wait_idle()
    assert records("parcel_status_changed") == [
        {"pk": parcel.pk, "status": "shipped", "changes": {"status": ["new", "shipped"]}}
    ]


def test_a_failing_write_fails_the_commit_and_sends_nothing(
    recording: Recording, emulator: Any, deliveries: Deliveries
) -> None:
    recording.fail = Boom("the store is gone")
    with (
        pytest.raises(DatabaseError, match="the store is gone") as raised,
        transaction.atomic(),
    ):
        Order.objects.create(status=Order.Status.PAID)
        handle = ping("never sent").delay()

    # Any exception of the write becomes a DatabaseError, so that Django rolls back.
    assert isinstance(raised.value.__cause__, Boom)
    assert handle.state == "dropped"
    assert not Order.objects.exists()
    assert len(recording.writes) == 1
    assert emulator.wait_idle()
    assert deliveries.of("ping") == []

    # The connection commits the next transaction normally.
    recording.fail = None
    with transaction.atomic():
        after = ping("after").delay()
    assert after.state == "sent"
    assert [d["label"] for d in deliveries.wait("ping", 1)] == ["after"]
    assert emulator.wait_idle()


def test_a_transaction_without_calls_writes_nothing(recording: Recording) -> None:
    with transaction.atomic():
        Order.objects.create(status=Order.Status.NEW)
    with pytest.raises(Boom), transaction.atomic():
        ping("rolled back").delay()
        raise Boom
    with transaction.atomic():
        Order.objects.create(status=Order.Status.NEW)

    assert recording.writes == []


def test_each_commit_of_a_manual_transaction_writes_its_own_new_calls(
    recording: Recording, emulator: Any, deliveries: Deliveries
) -> None:
    # Autocommit off, Django keeps the callables through every commit until
    # set_autocommit(True): the second block's calls join the first block's batch, and must be
    # written at the second commit (the first one's calls not again).
    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            Order.objects.create(status=Order.Status.PAID)
            ping("first").delay()
        transaction.commit()
        with transaction.atomic():
            Order.objects.create(status=Order.Status.PAID)
            ping("second").delay()
            ping("third").delay()
        transaction.commit()
        transaction.commit()
    finally:
        transaction.set_autocommit(True)

    assert [(w.calls, w.in_transaction, w.orders) for w in recording.writes] == [
        ([("ping", "first")], True, 1),
        ([("ping", "second"), ("ping", "third")], True, 2),
    ]
    labels = sorted(d["label"] for d in deliveries.wait("ping", 3))
    assert labels == ["first", "second", "third"]
    assert emulator.wait_idle()
