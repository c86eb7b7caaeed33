"""`manage.py cloudtask_tasks`: every registered task and every model-signal binding."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cloudtask import registry
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


class Command(BaseCommand):
    help = "List every cloudtask task (name, queue, options) and model-signal binding."

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
        if options["json"]:
            self.stdout.write(json.dumps({"tasks": task_rows, "bindings": binding_rows}, indent=2))
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
