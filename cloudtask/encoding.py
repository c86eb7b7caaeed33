"""Encoding a task call into a TaskMessage: the one encoder under both front-ends.

The envelope the endpoint decodes, the payload and URL limits, Content-Type and the signature
header, the dispatch deadline and the OIDC fields: the seed API's TaskCall.encode() and the
django.tasks backend's enqueue() both build their messages here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .conf import get_settings
from .exceptions import InvalidTaskCall
from .message import MAX_URL_LENGTH, TaskMessage, check_schedule
from .serialization import dumps_envelope, encode_arguments
from .signing import HEADER as SIGNATURE_HEADER
from .signing import sign

__all__ = ["encode_message"]


def encode_message(
    task_name: str,
    queue: str,
    url: str | None,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    label: str,
    param_names: Sequence[str] | None = None,
    task_id: str | None = None,
    schedule_time: datetime | None = None,
    headers: Mapping[str, str] | None = None,
    dispatch_deadline: timedelta | None = None,
) -> TaskMessage:
    """Validate, serialize and sign a call of the task registered as task_name; raises before
    any network call. ``label`` names the task in errors; ``url`` None means CLOUDTASK["URL"].
    """
    settings = get_settings()
    enc_args, enc_kwargs = encode_arguments(
        task_name, args, kwargs, label=label, param_names=param_names
    )
    body = dumps_envelope(task_name, enc_args, enc_kwargs)
    if len(body) > settings.max_payload_size:
        raise InvalidTaskCall(
            f"{label}() payload is {len(body)} bytes, over the {settings.max_payload_size}-byte "
            "limit set by CLOUDTASK['MAX_PAYLOAD_SIZE']; pass a reference (a model instance or "
            "an id) instead of the data."
        )
    target = url or settings.url or ""
    if len(target) > MAX_URL_LENGTH:
        raise InvalidTaskCall(
            f"{label}() URL is {len(target)} characters; Cloud Tasks accepts at most "
            f"{MAX_URL_LENGTH}."
        )
    if schedule_time is not None:
        schedule_time = check_schedule(schedule_time)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    signature = sign(body, settings)
    if signature is not None:
        all_headers[SIGNATURE_HEADER] = signature
    return TaskMessage(
        task_name=task_name,
        queue=queue,
        url=target,
        body=body,
        headers=all_headers,
        task_id=task_id,
        schedule_time=schedule_time,
        dispatch_deadline=dispatch_deadline or settings.dispatch_deadline,
        oidc_service_account=settings.sae,
        oidc_audience=settings.oidc_audience,
    )
