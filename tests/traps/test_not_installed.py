"""Trap: 'cloudtask' left out of INSTALLED_APPS.

The app registry is process-wide, so each case runs in a Python process of its own with
tests.traps.not_installed_settings: the README's settings and URLconf, minus the app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtask.conf import NOT_INSTALLED

ROOT = Path(__file__).resolve().parents[2]
ERROR = f"cloudtask.exceptions.ConfigurationError: {NOT_INSTALLED}"


def without_cloudtask(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.traps.not_installed_settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_the_message_says_what_to_add_and_what_it_affects() -> None:
    assert NOT_INSTALLED.startswith(
        "'cloudtask' is not in INSTALLED_APPS: add it (INSTALLED_APPS = [..., \"cloudtask\"])."
    )
    for affected in ("tasks module", "endpoint", "bindings", "system checks", "cloudtask_tasks"):
        assert affected in NOT_INSTALLED


@pytest.mark.parametrize(
    "code",
    [
        # The task module a view imports to call .delay(): refused at its first line.
        "from tests.traps.shop.tasks import ping; ping().delay()",
        # A model-signal binding, declared at import time.
        "import tests.traps.shop.receivers",
        # The endpoint: the URLconf that includes cloudtask.urls cannot load, so every URL of
        # the site fails with the error (and the server's log shows it).
        "from django.test import Client; Client().post('/_tasks/', data=b'{}', "
        "content_type='application/json')",
        # The backend-neutral seed API entry points.
        "from cloudtask import send_many",
        "from cloudtask import on_commit_task",
        # Django's tasks framework, with cloudtask's backend named in TASKS.
        "from cloudtask.backends import CloudTasksBackend",
        # The models, imported by anything that reads the outbox or the records.
        "from cloudtask.models import TaskExecution",
    ],
    ids=["delay", "binding", "endpoint", "send_many", "on_commit_task", "backend", "models"],
)
def test_using_cloudtask_raises_the_error(code: str) -> None:
    assert last_line(without_cloudtask("-c", f"import django; django.setup(); {code}")) == ERROR


def test_manage_py_check_fails_with_the_error() -> None:
    # Django's URL checks load the URLconf, which includes cloudtask.urls.
    assert last_line(without_cloudtask("-m", "django", "check")) == ERROR


def test_the_error_is_improperly_configured() -> None:
    code = (
        "import django; django.setup()\n"
        "from django.core.exceptions import ImproperlyConfigured\n"
        "try:\n"
        "    import tests.traps.shop.tasks\n"
        "except ImproperlyConfigured as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = without_cloudtask("-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "ConfigurationError"), result.stderr
