"""`manage.py cloudtask_outbox`: what waits in the transactional outbox, and its relay on demand.

With no option it prints, per database, the rows waiting, how many are due, the oldest one's
age and the last errors. ``--drain`` sends everything due and exits 1 if anything could not be
sent (``--all``: rows not due yet too). ``--watch`` relays every ``--interval`` seconds until
SIGTERM or SIGINT: a sidecar, or a Cloud Run job. See docs/outbox-operations.md.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from cloudtask.conf import get_settings
from cloudtask.models import OutboxMessage
from cloudtask.outbox import BATCH, RelayResult, outbox_aliases, relay

#: --watch's pause between passes when neither --interval nor OUTBOX_RELAY_INTERVAL sets one.
DEFAULT_INTERVAL = 30.0


def format_age(seconds: float) -> str:
    """A short duration for a table: 42s, 3m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def _counts(result: RelayResult) -> str:
    return f"{result.sent} sent, {result.failed} failed, {result.duplicates} duplicates"


def _handled(result: RelayResult) -> int:
    return result.sent + result.failed + result.duplicates


def _full(result: RelayResult, limit: int) -> bool:
    """Whether the pass took a whole batch and sent some of it: more may be due at once."""
    return _handled(result) >= limit and bool(result.sent or result.duplicates)


class Command(BaseCommand):
    help = (
        "Show the transactional outbox (rows per database, due, oldest, last errors); --drain "
        "sends everything due and exits 1 if anything failed; --watch relays until SIGTERM."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set to end --watch once the current pass is done (by SIGTERM or SIGINT, or a test).
        self.stop = threading.Event()

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--drain",
            action="store_true",
            help="Send every due row, pass after pass, until none is left; exit 1 if a send "
            "failed or a database could not be read.",
        )
        mode.add_argument(
            "--watch",
            action="store_true",
            help="Relay due rows every --interval seconds until SIGTERM or SIGINT (exit 0).",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            dest="all_rows",
            help="With --drain: make every row due first, also those a committing process may "
            "still be sending and those backing off after a failure (after a crash or an "
            "outage, to get everything out now).",
        )
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            metavar="ALIAS",
            help="Only this database (repeatable); default: every database cloudtask migrates.",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=BATCH,
            help=f"Rows one relay pass claims per database (default {BATCH}).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help='With --watch: seconds between passes (default CLOUDTASK["OUTBOX_RELAY_'
            f'INTERVAL"], or {DEFAULT_INTERVAL:g} when that is 0).',
        )
        parser.add_argument(
            "--max-passes",
            type=int,
            default=None,
            help="With --watch: stop after this many passes.",
        )
        parser.add_argument(
            "--errors",
            type=int,
            default=5,
            help="How many of the last errors the status lists per database (default 5).",
        )
        parser.add_argument("--json", action="store_true", help="Print one JSON document.")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = self._aliases(options["databases"])
        limit: int = options["limit"]
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        if options["all_rows"] and not options["drain"]:
            raise CommandError("--all goes with --drain.")
        if not options["watch"] and (
            options["interval"] is not None or options["max_passes"] is not None
        ):
            raise CommandError("--interval and --max-passes go with --watch.")
        if options["drain"]:
            self.drain(aliases, limit, all_rows=options["all_rows"], as_json=options["json"])
        elif options["watch"]:
            interval = options["interval"]
            if interval is None:
                interval = get_settings().outbox_relay_interval or DEFAULT_INTERVAL
            if interval < 0:
                raise CommandError("--interval must not be negative.")
            max_passes: int | None = options["max_passes"]
            if max_passes is not None and max_passes < 1:
                raise CommandError("--max-passes must be at least 1.")
            self.watch(aliases, limit, interval, max_passes)
        else:
            self.status(aliases, options["errors"], as_json=options["json"])

    def _aliases(self, chosen: list[str] | None) -> list[str]:
        if not chosen:
            return outbox_aliases()
        known = list(connections)
        unknown = [alias for alias in chosen if alias not in known]
        if unknown:
            raise CommandError(
                f"Unknown database {', '.join(map(repr, unknown))}; DATABASES has "
                f"{', '.join(map(repr, known))}."
            )
        return list(dict.fromkeys(chosen))

    # -- status ---------------------------------------------------------------------------------

    def status(self, aliases: Sequence[str], errors: int, *, as_json: bool) -> None:
        now = timezone.now()
        found: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        for alias in aliases:
            try:
                found[alias] = _status(alias, now, errors)
            except DatabaseError as exc:
                skipped[alias] = f"{type(exc).__name__}: {exc}"
        if as_json:
            self.stdout.write(json.dumps({"databases": found, "skipped": skipped}, indent=2))
        else:
            for alias, state in found.items():
                self._write_status(alias, state)
        if skipped:
            raise CommandError(_unreadable(skipped), returncode=1)

    def _write_status(self, alias: str, state: dict[str, Any]) -> None:
        if not state["rows"]:
            self.stdout.write(f"Database {alias!r}: the outbox is empty.")
            return
        next_in = state["next_attempt_in"]
        self.stdout.write(
            f"Database {alias!r}: {_rows(state['rows'])} waiting, {state['due']} due now, "
            f"{state['failing']} failing, {state['leased']} being sent; the oldest is "
            f"{format_age(state['oldest_age'])} old; most attempts: {state['most_attempts']}"
            + (f"; next one due in {format_age(next_in)}." if next_in is not None else ".")
        )
        if not state["errors"]:
            return
        self.stdout.write("  Last errors:")
        lines = _table(
            ("TASK", "TASK ID", "AGE", "ATTEMPTS", "ERROR"),
            [
                (
                    e["task"],
                    e["task_id"],
                    format_age(e["age"]),
                    str(e["attempts"]),
                    _one_line(e["error"], 120),
                )
                for e in state["errors"]
            ],
        )
        for line in lines:
            self.stdout.write("    " + line)

    # -- drain ----------------------------------------------------------------------------------

    def drain(self, aliases: Sequence[str], limit: int, *, all_rows: bool, as_json: bool) -> None:
        results: dict[str, RelayResult] = {}
        left: dict[str, int] = {}
        for alias in aliases:
            result = results[alias] = RelayResult()
            try:
                if all_rows:
                    now = timezone.now()
                    OutboxMessage.objects.using(alias).filter(next_attempt_at__gt=now).update(
                        next_attempt_at=now
                    )
                while True:
                    one = relay(limit=limit, aliases=[alias])
                    result += one
                    # A row that failed backs off, so a pass that sent nothing (or took less
                    # than a batch) has taken everything that was due: stop there.
                    if one.skipped or not _full(one, limit):
                        break
                if alias not in result.skipped:
                    left[alias] = OutboxMessage.objects.using(alias).count()
            except DatabaseError as exc:
                result.skipped[alias] = f"{type(exc).__name__}: {exc}"
        failed = sum(r.failed for r in results.values())
        skipped = {a: e for r in results.values() for a, e in r.skipped.items()}
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "databases": {
                            alias: {
                                "sent": r.sent,
                                "failed": r.failed,
                                "duplicates": r.duplicates,
                                "left": left.get(alias),
                            }
                            for alias, r in results.items()
                            if alias not in skipped
                        },
                        "skipped": skipped,
                    },
                    indent=2,
                )
            )
        else:
            for alias, r in results.items():
                if alias not in skipped:
                    self.stdout.write(
                        f"Database {alias!r}: {_counts(r)}; {_rows(left[alias])} left."
                    )
        problems = []
        if failed:
            problems.append(
                f"{failed} send{'' if failed == 1 else 's'} failed; those rows stay in the "
                "outbox and back off (see `manage.py cloudtask_outbox` for their errors)"
            )
        if skipped:
            problems.append(_unreadable(skipped))
        if problems:
            raise CommandError("; ".join(problems) + ".", returncode=1)

    # -- watch ----------------------------------------------------------------------------------

    def watch(
        self, aliases: Sequence[str], limit: int, interval: float, max_passes: int | None
    ) -> None:
        restore = self._stop_on_signals()
        passes = 0
        try:
            self.stdout.write(
                f"Relaying the outbox of {', '.join(map(repr, aliases))} every {interval:g} s; "
                "SIGTERM or SIGINT stops after the current pass."
            )
            while not self.stop.is_set():
                results = {alias: relay(limit=limit, aliases=[alias]) for alias in aliases}
                passes += 1
                for alias, result in results.items():
                    stamp = timezone.now().isoformat(timespec="seconds")
                    if alias in result.skipped:
                        self.stderr.write(
                            f"{stamp} database {alias!r}: could not read the outbox: "
                            f"{result.skipped[alias]}"
                        )
                    elif _handled(result):
                        self.stdout.write(f"{stamp} database {alias!r}: {_counts(result)}.")
                # A long-lived process: drop connections that broke or outlived CONN_MAX_AGE.
                close_old_connections()
                if max_passes is not None and passes >= max_passes:
                    break
                if not any(_full(result, limit) for result in results.values()):
                    self.stop.wait(interval)
        finally:
            restore()
        self.stdout.write(f"Stopped after {passes} passes.")

    def _stop_on_signals(self) -> Callable[[], None]:
        """Make SIGTERM and SIGINT end --watch after the current pass; returns the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # only the main thread may set handlers; stop with self.stop

        previous: dict[int, Any] = {}

        def stop(signum: int, frame: FrameType | None) -> None:
            # A second signal acts as it did before (a second Ctrl-C interrupts the pass).
            signal.signal(signum, previous[signum])
            # The handler runs in the main thread, which may hold the event's lock inside
            # stop.wait(): setting it from here could deadlock, so set it from a thread.
            threading.Thread(target=self.stop.set, name="cloudtask-outbox-stop").start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            # None: a handler not set from Python; the default is the closest we can restore.
            previous[signum] = signal.signal(signum, stop) or signal.SIG_DFL

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


def _status(alias: str, now: datetime, errors: int) -> dict[str, Any]:
    rows = OutboxMessage.objects.using(alias)
    counts = rows.aggregate(
        rows=Count("pk"),
        due=Count("pk", filter=Q(next_attempt_at__lte=now)),
        failing=Count("pk", filter=Q(attempts__gt=0)),
        leased=Count("pk", filter=Q(lease_until__gt=now)),
        oldest=Min("created_at"),
        next_attempt=Min("next_attempt_at", filter=Q(next_attempt_at__gt=now)),
        most_attempts=Max("attempts"),
    )
    last = rows.exclude(last_error="").order_by("-last_attempt_at", "-pk")[: max(errors, 0)]
    oldest: datetime | None = counts["oldest"]
    next_attempt: datetime | None = counts["next_attempt"]
    return {
        "rows": counts["rows"],
        "due": counts["due"],
        "failing": counts["failing"],
        "leased": counts["leased"],
        "oldest_age": (now - oldest).total_seconds() if oldest else None,
        "most_attempts": counts["most_attempts"] or 0,
        "next_attempt_in": (next_attempt - now).total_seconds() if next_attempt else None,
        "errors": [
            {
                "id": row.pk,
                "task": row.task_name,
                "task_id": row.task_id,
                "age": row.age(now),
                "attempts": row.attempts,
                "last_attempt_at": row.last_attempt_at.isoformat() if row.last_attempt_at else None,
                "error": row.last_error,
            }
            for row in last
        ],
    }


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def _one_line(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _unreadable(skipped: dict[str, str]) -> str:
    return "could not read the outbox of " + "; ".join(
        f"database {alias!r} ({error})" for alias, error in skipped.items()
    )
