"""The one endpoint Cloud Tasks delivers every task to (logic in cloudtask.handler)."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import handler


@csrf_exempt
def task_endpoint(request: HttpRequest) -> HttpResponse:
    """Authenticate, parse, route and run one task delivery; see cloudtask.handler."""
    return handler.handle(request)
