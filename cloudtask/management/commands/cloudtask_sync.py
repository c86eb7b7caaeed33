"""`manage.py cloudtask_sync [--dry-run] [--prune]`: make Cloud Tasks queues and Cloud Scheduler
jobs match CLOUDTASK["QUEUES"] and CLOUDTASK["SCHEDULES"] (the engine is cloudtask.sync).

It prints the changes first (create; update, field by field; delete; unchanged), then makes them.
Any failure exits non-zero after saying what was done. See docs/queues.md.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cloudtask import sync
from cloudtask.exceptions import CloudTaskError


class Command(BaseCommand):
    help = (
        'Make Cloud Tasks queues (CLOUDTASK["QUEUES"]) and Cloud Scheduler jobs '
        '(CLOUDTASK["SCHEDULES"]) match the settings: prints the changes, then makes them.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the changes and make none.",
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Also delete the queues and jobs cloudtask_sync made that the settings no "
            "longer name (never others).",
        )

    def handle(self, *args: Any, dry_run: bool, prune: bool, **options: Any) -> None:
        try:
            todo = sync.plan(prune=prune)
        except CloudTaskError as exc:  # SyncError, a ConfigurationError, a bad schedule
            raise CommandError(str(exc)) from exc
        try:
            self.stdout.write(todo.render())
            changes = todo.changes
            if not changes:
                self.stdout.write(todo.nothing_to_change())
                return
            if dry_run:
                self.stdout.write(f"Dry run: {len(changes)} change(s) listed, none made.")
                return
            applied = sync.apply(
                todo, progress=lambda c: self.stdout.write(f"{c.action}d {c.kind} {c.id}")
            )
        finally:
            todo.target.close()
        error = applied.error()
        if error is not None:
            raise CommandError(str(error))
        self.stdout.write(self.style.SUCCESS(f"Done: {applied.summary()}."))
