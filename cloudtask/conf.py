"""The CLOUDTASK setting, resolved once into a frozen dataclass and rebuilt when it changes."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import Signal, receiver

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
    "UNKNOWN_TASK_ATTEMPTS": 10,
}

EMULATOR_DEFAULTS: dict[str, Any] = {
    "HOST": "127.0.0.1",
    "PORT": 0,
    "LOG": True,
    "DEDUP_WINDOW": 3600.0,
    "MAX_TASK_SIZE": 1_048_576,
    # Queues created when the emulator starts (it creates others on first use anyway).
    "QUEUES": (),
}

MIN_DISPATCH_DEADLINE = timedelta(seconds=15)
MAX_DISPATCH_DEADLINE = timedelta(minutes=30)


@dataclass(frozen=True)
class CloudTaskSettings:
    project: str | None
    location: str | None
    sae: str | None
    url: str | None
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
    #: Deliveries of a task no process registered before it is dead-lettered.
    unknown_task_attempts: int
    #: Each secret encoded once, as HMAC keys (cloudtask.signing).
    secret_keys: tuple[bytes, ...] = field(repr=False, compare=False, default=())

    @property
    def transport_path(self) -> str:
        return TRANSPORT_ALIASES.get(self.transport, self.transport)

    @property
    def authenticated(self) -> bool:
        return bool(self.secrets) or self.oidc_verify


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


def parse_deadline(value: object, where: str) -> timedelta | None:
    """Turn seconds or a timedelta into a timedelta within Cloud Tasks' 15 s to 30 min."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigurationError(
            f"{where} must be a timedelta or a number of seconds, not {value!r}."
        )
    deadline = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if not MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
        raise ConfigurationError(
            f"{where} is {deadline.total_seconds():g} s; Cloud Tasks accepts 15 s to 30 minutes."
        )
    return deadline


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
        project=_optional_str(raw, "PROJECT"),
        location=_optional_str(raw, "LOCATION"),
        sae=_optional_str(raw, "SAE"),
        url=_optional_str(raw, "URL"),
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
        unknown_task_attempts=_count(raw, "UNKNOWN_TASK_ATTEMPTS", zero=False),
        secret_keys=tuple(s.encode() for s in secrets),
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
    settings_reset.send(sender=CloudTaskSettings)


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "CLOUDTASK":
        reset()
