"""Tasks the cloudtask.testing tests send. Imported by those tests, which registers them."""

from __future__ import annotations

from typing import Any

from cloudtask import ARGS_HASH, CloudTaskRequest, on_commit_task, task
from tests.models import Order, TaskRecord


@task
def write_record(request: CloudTaskRequest, label: str, payload: dict[str, Any]) -> str:
    TaskRecord.objects.create(
        label=label,
        payload={**payload, "retry_count": request.retry_count, "queue": request.queue_name},
    )
    return label


@task(queue="flaky", max_attempts=3)
def fails_first_attempt(request: CloudTaskRequest, label: str) -> str:
    TaskRecord.objects.create(label=label, payload={"retry_count": request.retry_count})
    if request.retry_count == 0:
        raise RuntimeError(f"{label}: first attempt fails")
    return label


@task
def fan_out(request: CloudTaskRequest, count: int) -> None:
    for i in range(count):
        write_record(f"child-{i}", {"i": i}).delay()


@task(named=ARGS_HASH)
def once_per_key(request: CloudTaskRequest, key: str) -> None:
    TaskRecord.objects.create(label=f"once-{key}")


@on_commit_task
def note_order(request: CloudTaskRequest, order: Order, note: str) -> None:
    order.note = note
    order.save(update_fields=["note"])


@task
def describe_order(request: CloudTaskRequest, order: Order, note: str) -> str:
    return f"{order.pk}: {order.status} {note}"
