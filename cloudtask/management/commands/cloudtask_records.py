"""`manage.py cloudtask_records`: what the execution records say, and their pruning.

With no option it prints the records by status, the dead letters by reason and the last
failures. ``--prune`` deletes finished records and dead letters older than
CLOUDTASK["RECORDS_RETENTION"] days (``--older-than DAYS`` instead; 0 keeps everything): run it
once a day from Cloud Scheduler or cron. See docs/records-admin.md.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from cloudtask.conf import get_settings
from cloudtask.models import DeadLetter, TaskExecution
from cloudtask.records import prune, records_database

#: Failures the summary lists.
LAST_FAILURES = 10


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        days = -1
    if days < 0:
        raise ArgumentTypeError(f"a whole number of days (0: keep all), not {value!r}")
    return days


class Command(BaseCommand):
    help = (
        "Summarize cloudtask's execution records and dead letters; --prune deletes the old ones "
        '(older than CLOUDTASK["RECORDS_RETENTION"] days, or --older-than DAYS).'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete finished execution records and dead letters older than the retention.",
        )
        parser.add_argument(
            "--older-than",
            type=_days,
            default=None,
            metavar="DAYS",
            help='With --prune: days to keep instead of CLOUDTASK["RECORDS_RETENTION"] (0: all).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days: int | None = options["older_than"]
        if options["prune"]:
            self.prune(get_settings().records_retention if days is None else days)
        elif days is not None:
            raise CommandError("--older-than goes with --prune.")
        else:
            self.summary()

    def prune(self, days: int) -> None:
        if days == 0:
            self.stdout.write("Retention is 0 days (keep forever): nothing pruned.")
            return
        executions, letters = prune(timedelta(days=days))
        self.stdout.write(
            f"Pruned {executions} execution records and {letters} dead letters older than "
            f"{days} days (running ones only if their lease ran out before then)."
        )

    def summary(self) -> None:
        db = records_database()
        by_status = dict(
            TaskExecution.objects.using(db)
            .order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        by_reason = dict(
            DeadLetter.objects.using(db)
            .order_by()
            .values_list("reason")
            .annotate(n=Count("pk"))
            .values_list("reason", "n")
        )
        retention = get_settings().records_retention
        self.stdout.write(
            f"Execution records ({sum(by_status.values())}; database {db!r}; kept "
            + (f"{retention} days" if retention else "forever")
            + "):"
        )
        for status in TaskExecution.Status:
            self.stdout.write(f"  {status.value:<10} {by_status.get(status.value, 0)}")
        self.stdout.write(f"Dead letters ({sum(by_reason.values())}):")
        for reason in DeadLetter.Reason:
            self.stdout.write(
                f"  {reason.value:<12} {by_reason.get(reason.value, 0)}  ({reason.label})"
            )
        failures = list(
            TaskExecution.objects.using(db)
            .exclude(error_type="")
            .exclude(status=TaskExecution.Status.SUCCEEDED)
            .order_by("-last_started_at", "-pk")[:LAST_FAILURES]
        )
        if not failures:
            self.stdout.write("Last failures: none.")
            return
        self.stdout.write(f"Last failures ({len(failures)}):")
        now = timezone.now()
        for row in failures:
            ago = int((now - row.last_started_at).total_seconds())
            message = " ".join(row.error_message.split())[:120]
            self.stdout.write(
                f"  {timezone.localtime(row.last_started_at):%Y-%m-%d %H:%M:%S} ({ago}s ago)  "
                f"{row.task_name} [{row.task_id}] {row.status}, attempt {row.attempts}: "
                f"{row.error_type}: {message}"
            )
