"""The endpoint's views: task deliveries from Cloud Tasks, and the outbox drain route for Cloud
Scheduler (logic in cloudtask.handler)."""

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import handler


# Outside ATOMIC_REQUESTS: the executor writes execution records in short transactions of their
# own, and a task that wants one transaction for its work and its record says atomic=True.
@transaction.non_atomic_requests
@csrf_exempt
def task_endpoint(request: HttpRequest) -> HttpResponse:
    """Authenticate, parse, route and run one task delivery; see cloudtask.handler."""
    return handler.handle(request)


@transaction.non_atomic_requests
@csrf_exempt
def outbox_drain(request: HttpRequest) -> HttpResponse:
    """Authenticate like a task delivery, then send what is due in the outbox (one relay pass)."""
    return handler.drain(request)
