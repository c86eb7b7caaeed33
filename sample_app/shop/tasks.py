"""The sample shop's tasks: one of each kind cloudtask offers.

cloudtask imports this module at start-up (every installed app's ``tasks`` module), so the
endpoint knows each task by its registered name, e.g. ``shop.tasks.send_confirmation``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.utils import timezone

from cloudtask import ARGS_HASH, CloudTaskRequest, Retry, on_commit_task, task

from .models import Order


class PaymentGatewayTimeout(Retry):
    """The simulated payment provider times out on every first attempt.

    A timeout is expected and worth another try, so it is a ``cloudtask.Retry``: the endpoint
    answers 503 and Cloud Tasks retries after the queue's backoff, and cloudtask logs it as one
    WARNING line. Any other exception is a crash: 500, logged as an ERROR with its traceback.
    """


@on_commit_task
def send_confirmation(request: CloudTaskRequest, order: Order) -> str:
    """An on-commit task: sent only when the transaction that created the order commits."""
    order.confirmed_at = timezone.now()
    # update_fields leaves status alone, so the status binding below does not fire.
    order.save(update_fields=["confirmed_at"])
    return f"confirmation e-mail for order #{order.pk} sent to {order.customer}"


@task(max_attempts=5)
def charge_payment(request: CloudTaskRequest, order: Order) -> str:
    """A task that fails on purpose on its first attempt and succeeds when Cloud Tasks retries
    it: the demo's way to show a retry."""
    if request.retry_count == 0:
        raise PaymentGatewayTimeout(f"payment gateway timed out charging order #{order.pk}")
    if order.status == Order.Status.NEW:
        order.status = Order.Status.PAID
        order.save()  # a status change: the binding sends order_status_changed
    return f"charged {order.total} for order #{order.pk} on attempt {request.retry_count + 1}"


@on_commit_task(sender=Order, fields=["status"], updated=True)
def order_status_changed(
    request: CloudTaskRequest, instance: Order, changes: dict[str, Any]
) -> str:
    """A post_save binding: sent after the commit of any save that changed Order.status.

    ``changes`` was captured when the save happened (the tracker resets right after it), so
    the task knows the old status even though the row now holds only the new one.
    """
    old, new = changes["status"]
    return f"order #{instance.pk} went {old} -> {new}: customer notified"


@task
def send_reminder(request: CloudTaskRequest, order: Order) -> str:
    """A scheduled task: the page and the demo send it with .schedule(countdown=...)."""
    order.reminded_at = timezone.now()
    order.save(update_fields=["reminded_at"])
    late = (order.reminded_at - request.eta).total_seconds()
    return f"reminder for order #{order.pk} delivered {late:+.2f} s from its schedule"


@task(named=ARGS_HASH)
def rebuild_daily_report(request: CloudTaskRequest, day: date) -> str:
    """A named task: its id is a hash of its arguments, so one report per day is queued."""
    orders = Order.objects.filter(created__date=day)
    paid = orders.exclude(status__in=[Order.Status.NEW, Order.Status.CANCELLED]).count()
    return f"report for {day}: {orders.count()} orders, {paid} paid or shipped"


@task
def nightly_digest(request: CloudTaskRequest) -> str:
    """A scheduled task: CLOUDTASK["SCHEDULES"] (settings.py) fires it every night, through
    Cloud Scheduler in production and the embedded emulator locally."""
    day = timezone.localdate(request.schedule_time or timezone.now())
    orders = Order.objects.filter(created__date=day).count()
    return f"digest for {day}: orders placed {orders} (fired by schedule {request.schedule_name})"
