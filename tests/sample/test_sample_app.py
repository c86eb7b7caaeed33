"""The sample shop's own test suite (sample_app/shop/tests.py), which uses cloudtask.testing,
passes when run the way its README says, with the sample project's settings."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import run_manage


def test_the_sample_apps_own_tests_pass(tmp_path: Path) -> None:
    result = run_manage(tmp_path, "test", "shop", "--noinput", "-v", "2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 8 tests" in result.stderr
    assert re.search(r"^OK$", result.stderr, re.MULTILINE)
