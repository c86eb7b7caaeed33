"""cloudtask.E012: the outbox is on but its table is missing on a database it writes to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import Error, run_checks
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]


def e012(alias: str, command: str) -> Error:
    return Error(
        f"The cloudtask outbox table is missing on database {alias!r}: run "
        f'"python manage.py {command}".',
        hint='Or turn the transactional outbox off with CLOUDTASK["OUTBOX"] = False (on-commit '
        "calls are then sent at commit and lost if that send fails).",
        id="cloudtask.E012",
    )


def outbox_checks() -> list[Any]:
    return [m for m in run_checks(tags=["cloudtask"]) if m.id == "cloudtask.E012"]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_database_without_the_table_is_an_error_naming_the_command(settings: Any) -> None:
    assert outbox_checks() == []
    call_command("migrate", "cloudtask", "zero", database="other", verbosity=0)
    try:
        missing = outbox_checks()
        settings.CLOUDTASK = {**settings.CLOUDTASK, "OUTBOX": False}
        outbox_off = outbox_checks()
    finally:
        call_command("migrate", "cloudtask", database="other", verbosity=0)

    assert missing == [e012("other", "migrate cloudtask --database other")]
    assert outbox_off == []


def test_databases_it_cannot_reach_are_skipped() -> None:
    """Without database access (this test has none) the check says nothing rather than fail."""
    assert outbox_checks() == []


def manage(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.outbox.fresh_settings",
            "CLOUDTASK_FRESH_DB": str(db),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_and_migrate_on_a_new_and_an_upgraded_site(tmp_path: Path) -> None:
    """In processes of their own, on a new SQLite file beside an unreachable PostgreSQL."""
    db = tmp_path / "site.sqlite3"

    # A database never migrated: Django's own notice of unapplied migrations covers it.
    new = manage(db, "check")
    assert new.returncode == 0, new.stderr

    # A site that migrated before cloudtask had its table (an upgrade): the error names the fix.
    upgraded = manage(db, "migrate", "contenttypes")
    assert upgraded.returncode == 0, upgraded.stderr
    missing = manage(db, "check")
    assert missing.returncode == 1
    assert (
        "?: (cloudtask.E012) The cloudtask outbox table is missing on database 'default': run "
        '"python manage.py migrate cloudtask".' in missing.stderr
    )
    assert "'down'" not in missing.stderr  # unreachable: skipped, not reported, no crash

    # The command it names runs: E012 does not stand in the way of migrate itself.
    migrated = manage(db, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    fixed = manage(db, "check")
    assert fixed.returncode == 0, fixed.stderr
    assert "E012" not in fixed.stderr
