"""What the buttons and the demo do: plain functions, so both share one code path."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import transaction

from cloudtask.tasks import TaskHandle

from .models import Order
from .tasks import charge_payment, rebuild_daily_report, send_confirmation, send_reminder

#: Seconds between pressing "Remind" and the reminder's delivery.
REMINDER_DELAY = 5.0


class RolledBack(Exception):
    """Raised inside place_order_and_roll_back() to abort its transaction."""


def place_order(customer: str, total: Decimal) -> Order:
    """Create an order; its tasks leave only once the row is committed."""
    with transaction.atomic():
        order = Order.objects.create(customer=customer, total=total)
        # An @on_commit_task: .delay() inside atomic() waits for the commit.
        send_confirmation(order).delay()
        # A plain @task sent the same transaction-safe way, explicitly.
        charge_payment(order).delay_on_commit()
    return order


def place_order_and_roll_back(customer: str, total: Decimal) -> list[TaskHandle]:
    """Create an order and send its tasks, then roll back: nothing is sent, no row remains."""
    handles: list[TaskHandle] = []
    try:
        with transaction.atomic():
            order = Order.objects.create(customer=customer, total=total)
            handles.append(send_confirmation(order).delay())
            handles.append(charge_payment(order).delay_on_commit())
            raise RolledBack(f"order #{order.pk} rolled back on purpose")
    except RolledBack:
        pass
    return handles


def change_status(order: Order, status: str) -> Order:
    """Save a new status; the post_save binding sends order_status_changed after the commit."""
    with transaction.atomic():
        order.status = status
        order.save()
    return order


def schedule_reminder(order: Order, seconds: float) -> TaskHandle:
    return send_reminder(order).schedule(countdown=seconds)


def request_daily_report(day: date) -> TaskHandle:
    """Queue the day's report; TaskAlreadyExists if that day's report task is already known."""
    return rebuild_daily_report(day).delay()
