"""Tasks and bindings the on-commit tests use (imported by them; bound to Parcel only).

The bindings here are declared at import with the decorator and function forms, exactly as an
application's tasks.py would. They fire only for tests.models.Parcel, which no other suite uses.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from cloudtask import CloudTaskRequest, bind, on_commit_task, task
from tests.models import Order, Parcel, TaskRecord


class Deliveries:
    """What the tasks below were delivered, from any thread, with a condition-based wait."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def add(self, kind: str, /, **values: Any) -> None:
        with self.cond:
            self.items.append((kind, values))
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            self.items.clear()

    def of(self, label: str) -> list[dict[str, Any]]:
        with self.cond:
            return [v for name, v in self.items if name == label]

    def wait(self, label: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [v for name, v in self.items if name == label]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{label} delivered {len(found)} times, not {count}")
                self.cond.wait(remaining)


DELIVERIES = Deliveries()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- plain calls -------------------------------------------------------------------------------


@on_commit_task
def ping(request: CloudTaskRequest, label: str, payload: Any = None) -> None:
    DELIVERIES.add("ping", label=label, payload=payload, task_name=request.task_name)


@on_commit_task(using="other")
def ping_other(request: CloudTaskRequest, label: str) -> None:
    DELIVERIES.add("ping_other", label=label)


@task
def plain_ping(request: CloudTaskRequest, label: str) -> None:
    DELIVERIES.add("plain_ping", label=label)


@on_commit_task
def read_order(request: CloudTaskRequest, order_id: int) -> None:
    """Reads the row its caller wrote: it must run after the commit to find it."""
    order = Order.objects.get(pk=order_id)
    TaskRecord.objects.create(
        label="read_order", payload={"order": order_id, "status": order.status}
    )


# -- bindings on Parcel (decorator form) ---------------------------------------------------------


@on_commit_task(on=post_save, sender=Parcel, fields=["status"], created=False)
def parcel_status_changed(
    request: CloudTaskRequest, instance: Parcel, changes: dict[str, list[Any]]
) -> None:
    # instance is fetched fresh when the task runs: it shows the committed row.
    TaskRecord.objects.create(
        label="parcel_status_changed",
        payload={"pk": instance.pk, "status": instance.status, "changes": _jsonable(changes)},
    )


@on_commit_task(sender=Parcel, created=True, when=lambda instance, **kw: instance.note != "quiet")
def parcel_created(request: CloudTaskRequest, instance: Parcel, changes: dict[str, Any]) -> None:
    TaskRecord.objects.create(
        label="parcel_created", payload={"pk": instance.pk, "changes": _jsonable(changes)}
    )


@on_commit_task(sender=Parcel, fields=["weight"], created=False, coalesce=False)
def parcel_weighed(request: CloudTaskRequest, pk: int, changes: dict[str, Any]) -> None:
    TaskRecord.objects.create(
        label="parcel_weighed", payload={"pk": pk, "changes": _jsonable(changes)}
    )


@on_commit_task(sender=Parcel, deleted=True)
def parcel_deleted(request: CloudTaskRequest, pk: int, changes: dict[str, Any]) -> None:
    TaskRecord.objects.create(
        label="parcel_deleted", payload={"pk": pk, "changes": _jsonable(changes)}
    )


# -- bindings on Parcel (function form) ----------------------------------------------------------


@task
def parcel_tagged(
    request: CloudTaskRequest,
    instance: Parcel,
    action: str,
    pk_set: list[int] | None,
    model: str,
    reverse: bool,
) -> None:
    TaskRecord.objects.create(
        label="parcel_tagged",
        payload={
            "pk": instance.pk,
            "action": action,
            "pk_set": pk_set,
            "model": model,
            "reverse": reverse,
            "tags": sorted(instance.tags.values_list("pk", flat=True)),
        },
    )


TAGGED = bind(m2m_changed, sender=Parcel.tags.through, task=parcel_tagged)


@task
def parcel_note_set(request: CloudTaskRequest, /, **offered: Any) -> None:
    TaskRecord.objects.create(
        label="parcel_note_set", payload={"keys": sorted(offered), "event": offered["event"]}
    )


NOTE = bind(
    post_save,
    sender="tests.Parcel",
    task=parcel_note_set,
    when=lambda instance, created, **kw: not created and instance.note.startswith("note:"),
)


@task
def parcel_gone_generic(request: CloudTaskRequest, pk: int) -> None:
    DELIVERIES.add("parcel_gone_generic", pk=pk)


GONE = bind(post_delete, sender=Parcel, task=parcel_gone_generic)
