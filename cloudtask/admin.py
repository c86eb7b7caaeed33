"""The outbox in Django's admin: what waits and why, with "Send now" and "Discard" for chosen rows.

Rows are written and deleted by cloudtask, so the pages are read-only and nobody adds one. "Send
now" needs the change permission on outbox messages, "Discard" the delete permission.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil

from .deadletters import replay as replay_dead_letter
from .models import DeadLetter, OutboxMessage, TaskExecution
from .outbox import send_rows

logger = logging.getLogger("cloudtask.outbox")

_FIELDS = (
    "task_name",
    "queue",
    "task_id",
    "named",
    "url",
    "created_at",
    "age",
    "schedule_time",
    "dispatch_deadline",
    "attempts",
    "next_attempt",
    "last_attempt_at",
    "last_error",
    "lease_until",
    "lease_owner",
    "oidc_service_account",
    "oidc_audience",
    "headers",
    "body_text",
)


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[OutboxMessage]
else:  # generic only for type checkers (django-stubs-ext is not a dependency)
    _ModelAdmin = admin.ModelAdmin


class WrittenByCloudtask:
    """Rows cloudtask writes itself: nobody adds or edits them in the admin. Acting on them
    (send now, replay) is what changing them would mean, so the change permission allows it."""

    opts: Any

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def may_act(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("change", self.opts)
        return bool(request.user.has_perm(f"{self.opts.app_label}.{codename}"))


@admin.register(OutboxMessage)
class OutboxMessageAdmin(WrittenByCloudtask, _ModelAdmin):
    list_display = (
        "task_name",
        "queue",
        "task_id",
        "age",
        "attempts",
        "next_attempt",
        "short_error",
    )
    list_filter = ("queue", "task_name")
    search_fields = ("task_id", "task_name")
    fields = _FIELDS
    readonly_fields = _FIELDS
    actions = ("send_now", "discard")

    # -- columns --------------------------------------------------------------------------------

    @admin.display(description="age", ordering="-created_at")
    def age(self, row: OutboxMessage) -> str:
        seconds = row.age(timezone.now())
        if seconds < 60:
            return f"{max(0, int(seconds))} seconds"
        return timesince(row.created_at, timezone.now(), depth=2)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, row: OutboxMessage) -> str:
        now = timezone.now()
        if row.next_attempt_at <= now:
            return "due"
        if (row.next_attempt_at - now).total_seconds() < 60:
            return f"in {int((row.next_attempt_at - now).total_seconds())} seconds"
        return "in " + timeuntil(row.next_attempt_at, now, depth=2)

    @admin.display(description="last error", ordering="last_error")
    def short_error(self, row: OutboxMessage) -> str:
        return Truncator(" ".join(row.last_error.split())).chars(100)

    @admin.display(description="body")
    def body_text(self, row: OutboxMessage) -> str:
        return bytes(row.body).decode("utf-8", "replace")

    # -- permissions: rows are cloudtask's to write ----------------------------------------------

    def has_send_permission(self, request: HttpRequest) -> bool:
        """Sending rows is what changing them would mean: the change permission allows it."""
        return self.may_act(request)

    # -- actions --------------------------------------------------------------------------------

    @admin.action(description="Send now", permissions=["send"])
    def send_now(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        pks = list(queryset.values_list("pk", flat=True))
        result = send_rows(queryset.db, pks)
        busy = len(pks) - result.sent - result.failed - result.duplicates
        parts = [f"Sent {result.sent} of {len(pks)} outbox {_rows(len(pks))}"]
        if result.failed:
            parts.append(f"{result.failed} failed and stay, backing off (see their last error)")
        if result.duplicates:
            parts.append(f"{result.duplicates} had a task id already taken and were deleted unsent")
        if busy:
            parts.append(f"{busy} were being sent by a relay and are left to it")
        self.message_user(
            request,
            "; ".join(parts) + ".",
            messages.SUCCESS if result.sent == len(pks) else messages.WARNING,
        )

    @admin.action(description="Discard (delete without sending)", permissions=["delete"])
    def discard(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        count = queryset.count()
        self.delete_queryset(request, queryset)
        self.message_user(
            request,
            f"Discarded {count} outbox {_rows(count)}: their tasks will not be sent.",
            messages.WARNING,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        rows = list(queryset)
        for row in rows:
            _log_discard(request, row)
        # Exactly the rows logged, even if more match the list's filter by now.
        logged = queryset.filter(pk__in=[row.pk for row in rows])
        self.log_deletions(request, logged)
        logged.delete()

    def delete_model(self, request: HttpRequest, obj: OutboxMessage) -> None:
        _log_discard(request, obj)
        super().delete_model(request, obj)


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"


def _log_discard(request: HttpRequest, row: OutboxMessage) -> None:
    logger.warning(
        "Outbox row %s (task %s, task id %s, %d failed attempts, last error %r) was discarded "
        "in the admin by %s: it will not be sent.",
        row.pk,
        row.task_name,
        row.task_id,
        row.attempts,
        row.last_error,
        request.user.get_username(),
    )


# -- execution records and dead letters (cloudtask.records) ------------------------------------
#
# Rows are written by the executor, so both pages are read-only: nobody adds or edits one.
# Deleting is allowed (a record's task id can then run again if Cloud Tasks delivers it once
# more). "Replay as a new task" needs the change permission on dead letters.

if TYPE_CHECKING:
    _ExecutionAdmin = admin.ModelAdmin[TaskExecution]
    _DeadLetterAdmin = admin.ModelAdmin[DeadLetter]
else:
    _ExecutionAdmin = _DeadLetterAdmin = admin.ModelAdmin

_records_logger = logging.getLogger("cloudtask.records")


def _pre(text: str) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def _pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _body_text(body: bytes | memoryview) -> str:
    """A stored body for people: pretty JSON when it parses, else the text as it came."""
    raw = bytes(body)
    text = raw.decode("utf-8", "replace")
    try:
        return _pretty_json(json.loads(raw))
    except ValueError:
        return text


def _errors_html(errors: list[dict[str, Any]]) -> SafeString:
    """Every failed attempt, newest last, each with its traceback."""
    if not errors:
        return format_html("{}", "-")
    return format_html_join(
        "\n",
        "<p><strong>Attempt {}</strong> at {}: <code>{}</code>: {}</p>{}",
        (
            (
                entry.get("attempt", "?"),
                entry.get("at", "?"),
                entry.get("exception_class", "?"),
                entry.get("message", ""),
                _pre(str(entry.get("traceback", ""))),
            )
            for entry in errors
        ),
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def _short_class(path: str) -> str:
    return path.rsplit(".", 1)[-1]


_EXECUTION_FIELDS = (
    "task_name",
    "task_id",
    "queue",
    "status",
    "attempts",
    "first_started_at",
    "last_started_at",
    "finished_at",
    "duration_text",
    "lease_until",
    "return_value_text",
    "error_type",
    "error_message",
    "errors_text",
)


@admin.register(TaskExecution)
class TaskExecutionAdmin(WrittenByCloudtask, _ExecutionAdmin):
    list_display = (
        "task_name",
        "task_id",
        "queue",
        "status",
        "attempts",
        "first_started",
        "last_started",
        "duration_text",
        "last_error",
    )
    list_filter = ("status", "task_name", "queue", "last_started_at")
    date_hierarchy = "last_started_at"
    search_fields = ("task_id", "task_name")
    fields = _EXECUTION_FIELDS
    readonly_fields = _EXECUTION_FIELDS

    @admin.display(description="first start", ordering="first_started_at")
    def first_started(self, row: TaskExecution) -> str:
        return date_format(timezone.localtime(row.first_started_at), "DATETIME_FORMAT")

    @admin.display(description="last start", ordering="last_started_at")
    def last_started(self, row: TaskExecution) -> str:
        return date_format(timezone.localtime(row.last_started_at), "DATETIME_FORMAT")

    @admin.display(description="duration", ordering="duration")
    def duration_text(self, row: TaskExecution) -> str:
        return _duration(row.duration)

    @admin.display(description="last error", ordering="error_type")
    def last_error(self, row: TaskExecution) -> str:
        return _short_class(row.error_type) if row.error_type else ""

    @admin.display(description="return value")
    def return_value_text(self, row: TaskExecution) -> SafeString:
        if row.return_repr:
            return _pre(row.return_repr)
        return _pre(_pretty_json(row.return_value))

    @admin.display(description="errors (one per failed attempt)")
    def errors_text(self, row: TaskExecution) -> SafeString:
        return _errors_html(row.errors)


_DEAD_LETTER_FIELDS = (
    "created_at",
    "reason",
    "task_name",
    "task_id",
    "queue",
    "attempts",
    "replayed_as",
    "body_text",
    "headers_text",
    "errors_text",
)


@admin.register(DeadLetter)
class DeadLetterAdmin(WrittenByCloudtask, _DeadLetterAdmin):
    list_display = (
        "created_at",
        "reason",
        "task_name",
        "task_id",
        "queue",
        "attempts",
        "replayed_as",
    )
    list_filter = ("reason", "task_name", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("task_id", "task_name", "replayed_as")
    fields = _DEAD_LETTER_FIELDS
    readonly_fields = _DEAD_LETTER_FIELDS
    actions = ("replay",)

    @admin.display(description="body")
    def body_text(self, row: DeadLetter) -> SafeString:
        return _pre(_body_text(row.body))

    @admin.display(description="headers")
    def headers_text(self, row: DeadLetter) -> SafeString:
        return _pre("\n".join(f"{name}: {value}" for name, value in sorted(row.headers.items())))

    @admin.display(description="errors")
    def errors_text(self, row: DeadLetter) -> SafeString:
        return _errors_html(row.errors)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        """Replaying sends a task and marks the letter: the change permission allows it."""
        return self.may_act(request)

    @admin.action(description="Replay as a new task", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        replayed: list[str] = []
        for letter in queryset.order_by("created_at", "pk"):
            if letter.replayed_as:
                self.message_user(
                    request,
                    f"Not replayed: the dead letter of task id {letter.task_id} was already "
                    f"replayed as task {letter.replayed_as}.",
                    messages.WARNING,
                )
                continue
            try:
                handle = replay_dead_letter(letter)
            except Exception as exc:
                _records_logger.exception(
                    "Replaying the dead letter of task %s (task id %s) failed.",
                    letter.task_name,
                    letter.task_id,
                )
                self.message_user(
                    request,
                    f"Replaying the dead letter of task id {letter.task_id} failed: "
                    f"{type(exc).__name__}: {exc}",
                    messages.ERROR,
                )
                continue
            _records_logger.info(
                "Dead letter of task %s (task id %s) replayed by %s as task %s.",
                letter.task_name,
                letter.task_id,
                request.user.get_username(),
                handle.task_id,
            )
            replayed.append(f"{letter.task_id} as {handle.task_id}")
        if replayed:
            self.message_user(
                request,
                f"Replayed {len(replayed)} dead letter{pluralize(len(replayed))} as new tasks: "
                + ", ".join(replayed)
                + ".",
                messages.SUCCESS,
            )
