"""Views for the ATOMIC_REQUESTS tests: they defer tasks and report what they saw."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse

from tests.models import Order, Parcel

from .jobs import ping, read_order

#: Handles the views deferred, so a test can check them once the response is back.
HANDLES: list[object] = []


def create_order(request: HttpRequest) -> JsonResponse:
    order = Order.objects.create(status=Order.Status.PAID)
    handle = read_order(order.pk).delay()
    ping("from the view").delay()
    HANDLES.append(handle)
    return JsonResponse(
        {"order": order.pk, "in_atomic_block": connection.in_atomic_block, "state": handle.state}
    )


def create_then_fail(request: HttpRequest) -> JsonResponse:
    order = Order.objects.create(status=Order.Status.CANCELLED)
    HANDLES.append(read_order(order.pk).delay())
    raise RuntimeError("the view failed after deferring a task")


def ship_parcel(request: HttpRequest, pk: int) -> JsonResponse:
    parcel = Parcel.objects.get(pk=pk)
    parcel.status = "shipped"
    parcel.save()
    # FieldTracker has already forgotten the change: a handler reading it at commit sees none.
    return JsonResponse({"tracker_changed_after_save": parcel.tracker.changed()})
