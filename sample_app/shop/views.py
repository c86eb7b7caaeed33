"""The one page of the sample shop, its JSON state and the buttons' POST endpoints.

Every button is a fetch() POST answering JSON; the page polls /api/state/ to show the orders,
the task log and cloudtask's execution records change as the emulator delivers tasks.

Every time on the page, in the tables and in the buttons' messages, is formatted here by
clock(): HH:MM:SS in the project's TIME_ZONE, whose name the page shows once. The browser never
formats a time, so its own time zone cannot creep in.
"""

from __future__ import annotations

import random
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from cloudtask import TaskAlreadyExists
from cloudtask.models import TaskExecution

from . import services
from .models import Order, TaskLog

#: Execution records the page shows, newest first.
RECENT_EXECUTIONS = 20
CUSTOMERS = ["Ada", "Grace", "Linus", "Margaret", "Guido", "Barbara", "Ken", "Frances"]


def clock(moment: datetime) -> str:
    """A time as the page shows every time: HH:MM:SS in the current time zone (TIME_ZONE)."""
    return timezone.localtime(moment).strftime("%H:%M:%S")


def _clock_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else clock(moment)


def _order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.pk,
        "customer": order.customer,
        "total": str(order.total),
        "status": order.status,
        "created": clock(order.created),
        "confirmed_at": _clock_or_none(order.confirmed_at),
        "reminded_at": _clock_or_none(order.reminded_at),
    }


def _log_json(row: TaskLog) -> dict[str, Any]:
    return {
        "id": row.pk,
        "task": row.task,
        "task_id": row.task_id,
        "queue": row.queue,
        "when": clock(row.started_at),
        "attempt": row.attempt,
        "outcome": row.outcome,
        "duration_ms": round(row.duration_ms, 1),
        "delivered": row.delivered,
        "detail": row.detail,
    }


def _execution_json(row: TaskExecution) -> dict[str, Any]:
    """One task id as cloudtask's execution record tells it (CLOUDTASK["RECORDS"])."""
    return {
        "task": row.task_name,
        "task_id": row.task_id,
        "status": row.status,
        "attempts": row.attempts,
        "when": clock(row.last_started_at),
        "duration_ms": None if row.duration is None else round(row.duration * 1000, 1),
        "error": row.error_type.rsplit(".", 1)[-1] if row.error_type else "",
    }


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "shop/index.html",
        {"statuses": Order.Status.choices, "time_zone": timezone.get_current_timezone_name()},
    )


@require_GET
def state(request: HttpRequest) -> JsonResponse:
    orders = [_order_json(o) for o in Order.objects.all()[:50]]
    log = [_log_json(row) for row in TaskLog.objects.all()[:100]]
    executions = [_execution_json(row) for row in TaskExecution.objects.all()[:RECENT_EXECUTIONS]]
    return JsonResponse({"orders": orders, "log": log, "executions": executions})


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    order = services.place_order(
        customer=random.choice(CUSTOMERS),
        total=Decimal(random.randint(500, 20000)) / 100,
    )
    return JsonResponse(
        {"message": f"Order #{order.pk} committed: confirmation and payment tasks sent."}
    )


@require_POST
def create_order_rolled_back(request: HttpRequest) -> JsonResponse:
    services.place_order_and_roll_back(customer=random.choice(CUSTOMERS), total=Decimal("9.99"))
    return JsonResponse({"message": "Order rolled back: it does not exist, and no task was sent."})


@require_POST
def change_status(request: HttpRequest, pk: int) -> JsonResponse:
    status = request.POST.get("status", "")
    if status not in Order.Status.values:
        return JsonResponse({"message": f"Unknown status {status!r}."}, status=400)
    order = get_object_or_404(Order, pk=pk)
    old = order.status
    services.change_status(order, status)
    if old == status:
        return JsonResponse({"message": f"Order #{pk} is already {status}: no task sent."})
    return JsonResponse({"message": f"Order #{pk}: {old} -> {status}; the status binding fires."})


@require_POST
def remind(request: HttpRequest, pk: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=pk)
    handle = services.schedule_reminder(order, seconds=services.REMINDER_DELAY)
    when = clock(handle.schedule_time) if handle.schedule_time else "now"
    return JsonResponse({"message": f"Reminder for order #{pk} scheduled for {when}."})


@require_POST
def rebuild_report(request: HttpRequest) -> JsonResponse:
    day = timezone.localdate()
    try:
        services.request_daily_report(day)
    except TaskAlreadyExists:
        # The refusal is what this button demonstrates, not an error of the page: a 200 that
        # says so (a 409 would also print a red "Failed to load resource" in the browser console).
        return JsonResponse(
            {"message": f"Report for {day} refused: a task of that name already ran or is queued."}
        )
    return JsonResponse({"message": f"Report for {day} queued (a named task: once per day)."})
