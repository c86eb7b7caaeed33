"""System checks (cloudtask.E000-E010, W001, W002): configuration mistakes caught at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning, register

from . import registry
from .exceptions import ConfigurationError


@register("cloudtask")
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from .backends import load_backend_class
    from .conf import BACKEND_ALIASES, build_settings
    from .tasks import queue_id_error, task_id_error

    try:
        s = build_settings(getattr(django_settings, "CLOUDTASK", None))
    except ConfigurationError as exc:
        return [Error(str(exc), id="cloudtask.E000")]

    messages: list[CheckMessage] = []
    backend_ok = True
    try:
        backend_cls = load_backend_class(s.backend)
    except ConfigurationError as exc:
        backend_ok = False
        messages.append(
            Error(
                str(exc),
                hint='Use "emulator", "cloudtasks", "immediate" or a dotted path.',
                id="cloudtask.E008",
            )
        )
    if s.backend == "cloudtasks" or (
        backend_ok
        and s.backend not in BACKEND_ALIASES
        and issubclass(backend_cls, _cloudtasks_backend())
        and not issubclass(backend_cls, _emulator_backend())
    ):
        for key, value, number in (
            ("PROJECT", s.project, 1),
            ("LOCATION", s.location, 2),
            ("SAE", s.sae, 3),
        ):
            if not value:
                messages.append(
                    Error(
                        f'CLOUDTASK["{key}"] is required by the "cloudtasks" backend.',
                        id=f"cloudtask.E00{number}",
                    )
                )

    tasks = sorted(registry.all_tasks(), key=lambda t: t.name)
    if s.backend != "immediate" and not s.url:
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


@register("cloudtask", deploy=True)
def check_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --deploy`: the zero-config default must not reach production unnoticed."""
    from .conf import build_settings

    configured = getattr(django_settings, "CLOUDTASK", None)
    try:
        s = build_settings(configured)
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000)
    if s.backend != "emulator":
        return []
    default = "" if configured and "BACKEND" in configured else " (the default)"
    return [
        Warning(
            f'CLOUDTASK["BACKEND"] is "emulator"{default}: tasks go to a Cloud Tasks emulator '
            "inside this process, not to Google Cloud Tasks, and are lost when it stops.",
            hint='Set CLOUDTASK["BACKEND"] = "cloudtasks" (with PROJECT, LOCATION and SAE) in '
            "production settings.",
            id="cloudtask.W002",
        )
    ]


def _cloudtasks_backend() -> type:
    from .backends.cloudtasks import CloudTasksBackend

    return CloudTasksBackend


def _emulator_backend() -> type:
    from .backends.emulator import EmulatorBackend

    return EmulatorBackend
