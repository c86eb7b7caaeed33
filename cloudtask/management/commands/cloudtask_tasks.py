"""`manage.py cloudtask_tasks`: every registered task, model-signal binding and schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.core.management.base import BaseCommand, CommandParser

from cloudtask import registry, schedules
from cloudtask.bindings import all_bindings
from cloudtask.conf import get_settings
from cloudtask.tasks import Task


def _options(task: Task[Any, Any]) -> dict[str, Any]:
    """The options a task was declared with that differ from the defaults."""
    out: dict[str, Any] = {}
    if task.url:
        out["url"] = task.url
    if task.named:
        out["named"] = task.named if isinstance(task.named, bool | str) else repr(task.named)
    if isinstance(task.dispatch_deadline, timedelta):
        out["dispatch_deadline"] = f"{task.dispatch_deadline.total_seconds():g}s"
    if task.headers:
        out["headers"] = dict(task.headers)
    if task.max_attempts is not None:
        out["max_attempts"] = task.max_attempts
    if task.on_commit:
        out["on_commit"] = True
    if task.using:
        out["using"] = task.using
    return out


def _schedule_row(entry: schedules.Schedule, now: datetime) -> dict[str, Any]:
    """A schedule and its next firing, in its own time zone and in UTC."""
    fire = schedules.next_run(entry, now)
    local = fire.astimezone(ZoneInfo(entry.time_zone))
    row: dict[str, Any] = {
        "name": entry.name,
        "task": entry.task,
        "cron": entry.cron,
        "time_zone": entry.time_zone,
        "next_run": local.isoformat(),
        "next_run_utc": fire.isoformat().replace("+00:00", "Z"),
    }
    if entry.queue:
        row["queue"] = entry.queue
    if entry.args or entry.kwargs:
        row["args"] = [repr(a) for a in entry.args]
        row["kwargs"] = {k: repr(v) for k, v in entry.kwargs.items()}
    return row


class Command(BaseCommand):
    help = (
        "List every cloudtask task (name, queue, options), model-signal binding and schedule "
        "(with its next run)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON document.")

    def handle(self, *args: Any, **options: Any) -> None:
        default_queue = get_settings().queue
        tasks = sorted(registry.all_tasks(), key=lambda t: t.name)
        task_rows: list[dict[str, Any]] = [
            {
                "name": t.name,
                "queue": t.queue or default_queue,
                "options": _options(t),
            }
            for t in tasks
        ]
        binding_rows = sorted(
            (b.describe() for b in all_bindings()),
            key=lambda d: (d["task"], d["signal"], d["sender"]),
        )
        now = datetime.now(UTC)
        schedule_rows = [
            _schedule_row(entry, now) for _, entry in sorted(schedules.get_schedules().items())
        ]
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {"tasks": task_rows, "bindings": binding_rows, "schedules": schedule_rows},
                    indent=2,
                )
            )
            return
        self.stdout.write(f"Tasks ({len(task_rows)}):")
        for row in task_rows:
            opts = ", ".join(f"{k}={v}" for k, v in row["options"].items())
            self.stdout.write(
                f"  {row['name']}  queue={row['queue']}" + (f"  {opts}" if opts else "")
            )
        self.stdout.write(f"Bindings ({len(binding_rows)}):")
        for row in binding_rows:
            self.stdout.write(
                f"  {row['signal']}  sender={row['sender']}  "
                f"[{'; '.join(row['conditions'])}]  -> {row['task']}"
            )
        self.stdout.write(f"Schedules ({len(schedule_rows)}):")
        for row in schedule_rows:
            where = f"  queue={row['queue']}" if "queue" in row else ""
            self.stdout.write(
                f"  {row['name']}  '{row['cron']}' {row['time_zone']}  -> {row['task']}{where}"
                f"  next run {row['next_run']} ({row['next_run_utc']})"
            )
