"""System checks (cloudtask.E000-E012, W001, W002): configuration mistakes caught at start-up."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.recorder import MigrationRecorder

from . import registry
from .conf import TRANSPORT_ALIASES, build_settings
from .exceptions import ConfigurationError
from .message import queue_id_error, task_id_error
from .models import OutboxMessage
from .outbox import outbox_aliases
from .transports import load_transport_class
from .transports.cloudtasks import CloudTasksTransport
from .transports.emulator import EmulatorTransport


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    configured = getattr(django_settings, "CLOUDTASK", None)
    if isinstance(configured, dict) and "BACKEND" in configured:
        return [
            Error(
                'CLOUDTASK["BACKEND"] was renamed CLOUDTASK["TRANSPORT"]: BACKEND now means a '
                "django.tasks backend (TASKS[...]['BACKEND']).",
                hint=f'Write "TRANSPORT": {configured["BACKEND"]!r} in CLOUDTASK instead of '
                '"BACKEND".',
                id="cloudtask.E011",
            )
        ]
    try:
        s = build_settings(configured)
    except ConfigurationError as exc:
        return [Error(str(exc), id="cloudtask.E000")]

    messages: list[CheckMessage] = []
    transport_ok = True
    try:
        transport_cls = load_transport_class(s.transport)
    except ConfigurationError as exc:
        transport_ok = False
        messages.append(
            Error(
                str(exc),
                hint='Use "emulator", "cloudtasks", "immediate", "capture" or a dotted path.',
                id="cloudtask.E008",
            )
        )
    google = s.transport == "cloudtasks" or (
        transport_ok
        and s.transport not in TRANSPORT_ALIASES
        and issubclass(transport_cls, CloudTasksTransport)
        and not issubclass(transport_cls, EmulatorTransport)
    )
    # An emulator named by EMULATOR_HOST has a project and location of its own and signs its
    # own tokens: none of the three is needed to talk to it.
    if google and not s.emulator_host:
        for key, value, number in (
            ("PROJECT", s.project, 1),
            ("LOCATION", s.location, 2),
            ("SAE", s.sae, 3),
        ):
            if not value:
                messages.append(
                    Error(
                        f'CLOUDTASK["{key}"] is required by the "cloudtasks" transport.',
                        id=f"cloudtask.E00{number}",
                    )
                )

    tasks = sorted(registry.all_tasks(), key=lambda t: t.name)
    if s.transport not in ("immediate", "capture") and not s.url:
        without = [t.name for t in tasks if not t.url]
        if without:
            messages.append(
                Error(
                    'CLOUDTASK["URL"] is not set and these tasks have no url=: '
                    + ", ".join(without)
                    + ".",
                    hint='Set CLOUDTASK["URL"] to the endpoint\'s full URL, e.g. '
                    '"https://example.com/_tasks/".',
                    id="cloudtask.E004",
                )
            )
    if err := queue_id_error(s.queue):
        messages.append(Error(f'CLOUDTASK["QUEUE"]: {err}.', id="cloudtask.E005"))
    for t in tasks:
        if t.queue is not None and (err := queue_id_error(t.queue)):
            messages.append(Error(f"Task {t.name}: {err}.", id="cloudtask.E006"))
        fixed = t.fixed_id
        if fixed is not None and (err := task_id_error(fixed)):
            messages.append(Error(f"Task {t.name}: {err}.", id="cloudtask.E007"))
    if s.oidc_verify:
        if not s.sae:
            messages.append(
                Error(
                    'CLOUDTASK["OIDC_VERIFY"] needs CLOUDTASK["SAE"]: the service account whose '
                    "tokens the endpoint accepts.",
                    id="cloudtask.E009",
                )
            )
        if not s.oidc_audience and not s.url and not any(t.url for t in tasks):
            messages.append(
                Error(
                    'CLOUDTASK["OIDC_VERIFY"] needs an audience: set CLOUDTASK["OIDC_AUDIENCE"] '
                    'or CLOUDTASK["URL"].',
                    id="cloudtask.E010",
                )
            )
    if not s.authenticated:
        messages.append(
            Warning(
                "The cloudtask endpoint has no authentication: anyone who can reach it can run "
                "any task.",
                hint='Set CLOUDTASK["SECRET"] (HMAC body signatures) and/or '
                'CLOUDTASK["OIDC_VERIFY"] = True. Without them the endpoint refuses requests '
                'while DEBUG is off unless CLOUDTASK["ALLOW_UNAUTHENTICATED"] is True.',
                id="cloudtask.W001",
            )
        )
    return messages


def check_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --deploy`: the zero-config default must not reach production unnoticed."""
    configured = getattr(django_settings, "CLOUDTASK", None)
    try:
        s = build_settings(configured)
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000, E011)
    if s.transport != "emulator":
        return []
    default = "" if configured and "TRANSPORT" in configured else " (the default)"
    return [
        Warning(
            f'CLOUDTASK["TRANSPORT"] is "emulator"{default}: tasks go to a Cloud Tasks emulator '
            "inside this process, not to Google Cloud Tasks, and are lost when it stops.",
            hint='Set CLOUDTASK["TRANSPORT"] = "cloudtasks" (with PROJECT, LOCATION and SAE) in '
            "production settings.",
            id="cloudtask.W002",
        )
    ]


#: Commands that make or inspect migrations: the outbox table may rightly be missing while they
#: run, and Django runs every check before `migrate`, so E012 would block the command it asks for.
_MIGRATION_COMMANDS = frozenset(
    {
        "migrate",
        "makemigrations",
        "showmigrations",
        "sqlmigrate",
        "squashmigrations",
        "optimizemigration",
    }
)


def check_outbox_table(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """cloudtask.E012: the outbox is on, but its table is missing on a database it writes to."""
    try:
        s = build_settings(getattr(django_settings, "CLOUDTASK", None))
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000, E011)
    if not s.outbox or _running_migrations():
        return []
    table = OutboxMessage._meta.db_table
    messages: list[CheckMessage] = []
    for alias in outbox_aliases():
        try:
            tables = connections[alias].introspection.table_names()
        except Exception:  # noqa: S112 - unreachable or refused: another check's business
            continue
        if MigrationRecorder.Migration._meta.db_table not in tables:
            # Never migrated at all: every app's tables are missing, Django's own "unapplied
            # migrations" notice says so, and the first migrate creates this one too.
            continue
        if table not in tables:
            messages.append(
                Error(
                    f"The cloudtask outbox table is missing on database {alias!r}: run "
                    f'"python manage.py migrate cloudtask{_database_option(alias)}".',
                    hint='Or turn the transactional outbox off with CLOUDTASK["OUTBOX"] = False '
                    "(on-commit calls are then sent at commit and lost if that send fails).",
                    id="cloudtask.E012",
                )
            )
    return messages


def _database_option(alias: str) -> str:
    return "" if alias == DEFAULT_DB_ALIAS else f" --database {alias}"


def _running_migrations() -> bool:
    """Whether this process is `manage.py migrate` (or another migration command)."""
    return len(sys.argv) > 1 and sys.argv[1] in _MIGRATION_COMMANDS
