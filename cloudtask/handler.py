"""What the endpoint does with a request: authenticate, decode, route, run, answer.

Cloud Tasks retries every answer outside 200-299, so the status codes here are the retry policy:
2xx when retrying cannot help (success, Discard, a vanished model row, attempts exhausted), 5xx
when it may (the task raised, Retry), 4xx for requests that should never have been sent.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
    HttpResponseNotFound,
)

from . import registry, signals
from .backends.base import TaskMessage
from .conf import CloudTaskSettings, get_settings
from .exceptions import Discard, InvalidTaskRequest, ObjectDeleted, Retry, UnknownTask
from .request import CloudTaskRequest
from .serialization import decode_arguments, parse_envelope
from .signing import META_KEY, verify

logger = logging.getLogger("cloudtask")

#: WSGI environ keys set on requests built in this process (run_message): they never crossed a
#: network. HTTP headers arrive as HTTP_* keys, so a client cannot forge a dotted key.
IN_PROCESS_KEY = "cloudtask.in_process"
#: Set by run_message(propagate=True): a task's exception goes to the caller (immediate backend).
PROPAGATE_KEY = "cloudtask.propagate"

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
        from .oidc import verify_bearer

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


def _exhausted(task_max: int | None, request: CloudTaskRequest) -> bool:
    return task_max is not None and request.retry_count + 1 >= task_max


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
    ct_request = CloudTaskRequest.from_http(request, task)
    try:
        args, kwargs = decode_arguments(raw_args, raw_kwargs)
    except InvalidTaskRequest as exc:
        logger.warning("Malformed arguments for task %s: %s", task.name, exc)
        return HttpResponseBadRequest("malformed task arguments")
    except ObjectDeleted as exc:
        # Retrying cannot bring a deleted row back: answer 2xx so Cloud Tasks stops.
        logger.warning("Task %s not run: %s", task.name, exc)
        signals.task_failed.send(sender=task, request=ct_request, exception=exc, final=True)
        return HttpResponse("object deleted; not retried", content_type="text/plain")
    return run(task, ct_request, args, kwargs, propagate=PROPAGATE_KEY in request.META)


def run(
    task: Any,
    request: CloudTaskRequest,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    propagate: bool = False,
) -> HttpResponse:
    """Run a decoded task and turn its outcome into the answer Cloud Tasks acts on."""
    signals.task_started.send(sender=task, request=request, args=args, kwargs=kwargs)
    try:
        result = task.func(request, *args, **kwargs)
    except TypeError as exc:
        if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
            return _failed(task, request, exc, propagate)
        # Raised by the call itself, not inside the task: the arguments do not fit the
        # function (checking this before the call would cost every request a bind()).
        logger.warning("Arguments do not fit task %s: %s", task.name, exc)
        error = InvalidTaskRequest(f"Arguments do not fit task {task.name}: {exc}")
        signals.task_failed.send(sender=task, request=request, exception=error, final=False)
        return HttpResponseBadRequest("task arguments do not match")
    except (Discard, ObjectDeleted) as exc:
        logger.info("Task %s (%s) stopped for good: %r", task.name, request.task_name, exc)
        signals.task_failed.send(sender=task, request=request, exception=exc, final=True)
        return HttpResponse("discarded", content_type="text/plain")
    except Exception as exc:
        return _failed(task, request, exc, propagate)
    signals.task_succeeded.send(sender=task, request=request, result=result)
    return HttpResponse("ok", content_type="text/plain")


def _failed(task: Any, request: CloudTaskRequest, exc: Exception, propagate: bool) -> HttpResponse:
    """Log a task's exception, send task_failed and choose the answer that sets the retry."""
    final = _exhausted(task.max_attempts, request)
    attempt = request.retry_count + 1
    if final:
        logger.error(
            "Task %s (%s) failed for good on attempt %d of %d; not retried.",
            task.name,
            request.task_name,
            attempt,
            task.max_attempts,
            exc_info=exc,
        )
    elif isinstance(exc, Retry):
        logger.info("Task %s (%s) asked to retry: %s", task.name, request.task_name, exc)
    else:
        logger.error(
            "Task %s (%s) failed on attempt %d; Cloud Tasks will retry.",
            task.name,
            request.task_name,
            attempt,
            exc_info=exc,
        )
    signals.task_failed.send(sender=task, request=request, exception=exc, final=final)
    if propagate:
        raise exc
    if final:
        return HttpResponse("failed for good; not retried", content_type="text/plain")
    if isinstance(exc, Retry):
        response = HttpResponse("retry", status=503, content_type="text/plain")
        if exc.after is not None:
            response["Retry-After"] = str(math.ceil(exc.after))
        return response
    return HttpResponse("task failed", status=500, content_type="text/plain")


def build_request(
    message: TaskMessage, cloudtasks_headers: Mapping[str, str] | None = None
) -> HttpRequest:
    """A Django request as Cloud Tasks would deliver message (for in-process runs)."""
    parts = urlsplit(message.url or "http://localhost/")
    if cloudtasks_headers is None:
        eta = message.schedule_time or datetime.now(UTC)
        cloudtasks_headers = {
            "X-CloudTasks-QueueName": message.queue,
            "X-CloudTasks-TaskName": message.task_id or uuid.uuid4().hex,
            "X-CloudTasks-TaskRetryCount": "0",
            "X-CloudTasks-TaskExecutionCount": "0",
            "X-CloudTasks-TaskETA": f"{eta.timestamp():.6f}",
        }
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": parts.path or "/",
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or "localhost",
        "SERVER_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": parts.scheme or "http",
        "wsgi.input": io.BytesIO(message.body),
        "CONTENT_LENGTH": str(len(message.body)),
        "HTTP_USER_AGENT": "Google-Cloud-Tasks",
    }
    for key, value in {**message.headers, **cloudtasks_headers}.items():
        meta = key.upper().replace("-", "_")
        if meta in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[meta] = value
        else:
            environ["HTTP_" + meta] = value
    environ[IN_PROCESS_KEY] = True
    return WSGIRequest(environ)


def run_message(
    message: TaskMessage,
    *,
    cloudtasks_headers: Mapping[str, str] | None = None,
    propagate: bool = False,
) -> HttpResponse:
    """Deliver message in-process through the real endpoint view (same auth, decoding, routing,
    running and status codes). With propagate=True a task's exception (except Discard and
    ObjectDeleted) is raised to the caller instead of becoming a 500."""
    from .views import task_endpoint

    request = build_request(message, cloudtasks_headers)
    if propagate:
        request.META[PROPAGATE_KEY] = True
    response: HttpResponse = task_endpoint(request)
    return response


def run_inline(call: Any) -> Any:
    """Run a TaskCall in this process right now (TaskCall.execute): no encoding, no endpoint."""
    task = call.task
    http_request = HttpRequest()
    http_request.method = "POST"
    request = CloudTaskRequest(
        http_request,
        task=task,
        queue_name=call.queue,
        task_name=None,
        headers={},
        is_local=True,
    )
    signals.task_started.send(sender=task, request=request, args=call.args, kwargs=call.kwargs)
    try:
        result = task.func(request, *call.args, **call.kwargs)
    except Exception as exc:
        signals.task_failed.send(sender=task, request=request, exception=exc, final=True)
        raise
    signals.task_succeeded.send(sender=task, request=request, result=result)
    return result
