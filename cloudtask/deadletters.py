"""Replaying a dead letter: its stored request sent to Cloud Tasks again, as a new task.

A dead letter keeps the body and headers exactly as they were delivered. The body is sent
unchanged, so the endpoint decodes and routes it as before (a task that is known by now, after a
deploy, runs). Of the headers, the ones that described that one delivery are dropped: Cloud
Tasks' own ``X-CloudTasks-*``, those a proxy or Google's front end added, hop-by-hop ones,
``Authorization`` (Cloud Tasks attaches a fresh OIDC token) and those HTTP computes (``Host``,
``Content-Length``). ``Content-Type`` and the task's own headers stay. The signature stays when
it still verifies; after the secrets were rotated the body is signed again with the current one.

The new task gets a random task id (so a send that is retried after a timeout creates it once),
the stored queue (else CLOUDTASK["QUEUE"]), the task's URL (else CLOUDTASK["URL"]) and the OIDC
fields of the settings, and it is sent now through the one dispatch path.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from . import registry
from .conf import CloudTaskSettings, get_settings
from .dispatch import TaskHandle, send
from .exceptions import UnknownTask
from .message import TaskMessage
from .models import DeadLetter
from .signing import HEADER as SIGNATURE_HEADER
from .signing import sign, verify

__all__ = ["replay", "replay_headers", "replay_message"]

#: Headers (lower case) that belonged to the delivery, not to the task.
DROPPED_HEADERS = frozenset(
    {
        # hop-by-hop (RFC 9110, section 7.6.1)
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        # credentials and what HTTP or Cloud Tasks compute for each request
        "authorization",
        "host",
        "content-length",
        "user-agent",
        "accept-encoding",
        # added on the way in by proxies and Google's front end
        "forwarded",
        "via",
        "x-real-ip",
        "x-cloud-trace-context",
        "traceparent",
        "tracestate",
    }
)
DROPPED_PREFIXES = ("x-cloudtasks-", "x-google-", "x-appengine-", "x-forwarded-")
_SIGNATURE = SIGNATURE_HEADER.lower()
_CONTENT_TYPE = "content-type"


def replay_headers(
    stored: Mapping[str, Any], body: bytes, settings: CloudTaskSettings
) -> dict[str, str]:
    """The headers a replay of a delivery with these headers and body is sent with."""
    headers: dict[str, str] = {}
    signature: str | None = None
    content_type = "application/json"
    for name, value in stored.items():
        key = name.lower()
        if key == _SIGNATURE:
            signature = str(value)
        elif key == _CONTENT_TYPE:
            content_type = str(value)
        elif key not in DROPPED_HEADERS and not key.startswith(DROPPED_PREFIXES):
            headers[name] = str(value)
    headers = {"Content-Type": content_type, **headers}
    if signature is None or not verify(body, signature, settings):
        # Unsigned, or signed with a secret that was rotated out since: sign with today's.
        signature = sign(body, settings)
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return headers


def _registered(name: str) -> Any:
    try:
        return registry.get(name)
    except UnknownTask:
        return None


def replay_message(letter: DeadLetter) -> TaskMessage:
    """The message that sends letter's request again, as a new task."""
    settings = get_settings()
    body = bytes(letter.body)
    task = _registered(letter.task_name) if letter.task_name else None
    return TaskMessage(
        task_name=letter.task_name,
        queue=letter.queue or settings.queue,
        url=getattr(task, "url", None) or settings.url or "",
        body=body,
        headers=replay_headers(letter.headers or {}, body, settings),
        task_id=uuid.uuid4().hex,
        dispatch_deadline=getattr(task, "dispatch_deadline", None) or settings.dispatch_deadline,
        oidc_service_account=settings.sae,
        oidc_audience=settings.oidc_audience,
    )


def replay(letter: DeadLetter) -> TaskHandle:
    """Send letter's request again as a new task, now, and keep the new task id in
    ``letter.replayed_as``. Raises what the send raised (nothing is recorded then)."""
    task = _registered(letter.task_name) if letter.task_name else None
    handle = send(TaskHandle(replay_message(letter), sender=task))
    letter.replayed_as = handle.task_id or ""
    letter.save(update_fields=["replayed_as"])
    return handle
