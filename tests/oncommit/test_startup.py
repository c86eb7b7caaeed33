"""Bindings are checked and connected at app ready; `manage.py cloudtask_tasks` lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

from django.core.management import call_command

from . import jobs

ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_binding_stops_django_setup() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.oncommit.bad_settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cloudtask.exceptions.ConfigurationError: binding of task ")
    assert "'tests.oncommit.badapp.tasks.untracked_name_changed'" in last
    assert "needs a FieldTracker on tests.Untracked" in last


def test_cloudtask_tasks_lists_tasks_and_bindings() -> None:
    out = StringIO()
    call_command("cloudtask_tasks", stdout=out)
    text = out.getvalue()

    assert "  tests.oncommit.jobs.ping_other  queue=default  on_commit=True, using=other\n" in text
    assert (
        "  django.db.models.signals.post_save  sender=tests.Parcel  "
        "[updated; fields changed: status; coalesced per instance]  "
        "-> tests.oncommit.jobs.parcel_status_changed\n"
    ) in text
    assert (
        "  django.db.models.signals.m2m_changed  sender=tests.Parcel_tags  "
        "[actions: post_add, post_remove, post_clear]  -> tests.oncommit.jobs.parcel_tagged\n"
    ) in text


def test_cloudtask_tasks_json() -> None:
    out = StringIO()
    call_command("cloudtask_tasks", "--json", stdout=out)
    data = json.loads(out.getvalue())

    (weighed,) = [b for b in data["bindings"] if b["task"].endswith(".parcel_weighed")]
    assert weighed == {
        "signal": "django.db.models.signals.post_save",
        "sender": "tests.Parcel",
        "conditions": ["updated", "fields changed: weight", "one task per save"],
        "task": "tests.oncommit.jobs.parcel_weighed",
    }
    (ping,) = [t for t in data["tasks"] if t["name"] == jobs.ping.name]
    assert ping == {
        "name": "tests.oncommit.jobs.ping",
        "queue": "default",
        "options": {"on_commit": True},
    }
