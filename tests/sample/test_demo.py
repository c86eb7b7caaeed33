"""``make demo`` runs ``manage.py demo``: the scripted scenario over a real server and the
embedded emulator, which must pass every expectation and say so."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, run_manage, sample_db


@dataclass
class DemoRun:
    result: subprocess.CompletedProcess[str]
    #: The directory of its database: everything it wrote.
    directory: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One ``manage.py demo`` on a new database, read by the tests below."""
    directory = tmp_path_factory.mktemp("demo")
    return DemoRun(run_manage(directory, "demo"), directory)


def test_demo_plays_the_scenario_and_exits_zero(demo: DemoRun) -> None:
    result = demo.result
    out = result.stdout

    def shows(pattern: str) -> None:
        assert re.search(pattern, out), f"{pattern!r} not in the timeline:\n{out}{result.stderr}"

    assert result.returncode == 0, out + result.stderr
    shows(r"All \d+ expectations met\.")
    assert "FAILED" not in out
    # The steps the scenario promises, in order.
    steps = [line.split(" ", 2)[1] for line in out.splitlines() if line.startswith("== ")]
    assert steps == ["1.", "2.", "3.", "4.", "5.", "6.", "7.", "Task"], out
    # Deliveries came over HTTP from the emulator.
    shows(r"HTTP POST /_tasks/ from Google-Cloud-Tasks: send_confirmation\(order #\d+\), attempt 1")
    shows(r"send_confirmation\(order #\d+\), attempt 1 -> 200")
    # The retried failure: a 503 (the task raised a Retry), then a 200 on the second attempt.
    shows(r"charge_payment\(order #\d+\), attempt 1 -> 503")
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


def test_the_intended_failure_is_announced_and_logged_as_one_warning(demo: DemoRun) -> None:
    result = demo.result
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    announced = [i for i, line in enumerate(lines) if "fails on purpose" in line]
    warned = [i for i, line in enumerate(lines) if " log WARNING " in line]
    assert announced and warned, result.stdout
    # Said before it happens, and then one line, with the reason and no traceback.
    assert announced[0] < warned[0], result.stdout
    assert re.search(
        r"log WARNING cloudtask: Task shop\.tasks\.charge_payment \(\w+\) asked for a retry on "
        r"attempt 1: PaymentGatewayTimeout: payment gateway timed out charging order #\d+$",
        lines[warned[0]],
    ), lines[warned[0]]
    assert len(warned) == 1, result.stdout
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert not re.search(r"\bERROR\b", output), output


def test_what_the_demo_writes_beside_its_database_is_ignored_by_git(demo: DemoRun) -> None:
    # make demo writes beside sample_app/db.sqlite3: a fresh clone's `git status` stays clean
    # only if every such file is ignored there.
    assert demo.result.returncode == 0, demo.result.stdout + demo.result.stderr
    directory = demo.directory
    written = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()
    )
    assert sample_db(directory).name in written
    beside = [f"sample_app/{name.replace('shop.sqlite3', 'db.sqlite3')}" for name in written]
    # The local emulator's state directory (a runserver of the sample project keeps it there).
    beside.append("sample_app/.cloudtask/state.json")
    ignored = subprocess.run(  # noqa: S603 - fixed argv: git and the paths above
        ["git", "check-ignore", "--no-index", *beside],  # noqa: S607 - git from PATH
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(ignored.stdout.split()) == sorted(beside), ignored.stdout + ignored.stderr
