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
from typing import Any

from django.conf import settings as django_settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
    HttpResponseNotFound,
    JsonResponse,
)
from django.utils import timezone

from . import outbox, records, registry, schedules
from .conf import CloudTaskSettings, get_settings
from .exceptions import (
    ConfigurationError,
    EnqueueError,
    InvalidTaskRequest,
    ObjectDeleted,
    TaskAlreadyExists,
    UnknownTask,
)
from .executor import SUCCESS, Execution, Outcome, execute_encoded
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
    if settings.secrets:
        if not verify(request.body if body is None else body, meta.get(META_KEY), settings):
            return "missing or wrong X-CloudTask-Signature"
        if not settings.oidc_verify:
            return None  # the usual case: signed, and signed is enough
    in_process = IN_PROCESS_KEY in meta
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
        return _undecodable(request, settings, "", exc, "malformed task envelope")
    try:
        task = registry.get(name)
    except UnknownTask as exc:
        return _unknown(request, settings, name, exc)
    # Most deliveries come from Cloud Tasks, not Cloud Scheduler: no header, no look.
    firing = schedules.firing_of(request) if schedules.FIRED_META in request.META else None
    if firing is not None and firing.queue is not None:
        return _enqueue_firing(request, settings, task, firing, raw_args, raw_kwargs)
    execution = execute_encoded(task, _task_request(request, task, firing), raw_args, raw_kwargs)
    if execution is SUCCESS:  # the usual answer, without respond()'s look at the outcome
        return HttpResponse(_OK, content_type=_TEXT)
    if execution.outcome is Outcome.UNDECODABLE:
        assert execution.error is not None
        return _undecodable(request, settings, name, execution.error, "malformed task arguments")
    return respond(execution)


def _task_request(
    request: HttpRequest, task: Any, firing: schedules.Firing | None
) -> CloudTaskRequest:
    """The request a task runs for: a Cloud Tasks delivery, or a schedule's firing run inline
    under the firing's task id (so the execution records run a repeated delivery once)."""
    if firing is None:
        return CloudTaskRequest.from_http(request, task)
    return CloudTaskRequest.from_schedule(
        request, task, task_id=firing.task_id, schedule_time=firing.schedule_time
    )


def _enqueue_firing(
    request: HttpRequest,
    settings: CloudTaskSettings,
    task: Any,
    firing: schedules.Firing,
    raw_args: list[Any],
    raw_kwargs: dict[str, Any],
) -> HttpResponse:
    """A firing of a schedule with a queue: the call goes to that Cloud Tasks queue (its retry
    config, rate limits and deadline then apply) as a task named after the firing, so a
    repeated delivery of the firing is refused by Cloud Tasks and answered 200."""
    try:
        handle = schedules.enqueue_firing(firing, task, raw_args, raw_kwargs)
    except TaskAlreadyExists:
        return HttpResponse("firing already enqueued; not again", content_type=_TEXT)
    except InvalidTaskRequest as exc:
        return _undecodable(request, settings, task.name, exc, "malformed task arguments")
    except ObjectDeleted as exc:
        logger.warning("Schedule %s not enqueued: %s", firing.schedule, exc)
        return HttpResponse("discarded; not retried", content_type=_TEXT)
    except EnqueueError as exc:
        logger.error("Schedule %s could not enqueue task %s: %s", firing.schedule, task.name, exc)
        return HttpResponse("enqueue failed", status=503, content_type=_TEXT)
    except ConfigurationError as exc:
        # The settings, not the firing, are wrong (no URL to send the call to, ...): a 500
        # Cloud Scheduler retries under the job's retry config, with the fix in the log.
        logger.error(
            "Schedule %s could not enqueue task %s on queue %s: %s (a firing sent through a "
            "queue goes to the schedule's url, else the task's url=, else "
            'CLOUDTASK["URL"]; fix CLOUDTASK["SCHEDULES"][%r] or the setting named).',
            firing.schedule,
            task.name,
            firing.queue,
            exc,
            firing.schedule,
        )
        return _logged(
            HttpResponse(
                "schedule misconfigured; not enqueued (see the log)", status=500, content_type=_TEXT
            )
        )
    return HttpResponse(
        f"enqueued as task {handle.task_id} on queue {firing.queue}", content_type=_TEXT
    )


def _dead_letter(request: HttpRequest, reason: str, name: str, error: BaseException) -> int:
    """Keep the delivery as a dead letter; the attempt it was (Cloud Tasks' retry count + 1)."""
    ct = CloudTaskRequest.from_http(request, None)
    attempts = ct.retry_count + 1
    records.dead_letter(
        reason=reason,
        task_id=ct.task_id or "",
        task_name=name,
        queue=ct.queue_name or "",
        body=request.body,
        headers=dict(request.headers),
        attempts=attempts,
        errors=[records.error_entry(error, attempts, timezone.now())],
    )
    return attempts


def _undecodable(
    request: HttpRequest,
    settings: CloudTaskSettings,
    name: str,
    error: BaseException,
    answer: str,
) -> HttpResponse:
    """An authenticated body that can never decode: retrying cannot help. With records on it is
    dead-lettered and answered 2xx, so Cloud Tasks stops; without, a 400."""
    if not settings.records:
        return HttpResponseBadRequest(answer)
    _dead_letter(request, "undecodable", name, error)
    logger.error("Dead-lettered a task request whose body can never decode: %s", error)
    return HttpResponse(f"{answer}; dead-lettered, not retried", content_type=_TEXT)


def _unknown(
    request: HttpRequest, settings: CloudTaskSettings, name: str, error: UnknownTask
) -> HttpResponse:
    """A task no process registered: 404 (a deploy may be rolling out the code that has it),
    dead-lettered once CLOUDTASK["UNKNOWN_TASK_ATTEMPTS"] deliveries found nothing."""
    attempts = CloudTaskRequest.from_http(request, None).retry_count + 1
    if settings.records and attempts >= settings.unknown_task_attempts:
        _dead_letter(request, "unknown_task", name, error)
        logger.error("Dead-lettered task %r after %d deliveries: %s", name, attempts, error)
        return HttpResponse("unknown task; dead-lettered, not retried", content_type=_TEXT)
    # The error names the modules task discovery imported and how to register another one:
    # the usual cause is a task defined outside an app's tasks.py that nothing imported.
    logger.warning("%s", error)
    if not settings.authenticated and IN_PROCESS_KEY not in request.META:
        # Anyone may have sent it (ALLOW_UNAUTHENTICATED, DEBUG): the project's module names
        # stay in the log.
        return HttpResponseNotFound("unknown task; see the log for why", content_type=_TEXT)
    return HttpResponseNotFound(f"unknown task: {error}", content_type=_TEXT)


_TEXT = "text/plain"
#: The answer to every delivery that ran, as bytes: a str body makes HttpResponse look up its
#: charset (a regular expression over the Content-Type, then the settings) to encode it, which
#: doubles the response's cost, about 3.5 µs of every delivery.
_OK = b"ok"


def _logged(response: HttpResponse) -> HttpResponse:
    """Mark a 5xx whose reason cloudtask has already logged as logged, so Django's request log
    does not report it once more as an ERROR: a 503 that only says "try again later" (a task
    raised Retry, or the same task id runs elsewhere: one WARNING line, not an alarm), or a
    misconfigured schedule (its ERROR names the fix). Django's own views skip that log the same
    way (django.utils.log.log_response reads this attribute). A crash's 500 is still logged by
    Django."""
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def respond(execution: Execution) -> HttpResponse:
    """The answer that makes Cloud Tasks do what the outcome needs."""
    outcome = execution.outcome
    if outcome is Outcome.SUCCEEDED:
        return HttpResponse(_OK, content_type=_TEXT)
    if outcome is Outcome.DISCARDED:
        return HttpResponse("discarded; not retried", content_type=_TEXT)
    if outcome is Outcome.DUPLICATE:
        return HttpResponse("duplicate delivery; already done, not run again", content_type=_TEXT)
    if outcome is Outcome.REJECTED:
        return HttpResponseBadRequest("task arguments do not match", content_type=_TEXT)
    if outcome is Outcome.BUSY:
        busy = HttpResponse("running elsewhere; try later", status=503, content_type=_TEXT)
        busy["Retry-After"] = str(math.ceil(execution.retry_after or 1))
        return _logged(busy)
    if outcome is Outcome.EXHAUSTED:
        response = HttpResponse("failed for good; not retried", content_type=_TEXT)
    elif outcome is Outcome.UNDECODABLE:
        response = HttpResponseBadRequest("malformed task arguments", content_type=_TEXT)
    elif outcome is Outcome.RETRY:
        response = _logged(HttpResponse("retry", status=503, content_type=_TEXT))
        if execution.retry_after is not None:
            response["Retry-After"] = str(math.ceil(execution.retry_after))
    else:
        response = HttpResponse("task failed", status=500, content_type=_TEXT)
    # For an in-process caller (the immediate transport, cloudtask.testing): the exception
    # itself, to re-raise with its traceback. Never sent over HTTP.
    setattr(response, ERROR_ATTRIBUTE, execution.error)
    return response


#: Rows one drain request sends at most per database, unless ?limit= says otherwise (at most
#: outbox.BATCH): small enough that a pass finishes within Cloud Scheduler's attempt deadline
#: (3 minutes by default) even when every send waits out its retries.
DRAIN_LIMIT = 100


def drain(request: HttpRequest) -> HttpResponse:
    """The drain route: one relay pass, for a Cloud Scheduler job; authenticated exactly like a
    task delivery (the body, whatever it is, must carry a valid signature when SECRET is set).

    Rows that fail to send are not a server error: they back off and the next call retries
    them, so the answer is 200 with the counts. 500 only when a database's outbox could not be
    read at all (unreachable, or its table missing), so the job's run shows as failed.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    settings = get_settings()
    reason = authenticate(request, settings, request.body)
    if reason is not None:
        logger.warning(
            "Refused outbox drain request from %s: %s.",
            request.META.get("REMOTE_ADDR", "?"),
            reason,
        )
        return HttpResponseForbidden("forbidden")
    limit = _drain_limit(request.GET.get("limit"))
    if limit is None:
        return HttpResponseBadRequest(
            f"limit must be a whole number from 1 to {outbox.BATCH}", content_type=_TEXT
        )
    result = outbox.relay(limit=limit)
    if result.sent or result.failed or result.duplicates or result.skipped:
        logger.info(
            "Outbox drain: %d sent, %d failed, %d duplicates%s.",
            result.sent,
            result.failed,
            result.duplicates,
            f"; databases skipped: {result.skipped}" if result.skipped else "",
        )
    return JsonResponse(
        {
            "sent": result.sent,
            "failed": result.failed,
            "duplicates": result.duplicates,
            "skipped": result.skipped,
        },
        status=500 if result.skipped else 200,
    )


def _drain_limit(raw: str | None) -> int | None:
    if raw is None:
        return DRAIN_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        return None
    return limit if 1 <= limit <= outbox.BATCH else None
