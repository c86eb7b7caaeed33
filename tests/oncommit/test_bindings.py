"""Model-signal bindings: declared once, fired on commit with the change captured at save time."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core import serializers
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import Signal

from cloudtask import (
    CloudTaskRequest,
    ConfigurationError,
    bind,
    on_commit_task,
    signals,
    task,
    unbind,
)
from cloudtask.models import OutboxMessage
from tests.models import Order, Parcel, Tag, TaskRecord, Untracked

from .conftest import records
from .jobs import DELIVERIES

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def test_the_task_sees_the_change_made_in_the_transaction(emulator: Any, enqueued: Any) -> None:
    parcel = Parcel.objects.create(weight=Decimal("1.50"))
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.status = "paid"
        parcel.save()
        # Still uncommitted: nothing sent.
        assert enqueued.of("parcel_status_changed") == 0
    assert enqueued.of("parcel_status_changed") == 1

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == [
        {"pk": parcel.pk, "status": "paid", "changes": {"status": ["new", "paid"]}}
    ]


def test_in_autocommit_the_binding_sends_at_the_save(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    parcel.status = "shipped"
    parcel.save()

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == [
        {"pk": parcel.pk, "status": "shipped", "changes": {"status": ["new", "shipped"]}}
    ]


def test_a_save_that_does_not_touch_the_fields_sends_nothing(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.note = "no status change"
        parcel.save()

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == []


def test_saves_of_one_instance_coalesce_into_one_task(emulator: Any) -> None:
    parcel = Parcel.objects.create(weight=Decimal("1.00"))
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    sent: list[str] = []
    rows: list[list[str]] = []

    def rows_at_send(sender: Any, handle: Any, **kwargs: Any) -> None:
        # After each send and before the rows are deleted (from the pool's own connection).
        sent.append(handle.task_id)
        rows.append(sorted(OutboxMessage.objects.values_list("task_id", flat=True)))

    signals.task_enqueued.connect(rows_at_send)
    try:
        with transaction.atomic():
            parcel.status = "paid"
            parcel.save()
            parcel.weight = Decimal("2.00")
            parcel.save()
            parcel.status = "shipped"
            parcel.save()
    finally:
        signals.task_enqueued.disconnect(rows_at_send)
    # The commit wrote a row for each of the two calls sent, none for a superseded version.
    assert rows == [sorted(sent)] * 2

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == [
        {
            "pk": parcel.pk,
            "status": "shipped",
            "changes": {"status": ["new", "shipped"], "weight": ["1.00", "2.00"]},
        }
    ]
    # parcel_weighed asked for one task per save.
    assert [r["changes"] for r in records("parcel_weighed")] == [{"weight": ["1.00", "2.00"]}]
    # The superseded versions left nothing in the outbox for a relay to send later.
    assert not OutboxMessage.objects.exists()


def test_one_task_per_instance_when_several_instances_change(emulator: Any) -> None:
    a, b = Parcel.objects.create(), Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        for parcel, status in ((a, "paid"), (b, "paid"), (a, "shipped")):
            parcel.status = status
            parcel.save()

    assert emulator.wait_idle()
    got = {r["pk"]: r["changes"]["status"] for r in records("parcel_status_changed")}
    assert got == {a.pk: ["new", "shipped"], b.pk: ["new", "paid"]}


def test_coalescing_respects_a_rolled_back_savepoint(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.status = "paid"
        parcel.save()
        try:
            with transaction.atomic():
                parcel.status = "cancelled"
                parcel.save()
                raise Boom
        except Boom:
            pass

    assert emulator.wait_idle()
    assert [r["changes"] for r in records("parcel_status_changed")] == [{"status": ["new", "paid"]}]


def test_a_change_undone_in_the_same_transaction_sends_nothing(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.status = "paid"
        parcel.save()
        parcel.status = "new"
        parcel.save()

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == []


def test_one_task_per_save_when_the_binding_asks(emulator: Any) -> None:
    parcel = Parcel.objects.create(weight=Decimal("1.00"))
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        for weight in ("2.00", "3.00"):
            parcel.weight = Decimal(weight)
            parcel.save()

    assert emulator.wait_idle()
    # Sent concurrently at commit: delivery order is not defined.
    assert sorted(r["changes"]["weight"] for r in records("parcel_weighed")) == [
        ["1.00", "2.00"],
        ["2.00", "3.00"],
    ]


def test_a_rolled_back_save_sends_nothing(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with pytest.raises(Boom), transaction.atomic():
        parcel.status = "paid"
        parcel.save()
        raise Boom

    assert emulator.wait_idle()
    assert records("parcel_status_changed") == []


def test_created_condition_and_when(emulator: Any) -> None:
    with transaction.atomic():
        loud = Parcel.objects.create(status="new", weight=Decimal("4.00"))
        Parcel.objects.create(note="quiet")
        loud.status = "paid"
        loud.save()

    assert emulator.wait_idle()
    # Created then changed in one transaction: one "created" task with the final values.
    (created,) = records("parcel_created")
    assert created == {
        "pk": loud.pk,
        "changes": {"status": [None, "paid"], "weight": [None, "4.00"]},
    }
    assert records("parcel_status_changed") == []  # created=False


def test_deleted_gets_the_pk_and_the_last_values(emulator: Any, deliveries: Any) -> None:
    parcel = Parcel.objects.create(status="shipped", weight=Decimal("9.00"))
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    pk = parcel.pk
    with transaction.atomic():
        parcel.delete()

    assert emulator.wait_idle()
    assert records("parcel_deleted") == [
        {"pk": pk, "changes": {"status": ["shipped", None], "weight": ["9.00", None]}}
    ]
    assert deliveries.of("parcel_gone_generic") == [{"pk": pk}]


def test_m2m_changed_passes_action_and_pk_set(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    red, blue = Tag.objects.create(label="red"), Tag.objects.create(label="blue")
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.tags.add(blue, red)
    assert emulator.wait_idle()
    with transaction.atomic():
        parcel.tags.clear()

    assert emulator.wait_idle()
    assert records("parcel_tagged") == [
        {
            "pk": parcel.pk,
            "action": "post_add",
            "pk_set": sorted([red.pk, blue.pk]),
            "model": "tests.tag",
            "reverse": False,
            "tags": sorted([red.pk, blue.pk]),
        },
        {
            "pk": parcel.pk,
            "action": "post_clear",
            "pk_set": None,
            "model": "tests.tag",
            "reverse": False,
            "tags": [],
        },
    ]


def test_a_task_with_var_keyword_receives_every_offered_argument(emulator: Any) -> None:
    parcel = Parcel.objects.create()
    assert emulator.wait_idle()  # let setup deliveries finish: SQLite has one writer
    with transaction.atomic():
        parcel.note = "note: fragile"
        parcel.save()

    assert emulator.wait_idle()
    assert records("parcel_note_set") == [
        {"keys": ["changes", "created", "event", "instance", "pk"], "event": "updated"}
    ]


def test_raw_saves_do_not_fire_unless_the_binding_asks(emulator: Any) -> None:
    fired: list[int] = []

    @task(name="tests.oncommit.raw_ok")
    def raw_ok(request: CloudTaskRequest, pk: int) -> None:
        DELIVERIES.add("raw_ok", pk=pk)

    binding = bind(post_save, sender=Parcel, task=raw_ok, raw=True)
    try:
        data = serializers.serialize("json", [Parcel(pk=991, status="paid")])
        with transaction.atomic():
            for obj in serializers.deserialize("json", data):
                obj.save()
                fired.append(obj.object.pk)
    finally:
        unbind(binding)

    assert emulator.wait_idle()
    assert DELIVERIES.wait("raw_ok") == [{"pk": 991}]
    assert records("parcel_created") == []  # the decorator bindings skip raw saves


def test_any_other_signal_passes_its_arguments_by_name(emulator: Any, enqueued: Any) -> None:
    order_shipped = Signal()

    @task(name="tests.oncommit.shipped")
    def shipped(request: CloudTaskRequest, order: Order, carrier: str) -> None:
        TaskRecord.objects.create(label="shipped", payload={"order": order.pk, "carrier": carrier})

    binding = bind(order_shipped, task=shipped)
    try:
        with transaction.atomic():
            order = Order.objects.create()
            order_shipped.send(sender=Order, order=order, carrier="swiss post")
            assert enqueued.of("shipped") == 0
    finally:
        unbind(binding)

    assert emulator.wait_idle()
    assert records("shipped") == [{"order": order.pk, "carrier": "swiss post"}]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_save_on_another_database_waits_for_that_commit(emulator: Any, enqueued: Any) -> None:
    with transaction.atomic(using="other"):
        parcel = Parcel.objects.using("other").create(weight=Decimal("1.00"))
        parcel.weight = Decimal("5.00")
        with transaction.atomic():  # a transaction on default holds nothing of other's
            parcel.save(using="other")
        assert enqueued.of("parcel_weighed") == 0
    assert enqueued.of("parcel_weighed") == 1

    assert emulator.wait_idle()
    assert [r["changes"] for r in records("parcel_weighed")] == [{"weight": ["1.00", "5.00"]}]


def test_fields_on_a_model_without_a_tracker_is_a_configuration_error() -> None:
    @task(name="tests.oncommit.untracked")
    def untracked(request: CloudTaskRequest, instance: Untracked) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"needs a FieldTracker on tests\.Untracked"):
        bind(post_save, sender=Untracked, fields=["name"], task=untracked)


def test_an_untracked_field_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"field 'note' is not tracked by tests\.Parcel"):

        @on_commit_task(name="tests.oncommit.note_changed", sender=Parcel, fields=["note"])
        def note_changed(request: CloudTaskRequest, instance: Parcel) -> None:
            pass


def test_a_parameter_the_signal_does_not_provide_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"needs 'instance'.*provides \['changes', 'event', 'pk'\]"
    ):

        @on_commit_task(name="tests.oncommit.needs_instance", sender=Parcel, deleted=True)
        def needs_instance(request: CloudTaskRequest, instance: Parcel) -> None:
            pass
