"""The CLOUDTASK setting, resolved once into a frozen dataclass and rebuilt when it changes."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from os import PathLike
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import Signal, receiver

from . import cloudrun
from .emulator import cron, policy
from .exceptions import ConfigurationError

#: Aliases accepted by CLOUDTASK["TRANSPORT"].
TRANSPORT_ALIASES: dict[str, str] = {
    "cloudtasks": "cloudtask.transports.cloudtasks.CloudTasksTransport",
    "emulator": "cloudtask.transports.emulator.EmulatorTransport",
    "immediate": "cloudtask.transports.immediate.ImmediateTransport",
    "capture": "cloudtask.transports.capture.CaptureTransport",
}

#: Sent after the cached settings were dropped (override_settings, setting_changed), so the
#: layers above (the transport, the dispatch pool) rebuild what they made from them. conf sits
#: below them and must not import them.
settings_reset = Signal()

DEFAULTS: dict[str, Any] = {
    "PROJECT": None,
    "LOCATION": None,
    "SAE": None,
    "URL": None,
    "QUEUE": "default",
    "SECRET": None,
    "TRANSPORT": "emulator",
    "EMULATOR_HOST": None,
    "EMULATOR": {},
    "MAX_PAYLOAD_SIZE": 102_400,
    "DISPATCH_DEADLINE": None,
    "ALLOW_UNAUTHENTICATED": False,
    "OIDC_VERIFY": False,
    "OIDC_AUDIENCE": None,
    "OIDC_CERTS_URL": None,
    "ON_COMMIT_WORKERS": 8,
    "CLIENT_TIMEOUT": 5.0,
    "ENQUEUE_RETRY_DEADLINE": 10.0,
    "OUTBOX": True,
    "OUTBOX_FLUSH_TIMEOUT": 1.0,
    "OUTBOX_RELAY_INTERVAL": 30.0,
    "OUTBOX_ALERT_AGE": 3600.0,
    "RECORDS": True,
    "RECORDS_RETENTION": 30,
    "RECORDS_SYNCHRONOUS_COMMIT": False,
    "UNKNOWN_TASK_ATTEMPTS": 10,
    # Queue id -> rate limits and retry config, applied by `manage.py cloudtask_sync`.
    "QUEUES": {},
    # Schedule name -> cron job of a task, fired by Cloud Scheduler (cloudtask.schedules).
    "SCHEDULES": {},
}

EMULATOR_DEFAULTS: dict[str, Any] = {
    "HOST": "127.0.0.1",
    "PORT": 0,
    "LOG": True,
    "DEDUP_WINDOW": 3600.0,
    "MAX_TASK_SIZE": 1_048_576,
    # Queues created when the emulator starts (it creates others on first use anyway).
    "QUEUES": (),
    # One background emulator per project, shared by every process, its tasks kept on disk
    # (False: an emulator inside each process, whose tasks die with it).
    "PERSIST": True,
    # Where that emulator keeps its state, lock and log (None: see transports.emulator.state_dir).
    "STATE_DIR": None,
    # Seconds the background emulator lives with no call and no task held (None: forever).
    "IDLE_TIMEOUT": 3600.0,
}

MIN_DISPATCH_DEADLINE = timedelta(seconds=15)
MAX_DISPATCH_DEADLINE = timedelta(minutes=30)


#: What cloudtask says when it is used in a project that does not install it.
NOT_INSTALLED = (
    "'cloudtask' is not in INSTALLED_APPS: add it (INSTALLED_APPS = [..., \"cloudtask\"]). "
    "Without it no app's tasks module is imported, so the endpoint knows no task; model-signal "
    "bindings are never connected; cloudtask's system checks and manage.py commands "
    "(cloudtask_tasks, cloudtask_outbox, ...) do not exist; and its tables (the outbox, "
    "execution records, dead letters) are never created."
)


def require_installed() -> None:
    """ConfigurationError(NOT_INSTALLED) when the app registry is loaded without cloudtask.

    Called when cloudtask.registry and cloudtask.models are first imported: every way into
    cloudtask (the seed API, the django.tasks backend, bindings, the endpoint, the checks)
    imports one of them. Otherwise Django's own error for cloudtask's models would be the
    first word, and it advises declaring an app_label, which is the wrong fix. Before the app
    registry has loaded its apps (a module imported from settings), nothing can be told yet,
    and nothing is said.
    """
    if apps.apps_ready and not apps.is_installed("cloudtask"):
        raise ConfigurationError(NOT_INSTALLED)


@dataclass(frozen=True)
class CloudTaskSettings:
    #: PROJECT, LOCATION, SAE and URL as written in CLOUDTASK (None: unset). Code reads .project,
    #: .location, .sae and .url, which fill an unset one on Cloud Run.
    configured_project: str | None
    configured_location: str | None
    configured_sae: str | None
    configured_url: str | None
    queue: str
    #: Every accepted secret; the first one signs.
    secrets: tuple[str, ...]
    transport: str
    emulator_host: str | None
    emulator: Mapping[str, Any]
    max_payload_size: int
    dispatch_deadline: timedelta | None
    allow_unauthenticated: bool
    oidc_verify: bool
    oidc_audience: str | None
    oidc_certs_url: str | None
    on_commit_workers: int
    #: Seconds one CreateTask call may take.
    client_timeout: float
    #: Seconds within which transient CreateTask errors are retried (0: never), for calls with
    #: a task id only: a retry cannot duplicate them.
    enqueue_retry_deadline: float
    #: Write on-commit calls to the transactional outbox before sending them.
    outbox: bool
    #: Seconds a commit waits for its calls to reach Cloud Tasks; the rest is the relay's.
    outbox_flush_timeout: float
    #: Each process relays rows left behind at most this often (seconds; 0: never).
    outbox_relay_interval: float
    #: A row older than this (seconds) is logged at ERROR each time it fails.
    outbox_alert_age: float
    #: Keep an execution record per task id (idempotent delivery, get_result, dead letters).
    records: bool
    #: Days execution records and dead letters are kept (0: forever).
    records_retention: int
    #: On PostgreSQL, wait for the WAL flush on each record write of its own (False: commit
    #: them asynchronously; a database crash can lose the last fraction of a second of them).
    records_synchronous_commit: bool
    #: Deliveries of a task no process registered before it is dead-lettered.
    unknown_task_attempts: int
    #: Each secret encoded once, as HMAC keys (cloudtask.signing).
    secret_keys: tuple[bytes, ...] = field(repr=False, compare=False, default=())
    #: CLOUDTASK["QUEUES"]: queue id -> what cloudtask_sync sets on it.
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    #: The Cloud Run container unset values are detected in (None: not on Cloud Run).
    cloud_run: cloudrun.CloudRun | None = field(default=None, repr=False, compare=False)
    #: CLOUDTASK["SCHEDULES"] as written: read (once) through .schedules.
    schedules_setting: Any = field(default=None, repr=False, compare=False)

    @cached_property
    def schedules(self) -> tuple[dict[str, Schedule], list[ScheduleSettingError]]:
        """CLOUDTASK["SCHEDULES"] read: the valid schedules, and every mistake. A mistake is
        reported by the checks and raised where schedules are used, not when the settings are
        built, so a bad cron line never stops tasks from being sent."""
        return read_schedules(self.schedules_setting)

    @property
    def transport_path(self) -> str:
        return TRANSPORT_ALIASES.get(self.transport, self.transport)

    @property
    def authenticated(self) -> bool:
        return bool(self.secrets) or self.oidc_verify

    # Explicit settings win. On Cloud Run an unset one is detected the first time it is read,
    # so building the settings never waits on a metadata server, and the URL's path is
    # reversed only once the URLconf can be loaded. DetectionError if it cannot be detected.
    @cached_property
    def project(self) -> str | None:
        return self._value("PROJECT", self.configured_project)

    @cached_property
    def location(self) -> str | None:
        return self._value("LOCATION", self.configured_location)

    @cached_property
    def sae(self) -> str | None:
        return self._value("SAE", self.configured_sae)

    @cached_property
    def url(self) -> str | None:
        return self._value("URL", self.configured_url)

    def _value(self, key: str, configured: str | None) -> str | None:
        if configured is not None or self.cloud_run is None:
            return configured
        return self.cloud_run.detect(key).value

    def token_audience(self, url: str, audience: str | None = None) -> str:
        """The audience of the OIDC token on a request to ``url`` (a task, a Cloud Scheduler
        job): the one the endpoint verifies (cloudtask.oidc.expected_audiences), so the
        precedence is the same: ``audience`` (the OIDC_AUDIENCE a message was encoded with),
        OIDC_AUDIENCE, URL, else ``url`` itself. A URL that is neither set nor detectable (a
        Cloud Run job, a service that only sends) is no error here: the request has ``url``."""
        if audience or self.oidc_audience:
            return audience or self.oidc_audience or url
        try:
            return self.url or url
        except cloudrun.DetectionError:
            return url

    def detections(self) -> dict[str, cloudrun.Detected | cloudrun.DetectionError]:
        """On Cloud Run, each of PROJECT, LOCATION, SAE and URL left unset: what was detected
        for it, or why nothing was ({} elsewhere). Makes the lookups not made yet."""
        found: dict[str, cloudrun.Detected | cloudrun.DetectionError] = {}
        if self.cloud_run is None:
            return found
        configured = (
            self.configured_project,
            self.configured_location,
            self.configured_sae,
            self.configured_url,
        )
        for key, value in zip(cloudrun.DETECTABLE, configured, strict=True):
            if value is None:
                try:
                    found[key] = self.cloud_run.detect(key)
                except cloudrun.DetectionError as exc:
                    found[key] = exc
        return found


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw[key]
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f'CLOUDTASK["{key}"] must be a non-empty string or None, not {value!r}.'
        )
    return value


def _bool(raw: Mapping[str, Any], key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise ConfigurationError(f'CLOUDTASK["{key}"] must be True or False, not {value!r}.')
    return value


def _seconds(raw: Mapping[str, Any], key: str, *, zero: bool = True) -> float:
    value = raw[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "a non-negative" if zero else "a positive"
        raise ConfigurationError(
            f'CLOUDTASK["{key}"] must be {kind} number of seconds, not {value!r}.'
        )
    return float(value)


def _count(raw: Mapping[str, Any], key: str, *, zero: bool) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        kind = "a non-negative" if zero else "a positive"
        raise ConfigurationError(f'CLOUDTASK["{key}"] must be {kind} integer, not {value!r}.')
    return value


def _emulator_options(emulator: Mapping[str, Any]) -> None:
    """Validate the CLOUDTASK["EMULATOR"] keys of the shared background emulator."""
    persist = emulator.get("PERSIST", True)
    if not isinstance(persist, bool):
        raise ConfigurationError(
            f'CLOUDTASK["EMULATOR"]["PERSIST"] must be True or False, not {persist!r}.'
        )
    state_dir = emulator.get("STATE_DIR")
    if state_dir is not None and (not isinstance(state_dir, str | PathLike) or not str(state_dir)):
        raise ConfigurationError(
            'CLOUDTASK["EMULATOR"]["STATE_DIR"] must be a directory path (a string or a Path) '
            f"or None, not {state_dir!r}."
        )
    idle = emulator.get("IDLE_TIMEOUT", 3600.0)
    if idle is not None and (
        isinstance(idle, bool) or not isinstance(idle, int | float) or idle <= 0
    ):
        raise ConfigurationError(
            'CLOUDTASK["EMULATOR"]["IDLE_TIMEOUT"] must be a positive number of seconds or None '
            f"(never stop), not {idle!r}."
        )


def _duration(value: object) -> timedelta | None:
    """value as a timedelta when it is one or a number of seconds (a bool is neither); else
    None, for the caller to report with its own error."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return None


def _unknown_keys(given: Iterable[Any], known: Sequence[str], where: str) -> str | None:
    """The message for the keys of a settings dict at ``where`` that are not ``known``; None
    when there are none."""
    unknown = sorted(map(str, set(given) - set(known)))
    if not unknown:
        return None
    return (
        f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}."
    )


def parse_deadline(value: object, where: str) -> timedelta | None:
    """Turn seconds or a timedelta into a timedelta within Cloud Tasks' 15 s to 30 min."""
    if value is None:
        return None
    deadline = _duration(value)
    if deadline is None:
        raise ConfigurationError(
            f"{where} must be a timedelta or a number of seconds, not {value!r}."
        )
    if not MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
        raise ConfigurationError(
            f"{where} is {deadline.total_seconds():g} s; Cloud Tasks accepts 15 s to 30 minutes."
        )
    return deadline


# -- CLOUDTASK["QUEUES"]: the queues `manage.py cloudtask_sync` makes match the settings ----------

#: The keys of a QUEUES entry: Cloud Tasks' RateLimits fields, then its RetryConfig fields.
QUEUE_RATE_KEYS = ("max_dispatches_per_second", "max_concurrent_dispatches")
QUEUE_RETRY_KEYS = (
    "max_attempts",
    "max_retry_duration",
    "min_backoff",
    "max_backoff",
    "max_doublings",
)
QUEUE_KEYS = QUEUE_RATE_KEYS + QUEUE_RETRY_KEYS


@dataclass(frozen=True)
class QueueConfig:
    """One CLOUDTASK["QUEUES"] entry. None: the key is not set, and the queue keeps its own value
    (Google's default on a queue cloudtask_sync creates)."""

    max_dispatches_per_second: float | None = None
    max_concurrent_dispatches: int | None = None
    #: Counts the first attempt; -1 is unlimited.
    max_attempts: int | None = None
    #: Zero is unlimited.
    max_retry_duration: timedelta | None = None
    min_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    max_doublings: int | None = None


class QueueSettingError(ConfigurationError):
    """A mistake in CLOUDTASK["QUEUES"]; ``rule`` names which kind (each has its check id)."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        #: "shape", "unknown", "rate", "retry" or "backoff".
        self.rule = rule


def _queue_value(key: str, value: object, where: str) -> Any:
    """value for a QUEUES entry's key, typed; QueueSettingError when Cloud Tasks would refuse it.

    Zero is refused where the API cannot carry it: RateLimits and RetryConfig hold plain proto3
    integers and doubles, for which 0 is "unset" and makes Cloud Tasks pick its default.
    """
    number = None if isinstance(value, bool) or not isinstance(value, int | float) else value
    integer = number if isinstance(number, int) else None
    if key == "max_dispatches_per_second":
        if number is None or not 0 < number <= policy.MAX_DISPATCHES_PER_SECOND:
            raise QueueSettingError(
                f"{where} must be a number of tasks per second above 0 and at most "
                f"{policy.MAX_DISPATCHES_PER_SECOND:g} (Cloud Tasks' limit), not {value!r}; "
                "to stop a queue, pause it.",
                rule="rate",
            )
        return float(number)
    if key == "max_concurrent_dispatches":
        if integer is None or not 1 <= integer <= policy.MAX_CONCURRENT_DISPATCHES:
            raise QueueSettingError(
                f"{where} must be an integer from 1 to {policy.MAX_CONCURRENT_DISPATCHES} "
                f"(Cloud Tasks' limit), not {value!r}.",
                rule="rate",
            )
        return integer
    if key == "max_attempts":
        if integer is None or not (integer == -1 or integer >= 1):
            raise QueueSettingError(
                f"{where} must be -1 (unlimited) or a positive integer (it counts the first "
                f"attempt), not {value!r}.",
                rule="retry",
            )
        return integer
    if key == "max_doublings":
        if integer is None or integer < 1:
            raise QueueSettingError(
                f"{where} must be a positive integer, not {value!r} (0 cannot be sent: the API "
                "reads it as unset and Cloud Tasks picks its default, 16).",
                rule="retry",
            )
        return integer
    # A duration (a protobuf Duration, seconds and nanos). The backoffs may have fractions of a
    # second: Google's own default min_backoff is 0.1 s, so writing it back must be possible.
    # max_retry_duration is truncated to the second by Cloud Tasks: a fraction would never
    # match what it stores, and cloudtask_sync would report it changed on every run.
    duration = _duration(value)
    if duration is None:
        raise QueueSettingError(
            f"{where} must be a number of seconds or a timedelta, not {value!r}.", rule="retry"
        )
    if duration < timedelta(0):
        raise QueueSettingError(
            f"{where} must be a non-negative number of seconds, not "
            f"{duration.total_seconds():g} s.",
            rule="retry",
        )
    if key == "max_retry_duration" and duration.microseconds:
        raise QueueSettingError(
            f"{where} must be a whole number of seconds (Cloud Tasks truncates it to the "
            f"second), not {duration.total_seconds():g} s.",
            rule="retry",
        )
    return duration


def _queue_config(queue_id: str, options: Mapping[Any, Any]) -> QueueConfig:
    where = f'CLOUDTASK["QUEUES"][{queue_id!r}]'
    if "max_burst_size" in options:
        raise QueueSettingError(
            f"{where}['max_burst_size']: Cloud Tasks computes a queue's burst size from "
            "max_dispatches_per_second (the field is output only): remove the key.",
            rule="unknown",
        )
    unknown = _unknown_keys(options, QUEUE_KEYS, where)
    if unknown is not None:
        raise QueueSettingError(unknown, rule="unknown")
    values = {
        key: _queue_value(key, value, f"{where}[{key!r}]")
        for key, value in options.items()
        if value is not None
    }
    config = QueueConfig(**values)
    if config.min_backoff is not None or config.max_backoff is not None:
        # A key left out is Google's default on a new queue (0.1 s and 1 hour).
        low = config.min_backoff
        high = config.max_backoff
        if low is None:
            low = timedelta(seconds=policy.DEFAULT_MIN_BACKOFF)
        if high is None:
            high = timedelta(seconds=policy.DEFAULT_MAX_BACKOFF)
        if low > high:
            default = ", Google's default"
            raise QueueSettingError(
                f"{where}: min_backoff ({low.total_seconds():g} s"
                f"{default if config.min_backoff is None else ''}) is greater than max_backoff "
                f"({high.total_seconds():g} s{default if config.max_backoff is None else ''}); "
                "Cloud Tasks refuses that.",
                rule="backoff",
            )
    return config


def read_queues(value: object) -> tuple[dict[str, QueueConfig], list[QueueSettingError]]:
    """CLOUDTASK["QUEUES"]: every entry that is right, and every mistake (the checks list them
    all). Queue id syntax is the checks' business (cloudtask.message, a layer above)."""
    if value is None:
        return {}, []
    if not isinstance(value, Mapping):
        return {}, [
            QueueSettingError(
                f'CLOUDTASK["QUEUES"] must be a dict of queue id -> options, not {value!r}.',
                rule="shape",
            )
        ]
    queues: dict[str, QueueConfig] = {}
    problems: list[QueueSettingError] = []
    for queue_id, options in value.items():
        if not isinstance(queue_id, str) or not isinstance(options, Mapping):
            problems.append(
                QueueSettingError(
                    f'CLOUDTASK["QUEUES"] maps queue ids to dicts of options; {queue_id!r}: '
                    f"{options!r} is not one.",
                    rule="shape",
                )
            )
            continue
        try:
            queues[queue_id] = _queue_config(queue_id, options)
        except QueueSettingError as exc:
            problems.append(exc)
    return queues, problems


def parse_queues(value: object) -> dict[str, QueueConfig]:
    queues, problems = read_queues(value)
    if problems:
        raise problems[0]
    return queues


# -- CLOUDTASK["SCHEDULES"]: cron jobs Cloud Scheduler fires (cloudtask.schedules) ----------------

#: The keys of a SCHEDULES entry, and of its "retry" dict (Cloud Scheduler's RetryConfig).
SCHEDULE_KEYS = (
    "task",
    "cron",
    "time_zone",
    "args",
    "kwargs",
    "queue",
    "url",
    "deadline",
    "retry",
    "description",
)
SCHEDULE_RETRY_KEYS = (
    "retry_count",
    "max_retry_duration",
    "min_backoff",
    "max_backoff",
    "max_doublings",
)
#: Cloud Scheduler's attempt_deadline when a schedule sets none.
DEFAULT_SCHEDULE_DEADLINE = timedelta(seconds=cron.DEFAULT_ATTEMPT_DEADLINE)
#: Ends the description of every job cloudtask makes: how `cloudtask_sync` tells its own jobs
#: (which it may update and delete) from jobs made by hand.
MANAGED_MARKER = "[managed by cloudtask]"


@dataclass(frozen=True)
class ScheduleRetry:
    """What Cloud Scheduler does when a firing fails (its RetryConfig; Google's defaults)."""

    #: Retries after a failed attempt, 0 to 5 (0: wait for the next cron time).
    retry_count: int = 0
    #: Retrying stops once both retry_count and this are reached; zero: retry_count alone.
    max_retry_duration: timedelta = timedelta(0)
    min_backoff: timedelta = timedelta(seconds=cron.DEFAULT_MIN_BACKOFF)
    max_backoff: timedelta = timedelta(seconds=cron.DEFAULT_MAX_BACKOFF)
    max_doublings: int = cron.DEFAULT_MAX_DOUBLINGS


@dataclass(frozen=True)
class Schedule:
    """One cron schedule of a task: a CLOUDTASK["SCHEDULES"] entry or an ``@schedule``."""

    #: The Cloud Scheduler job id.
    name: str
    #: The registered name of the task each firing runs.
    task: str
    #: Unix-cron, five fields, read in time_zone.
    cron: str
    time_zone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: A Cloud Tasks queue: each firing enqueues the call there instead of running it inline.
    queue: str | None = None
    #: The endpoint's URL (None: CLOUDTASK["URL"]).
    url: str | None = None
    #: Cloud Scheduler's attempt_deadline for an inline run (15 s to 30 min).
    deadline: timedelta = DEFAULT_SCHEDULE_DEADLINE
    retry: ScheduleRetry = field(default_factory=ScheduleRetry)
    description: str = ""


class ScheduleSettingError(ConfigurationError):
    """A mistake in a schedule; ``rule`` names which kind (each has its check id)."""

    def __init__(self, message: str, *, rule: str, schedule: str | None = None) -> None:
        super().__init__(message)
        #: "shape", "cron", "time_zone" or "option".
        self.rule = rule
        #: The schedule's name (None: the setting as a whole).
        self.schedule = schedule


def _schedule_duration(value: object, where: str, *, low: float, high: float | None) -> timedelta:
    duration = _duration(value)
    if duration is None:
        raise ScheduleSettingError(
            f"{where} must be a number of seconds or a timedelta, not {value!r}.", rule="option"
        )
    seconds = duration.total_seconds()
    if seconds < low or (high is not None and seconds > high):
        bounds = f"{low:g} s to {high:g} s" if high is not None else f"at least {low:g} s"
        raise ScheduleSettingError(
            f"{where} is {seconds:g} s; Cloud Scheduler accepts {bounds}.", rule="option"
        )
    return duration


def _schedule_retry(value: object, where: str) -> ScheduleRetry:
    if not isinstance(value, Mapping):
        raise ScheduleSettingError(
            f"{where} must be a dict with keys among {', '.join(SCHEDULE_RETRY_KEYS)}, "
            f"not {value!r}.",
            rule="option",
        )
    unknown = _unknown_keys(value, SCHEDULE_RETRY_KEYS, where)
    if unknown is not None:
        raise ScheduleSettingError(unknown, rule="option")
    values: dict[str, Any] = {}
    count = value.get("retry_count", 0)
    if (
        isinstance(count, bool)
        or not isinstance(count, int)
        or not 0 <= count <= cron.MAX_RETRY_COUNT
    ):
        raise ScheduleSettingError(
            f'{where}["retry_count"] must be an integer from 0 to {cron.MAX_RETRY_COUNT} (Cloud '
            f"Scheduler's limit), not {count!r}.",
            rule="option",
        )
    values["retry_count"] = count
    for key in ("max_retry_duration", "min_backoff", "max_backoff"):
        if key in value:
            values[key] = _schedule_duration(value[key], f"{where}[{key!r}]", low=0, high=None)
    if "max_doublings" in value:
        doublings = value["max_doublings"]
        if isinstance(doublings, bool) or not isinstance(doublings, int) or doublings < 1:
            raise ScheduleSettingError(
                f'{where}["max_doublings"] must be a positive integer, not {doublings!r} (0 '
                "cannot be sent: the API reads it as unset and Cloud Scheduler picks 5).",
                rule="option",
            )
        values["max_doublings"] = doublings
    retry = ScheduleRetry(**values)
    if retry.min_backoff > retry.max_backoff:
        raise ScheduleSettingError(
            f"{where}: min_backoff ({retry.min_backoff.total_seconds():g} s) is greater than "
            f"max_backoff ({retry.max_backoff.total_seconds():g} s); Cloud Scheduler refuses that.",
            rule="option",
        )
    return retry


def parse_schedule(name: object, options: object, where: str) -> Schedule:
    """One schedule from its name and options (a SCHEDULES entry's dict, or what @schedule
    was given); ScheduleSettingError naming ``where`` and the key when Cloud Scheduler would
    refuse it. Whether the task exists and takes the arguments is the checks' business
    (cloudtask.registry and cloudtask.serialization sit a layer above)."""
    if err := cron.job_id_error(name):
        raise ScheduleSettingError(
            f"{where}: the schedule name is its Cloud Scheduler job id, and {err}.", rule="shape"
        )
    assert isinstance(name, str)
    if not isinstance(options, Mapping):
        raise ScheduleSettingError(
            f'{where} must be a dict with at least "task" and "cron", not {options!r}.',
            rule="shape",
            schedule=name,
        )
    unknown = _unknown_keys(options, SCHEDULE_KEYS, where)
    if unknown is not None:
        raise ScheduleSettingError(unknown, rule="shape", schedule=name)
    task = options.get("task")
    if not isinstance(task, str) or not task:
        raise ScheduleSettingError(
            f'{where}["task"] must be the registered name of a task (e.g. "shop.tasks.report"), '
            f"not {task!r}.",
            rule="shape",
            schedule=name,
        )
    expression = options.get("cron")
    if err := cron.cron_error(expression):
        raise ScheduleSettingError(f'{where}["cron"]: {err}.', rule="cron", schedule=name)
    assert isinstance(expression, str)
    zone = options.get("time_zone", "UTC")
    if err := cron.time_zone_error(zone):
        raise ScheduleSettingError(f'{where}["time_zone"]: {err}.', rule="time_zone", schedule=name)
    args = options.get("args", ())
    if not isinstance(args, list | tuple):
        raise ScheduleSettingError(
            f'{where}["args"] must be a list of positional arguments, not {args!r}.',
            rule="shape",
            schedule=name,
        )
    kwargs = options.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ScheduleSettingError(
            f'{where}["kwargs"] must be a dict of keyword arguments, not {kwargs!r}.',
            rule="shape",
            schedule=name,
        )
    values: dict[str, Any] = {}
    for key in ("queue", "url"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ScheduleSettingError(
                f"{where}[{key!r}] must be a non-empty string or None, not {value!r}.",
                rule="option",
                schedule=name,
            )
        values[key] = value
    url = values["url"]
    if url is not None and not url.startswith(("http://", "https://")):
        raise ScheduleSettingError(
            f'{where}["url"] must be the endpoint\'s absolute http(s) URL, not {url!r}.',
            rule="option",
            schedule=name,
        )
    description = options.get("description", "")
    room = cron.MAX_DESCRIPTION - len(MANAGED_MARKER) - 1
    if not isinstance(description, str) or len(description) > room:
        raise ScheduleSettingError(
            f'{where}["description"] must be a string of at most {room} characters (Cloud '
            f"Scheduler's 500, less cloudtask's marker), not {description!r}.",
            rule="option",
            schedule=name,
        )
    try:
        deadline = (
            _schedule_duration(
                options["deadline"],
                f'{where}["deadline"]',
                low=cron.MIN_ATTEMPT_DEADLINE,
                high=cron.MAX_ATTEMPT_DEADLINE,
            )
            if options.get("deadline") is not None
            else DEFAULT_SCHEDULE_DEADLINE
        )
        retry = (
            _schedule_retry(options["retry"], f'{where}["retry"]')
            if options.get("retry") is not None
            else ScheduleRetry()
        )
    except ScheduleSettingError as exc:
        exc.schedule = name
        raise
    return Schedule(
        name=name,
        task=task,
        cron=" ".join(expression.split()),
        time_zone=zone,
        args=tuple(args),
        kwargs=dict(kwargs),
        queue=values["queue"],
        url=url,
        deadline=deadline,
        retry=retry,
        description=description,
    )


def read_schedules(value: object) -> tuple[dict[str, Schedule], list[ScheduleSettingError]]:
    """CLOUDTASK["SCHEDULES"]: every entry that is right, and every mistake (the checks list
    them all, cloudtask.E028-E031; cloudtask.schedules raises the first)."""
    if value is None:
        return {}, []
    if not isinstance(value, Mapping):
        return {}, [
            ScheduleSettingError(
                f'CLOUDTASK["SCHEDULES"] must be a dict of schedule name -> options, not '
                f"{value!r}.",
                rule="shape",
            )
        ]
    schedules: dict[str, Schedule] = {}
    problems: list[ScheduleSettingError] = []
    for name, options in value.items():
        try:
            schedules[name] = parse_schedule(name, options, f'CLOUDTASK["SCHEDULES"][{name!r}]')
        except ScheduleSettingError as exc:
            problems.append(exc)
    return schedules, problems


def build_settings(user: object) -> CloudTaskSettings:
    if user is None:
        user = {}
    if not isinstance(user, Mapping):
        raise ConfigurationError(f"The CLOUDTASK setting must be a dict, not {user!r}.")
    if "BACKEND" in user:
        raise ConfigurationError(
            'CLOUDTASK["BACKEND"] was renamed CLOUDTASK["TRANSPORT"] (BACKEND now means a '
            f'django.tasks backend in TASKS): write "TRANSPORT": {user["BACKEND"]!r} instead.'
        )
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"Unknown CLOUDTASK key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(DEFAULTS)}."
        )
    raw = {**DEFAULTS, **user}

    secret = raw["SECRET"]
    if secret is None or secret == []:
        secrets: tuple[str, ...] = ()
    elif isinstance(secret, str) and secret:
        secrets = (secret,)
    elif isinstance(secret, list | tuple) and all(isinstance(s, str) and s for s in secret):
        secrets = tuple(secret)
    else:
        raise ConfigurationError(
            'CLOUDTASK["SECRET"] must be a non-empty string or a list of them (the first signs, '
            "any verifies)."
        )

    transport = raw["TRANSPORT"]
    if not isinstance(transport, str) or not transport:
        raise ConfigurationError(
            f'CLOUDTASK["TRANSPORT"] must be "emulator", "cloudtasks", "immediate", "capture" or '
            f"the dotted path of a BaseTransport subclass, not {transport!r}."
        )

    emulator = raw["EMULATOR"]
    if not isinstance(emulator, Mapping):
        raise ConfigurationError(f'CLOUDTASK["EMULATOR"] must be a dict, not {emulator!r}.')
    unknown = sorted(set(emulator) - set(EMULATOR_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f'Unknown CLOUDTASK["EMULATOR"] key(s) {", ".join(map(repr, unknown))}; '
            f"known keys: {', '.join(EMULATOR_DEFAULTS)}."
        )

    queues = emulator.get("QUEUES", ())
    if isinstance(queues, str):
        queues = (queues,)
    if not isinstance(queues, list | tuple) or not all(isinstance(q, str) for q in queues):
        raise ConfigurationError(
            f'CLOUDTASK["EMULATOR"]["QUEUES"] must be a list of queue ids, not {queues!r}.'
        )

    _emulator_options(emulator)

    size = raw["MAX_PAYLOAD_SIZE"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigurationError(
            f'CLOUDTASK["MAX_PAYLOAD_SIZE"] must be a positive number of bytes, not {size!r}.'
        )
    workers = raw["ON_COMMIT_WORKERS"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(
            f'CLOUDTASK["ON_COMMIT_WORKERS"] must be a positive integer, not {workers!r}.'
        )
    timeout = _seconds(raw, "CLIENT_TIMEOUT", zero=False)
    queue = raw["QUEUE"]
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f'CLOUDTASK["QUEUE"] must be a queue id string, not {queue!r}.')

    return CloudTaskSettings(
        configured_project=_optional_str(raw, "PROJECT"),
        configured_location=_optional_str(raw, "LOCATION"),
        configured_sae=_optional_str(raw, "SAE"),
        configured_url=_optional_str(raw, "URL"),
        queue=queue,
        secrets=secrets,
        transport=transport,
        emulator_host=_optional_str(raw, "EMULATOR_HOST"),
        emulator={**EMULATOR_DEFAULTS, **emulator, "QUEUES": tuple(queues)},
        max_payload_size=size,
        dispatch_deadline=parse_deadline(
            raw["DISPATCH_DEADLINE"], 'CLOUDTASK["DISPATCH_DEADLINE"]'
        ),
        allow_unauthenticated=_bool(raw, "ALLOW_UNAUTHENTICATED"),
        oidc_verify=_bool(raw, "OIDC_VERIFY"),
        oidc_audience=_optional_str(raw, "OIDC_AUDIENCE"),
        oidc_certs_url=_optional_str(raw, "OIDC_CERTS_URL"),
        on_commit_workers=workers,
        client_timeout=timeout,
        enqueue_retry_deadline=_seconds(raw, "ENQUEUE_RETRY_DEADLINE"),
        outbox=_bool(raw, "OUTBOX"),
        outbox_flush_timeout=_seconds(raw, "OUTBOX_FLUSH_TIMEOUT", zero=False),
        outbox_relay_interval=_seconds(raw, "OUTBOX_RELAY_INTERVAL"),
        outbox_alert_age=_seconds(raw, "OUTBOX_ALERT_AGE", zero=False),
        records=_bool(raw, "RECORDS"),
        records_retention=_count(raw, "RECORDS_RETENTION", zero=True),
        records_synchronous_commit=_bool(raw, "RECORDS_SYNCHRONOUS_COMMIT"),
        unknown_task_attempts=_count(raw, "UNKNOWN_TASK_ATTEMPTS", zero=False),
        secret_keys=tuple(s.encode() for s in secrets),
        # Last: the checks report a QUEUES mistake on its own (cloudtask.E023-E027) and check
        # the rest without it, which needs every other key read first.
        queues=parse_queues(raw["QUEUES"]),
        # Reads the environment only: nothing is looked up before a value is needed.
        cloud_run=cloudrun.current(),
        schedules_setting=raw["SCHEDULES"],
    )


_lock = threading.Lock()
_cached: CloudTaskSettings | None = None


def get_settings() -> CloudTaskSettings:
    """The resolved CLOUDTASK setting (cached; rebuilt after override_settings changes it)."""
    cached = _cached
    if cached is not None:
        return cached
    return _load()


def _load() -> CloudTaskSettings:
    global _cached
    with _lock:
        if _cached is None:
            _cached = build_settings(getattr(django_settings, "CLOUDTASK", None))
        return _cached


def reset() -> None:
    """Forget the cached settings; whatever was built from them is rebuilt on next use."""
    global _cached
    with _lock:
        _cached = None
    # What was detected on Cloud Run goes too, so a test that changes the environment (or a
    # process whose metadata server failed once) looks again.
    cloudrun.reset()
    settings_reset.send(sender=CloudTaskSettings)


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "CLOUDTASK":
        reset()
