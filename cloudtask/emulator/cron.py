"""Cloud Scheduler's rules, Django-free: job ids, unix-cron, time zones, deadlines, retry bounds,
and when a cron schedule fires.

Shared by the emulator's Cloud Scheduler service and by cloudtask's ``CLOUDTASK["SCHEDULES"]``
(``cloudtask.conf``), so a schedule the settings accept is one the emulator (and Cloud Scheduler)
accepts, and both compute the same firing times. Cron expressions are read by croniter, never by a
parser of our own.

google-cloud-scheduler is an optional extra (``dj-cloud-task[scheduler]``): this is the one place
that imports it. ``HAVE_SCHEDULER`` says whether it is installed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

try:
    from google.cloud import scheduler_v1
    from google.cloud.scheduler_v1.services.cloud_scheduler.transports import (
        CloudSchedulerGrpcTransport,
    )
except ImportError:  # the optional extra is not installed
    HAVE_SCHEDULER = False
else:
    HAVE_SCHEDULER = True

__all__ = [
    "DEFAULT_ATTEMPT_DEADLINE",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_DOUBLINGS",
    "DEFAULT_MIN_BACKOFF",
    "EXTRA",
    "HAVE_SCHEDULER",
    "MAX_ATTEMPT_DEADLINE",
    "MAX_DESCRIPTION",
    "MAX_RETRY_COUNT",
    "MIN_ATTEMPT_DEADLINE",
    "CloudSchedulerGrpcTransport",
    "cron_error",
    "job_id_error",
    "latest_fire",
    "next_fire",
    "scheduler_v1",
    "time_zone_error",
]

#: What to install for the Cloud Scheduler client.
EXTRA = "dj-cloud-task[scheduler]"

#: attempt_deadline of an HTTP target job: 15 s to 30 min, 3 min when unset (seconds).
MIN_ATTEMPT_DEADLINE = 15.0
MAX_ATTEMPT_DEADLINE = 1800.0
DEFAULT_ATTEMPT_DEADLINE = 180.0
#: retry_config: retry_count 0 to 5; Google's defaults for the backoff fields (seconds).
MAX_RETRY_COUNT = 5
DEFAULT_MIN_BACKOFF = 5.0
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_MAX_DOUBLINGS = 5
#: Characters a job description may have.
MAX_DESCRIPTION = 500

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
_NUMERIC_FIELD = re.compile(r"[0-9*,/-]+")
_NAMED_FIELD = re.compile(r"[0-9A-Za-z*,/-]+")
_NAMES = re.compile(r"[A-Za-z]+")
_MONTHS = frozenset(
    {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}
)
_DAYS = frozenset({"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"})
_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
#: Where cron_error looks for a first firing (any fixed time will do).
_NEVER_FIRES_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def job_id_error(value: object) -> str | None:
    """Why value is not a Cloud Scheduler job id, or None when it is."""
    if not isinstance(value, str) or _JOB_ID.fullmatch(value) is None:
        return (
            f"job id {value!r} is invalid: use 1 to 500 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return None


def cron_error(expression: object) -> str | None:
    """Why expression is not a unix-cron schedule Cloud Scheduler takes, or None when it is.

    Five fields (minute, hour, day of month, month, day of week) of numbers, ``*``, ranges,
    steps and lists; month and weekday names (JAN, MON). Not croniter's extensions (a seconds
    field, ``@daily``, ``L``, ``#``, ``H``, ``?``), which Cloud Scheduler refuses.
    """
    if not isinstance(expression, str):
        return f"the cron schedule must be a string, not {expression!r}"
    fields = expression.split()
    if len(fields) != 5:
        return (
            f"cron schedule {expression!r} has {len(fields)} fields; Cloud Scheduler takes 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"
        )
    for label, field, names in zip(
        _FIELDS, fields, (None, None, None, _MONTHS, _DAYS), strict=True
    ):
        pattern = _NUMERIC_FIELD if names is None else _NAMED_FIELD
        unknown = (
            [] if names is None else [n for n in _NAMES.findall(field) if n.upper() not in names]
        )
        if pattern.fullmatch(field) is None or unknown:
            return (
                f"cron schedule {expression!r}: the {label} field {field!r} is not unix-cron "
                "(numbers, '*', ranges 'a-b', steps '/n', lists 'a,b'"
                + (", names like JAN or MON" if names else "")
                + ")"
            )
    if not croniter.is_valid(expression):
        return f"cron schedule {expression!r} is invalid: a value is out of range"
    try:
        # Every field can be valid and the dates still never meet ("0 0 31 2 *"): Cloud
        # Scheduler would hold a job that never fires, and every next firing asked of croniter
        # would raise. From a fixed start, so the answer never depends on today.
        croniter(expression, _NEVER_FIRES_FROM).get_next(datetime)
    except CroniterBadDateError:
        return (
            f"cron schedule {expression!r} never fires: no date matches its day-of-month and "
            "month fields together (e.g. February 31)"
        )
    return None


def time_zone_error(name: object) -> str | None:
    """Why name is not a tz database time zone, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"time zone {name!r} must be a tz database name such as 'Europe/Zurich'"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"time zone {name!r} is not in the tz database (e.g. 'Europe/Zurich', 'UTC')"
    return None


def _fixed_time(expression: str) -> bool:
    """A job at a particular time of day: neither its minute nor its hour field is a wildcard."""
    minute, hour = expression.split()[:2]
    return not minute.startswith("*") and not hour.startswith("*")


def next_fire(expression: str, time_zone: str, after: datetime) -> datetime:
    """The first firing strictly after ``after`` (aware), as an aware UTC datetime.

    Read in ``time_zone`` by croniter. Daylight saving follows croniter and classic cron: a
    fixed-time job whose time falls in the hour skipped in spring fires when the clocks jump
    (02:30 fires at 03:00 local); one whose time falls in the hour repeated in autumn fires
    once, at its first occurrence. A job with a wildcard minute or hour (hourly, every 15
    minutes) follows elapsed time: nothing in the skipped hour, and again in the repeated one.
    """
    if after.tzinfo is None:
        raise ValueError(f"after must be timezone-aware, not {after!r}")
    zone = ZoneInfo(time_zone)
    skip_repeats = _fixed_time(expression)
    times = croniter(expression, after.astimezone(zone))
    while True:
        fire: datetime = times.get_next(datetime)
        # croniter marks the second occurrence of a repeated wall-clock time with fold=1.
        if skip_repeats and fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset():
            continue
        return fire.astimezone(UTC)


def latest_fire(expression: str, time_zone: str, at: datetime) -> datetime:
    """The last firing at or before ``at`` (aware), as an aware UTC datetime, by the rules of
    :func:`next_fire`: the firing whose next one is after ``at``. Found with croniter's
    get_prev in a few steps, however far back the previous firing (or ``at``) is."""
    if at.tzinfo is None:
        raise ValueError(f"at must be timezone-aware, not {at!r}")
    skip_repeats = _fixed_time(expression)
    times = croniter(expression, at.astimezone(ZoneInfo(time_zone)))
    while True:
        fire: datetime = times.get_prev(datetime)
        if skip_repeats and fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset():
            continue  # next_fire skips this repeat: so must its inverse
        break
    # get_prev is strictly before ``at``: a firing exactly at ``at`` is the one after it.
    while (following := next_fire(expression, time_zone, fire)) <= at:
        fire = following
    return fire.astimezone(UTC)
