"""``make demo`` runs ``manage.py demo``: the scripted scenario over a real server and the
embedded emulator, which must pass every expectation and say so."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import run_manage


def test_demo_plays_the_scenario_and_exits_zero(tmp_path: Path) -> None:
    result = run_manage(tmp_path, "demo")
    out = result.stdout

    def shows(pattern: str) -> None:
        assert re.search(pattern, out), f"{pattern!r} not in the timeline:\n{out}{result.stderr}"

    assert result.returncode == 0, out + result.stderr
    shows(r"All \d+ expectations met\.")
    assert "FAILED" not in out
    # The steps the scenario promises, in order.
    steps = [line.split(" ", 2)[1] for line in out.splitlines() if line.startswith("== ")]
    assert steps == ["1.", "2.", "3.", "4.", "5.", "6.", "Task"], out
    # Deliveries came over HTTP from the emulator.
    shows(r"HTTP POST /_tasks/ from Google-Cloud-Tasks: send_confirmation\(order #\d+\), attempt 1")
    shows(r"send_confirmation\(order #\d+\), attempt 1 -> 200")
    # The retried failure: a 500, then a 200 on the second attempt.
    shows(r"charge_payment\(order #\d+\), attempt 1 -> 500")
    shows(r"charge_payment\(order #\d+\), attempt 2 -> 200")
    shows(r"binding run: order #\d+ went paid -> shipped")
    shows(r"ok: neither task handle was ever sent")
    shows(r"second call refused: TaskAlreadyExists")
    shows(r"ok: send_reminder was delivered")


def test_demo_runs_again_on_the_same_database(tmp_path: Path) -> None:
    # make demo twice in a checkout reuses sample_app/db.sqlite3: the second run must pass too.
    first = run_manage(tmp_path, "demo")
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_manage(tmp_path, "demo")
    assert second.returncode == 0, second.stdout + second.stderr
