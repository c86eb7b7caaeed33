"""What the endpoint does with a request: authenticate, parse, route, execute, answer.

Cloud Tasks retries every answer outside 200-299, so the status codes here are the retry policy:
2xx when retrying cannot help (success, Discard, a vanished model row, attempts exhausted), 5xx
when it may (the task raised, Retry), 4xx for requests that should never have been sent. The
task itself runs in cloudtask.executor, the one executor every path shares.
"""

from __future__ import annotations

import logging
import math
import threading

from django.conf import settings as django_settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
    HttpResponseNotFound,
)

from . import registry
from .conf import CloudTaskSettings, get_settings
from .exceptions import InvalidTaskRequest, UnknownTask
from .executor import Execution, Outcome, execute_encoded
from .oidc import verify_bearer
from .request import CloudTaskRequest
from .serialization import parse_envelope
from .signing import META_KEY, verify
from .transports.local import ERROR_ATTRIBUTE, IN_PROCESS_KEY

logger = logging.getLogger("cloudtask")

_warned_unauthenticated = False
_warn_lock = threading.Lock()


def _warn_unauthenticated_once() -> None:
    global _warned_unauthenticated
    if _warned_unauthenticated:
        return
    with _warn_lock:
        if not _warned_unauthenticated:
            _warned_unauthenticated = True
            logger.warning(
                "cloudtask endpoint is running tasks WITHOUT AUTHENTICATION: anyone who can reach "
                'it can run any task. Set CLOUDTASK["SECRET"] and/or CLOUDTASK["OIDC_VERIFY"].'
            )


def authenticate(
    request: HttpRequest, settings: CloudTaskSettings, body: bytes | None = None
) -> str | None:
    """None when the request may run, else the reason it may not (answered 403)."""
    meta = request.META
    in_process = IN_PROCESS_KEY in meta
    if settings.secrets and not verify(
        request.body if body is None else body, meta.get(META_KEY), settings
    ):
        return "missing or wrong X-CloudTask-Signature"
    # An in-process request carries no OIDC token (no Cloud Tasks sent it); its signature, if a
    # SECRET is set, was still checked above.
    if settings.oidc_verify and not in_process:
        reason = verify_bearer(meta.get("HTTP_AUTHORIZATION"), settings)
        if reason:
            return reason
    if not settings.authenticated and not in_process:
        if not (settings.allow_unauthenticated or django_settings.DEBUG):
            return (
                'no authentication is configured (CLOUDTASK["SECRET"] or CLOUDTASK["OIDC_VERIFY"])'
                ' and DEBUG is off; set one, or CLOUDTASK["ALLOW_UNAUTHENTICATED"] = True'
            )
        _warn_unauthenticated_once()
    return None


def handle(request: HttpRequest) -> HttpResponse:
    """The endpoint: answer one delivery from Cloud Tasks."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    settings = get_settings()
    body = request.body
    reason = authenticate(request, settings, body)
    if reason is not None:
        logger.warning(
            "Refused task request from %s: %s.", request.META.get("REMOTE_ADDR", "?"), reason
        )
        return HttpResponseForbidden("forbidden")
    try:
        name, raw_args, raw_kwargs = parse_envelope(body)
    except InvalidTaskRequest as exc:
        logger.warning("Malformed task request: %s", exc)
        return HttpResponseBadRequest("malformed task envelope")
    try:
        task = registry.get(name)
    except UnknownTask as exc:
        logger.warning("%s", exc)
        return HttpResponseNotFound("unknown task")
    execution = execute_encoded(
        task, CloudTaskRequest.from_http(request, task), raw_args, raw_kwargs
    )
    return respond(execution)


_TEXT = "text/plain"


def respond(execution: Execution) -> HttpResponse:
    """The answer that makes Cloud Tasks do what the outcome needs."""
    outcome = execution.outcome
    if outcome is Outcome.SUCCEEDED:
        return HttpResponse("ok", content_type=_TEXT)
    if outcome is Outcome.DISCARDED:
        return HttpResponse("discarded; not retried", content_type=_TEXT)
    if outcome is Outcome.REJECTED:
        return HttpResponseBadRequest("task arguments do not match", content_type=_TEXT)
    if outcome is Outcome.EXHAUSTED:
        response = HttpResponse("failed for good; not retried", content_type=_TEXT)
    elif outcome is Outcome.RETRY:
        response = HttpResponse("retry", status=503, content_type=_TEXT)
        if execution.retry_after is not None:
            response["Retry-After"] = str(math.ceil(execution.retry_after))
    else:
        response = HttpResponse("task failed", status=500, content_type=_TEXT)
    # For an in-process caller (the immediate transport, cloudtask.testing): the exception
    # itself, to re-raise with its traceback. Never sent over HTTP.
    setattr(response, ERROR_ATTRIBUTE, execution.error)
    return response
