"""Run each task at once, in the caller's thread, through this site's own endpoint."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ..conf import CloudTaskSettings
from ..dedup import RecentNames
from ..exceptions import EnqueueError, TaskAlreadyExists
from ..message import delivery_headers, resource_name
from . import local
from .base import BaseTransport, EnqueuedTask, TaskMessage


class ImmediateTransport(BaseTransport):
    """Delivers each message in-process to the endpoint (signature check, decoding, routing and
    the one executor), so a local run sees production's argument types and errors.

    What differs from a queue, on purpose: the task runs inside .delay(), so its exception
    reaches the caller (a Discard does not: it is a success that stops retries); there are no
    retries; a schedule time is not waited for (supports_schedule is False: the handle reports
    the time it really ran). A task id used within CLOUDTASK["EMULATOR"]["DEDUP_WINDOW"] seconds
    raises TaskAlreadyExists, as Cloud Tasks would.
    """

    supports_schedule = False
    in_process = True

    def __init__(self, settings: CloudTaskSettings) -> None:
        super().__init__(settings)
        self.names = RecentNames(float(settings.emulator["DEDUP_WINDOW"]))

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        project, location = self.project_location()
        task_id = message.task_id or uuid.uuid4().hex
        name = resource_name(project, location, message.queue, task_id)
        if message.task_id is not None and not self.names.claim(name):
            raise TaskAlreadyExists(
                f"Task {task_id!r} already exists in queue {message.queue!r}, or was used in the "
                f'last {self.names.window:g} s (CLOUDTASK["EMULATOR"]["DEDUP_WINDOW"]).'
            )
        ran_at = datetime.now(UTC)
        response = local.deliver(
            message, delivery_headers(message.queue, task_id, eta=ran_at), propagate=True
        )
        if not 200 <= response.status_code < 300:
            raise EnqueueError(
                f"The endpoint answered {response.status_code} to task {message.task_name!r} "
                "run by the immediate transport (see the 'cloudtask' log)."
            )
        return EnqueuedTask(resource_name=name, schedule_time=ran_at)
