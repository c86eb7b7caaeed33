"""`.execute()` runs a task inline, with no queue behind it: an exception is final whatever the
task's max_attempts says (docs/execution.md, "The paths compared")."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtask import signals
from tests.tasks import always_fails, raises_type_error

from .conftest import Waiter

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed() -> Iterator[Waiter]:
    waiter = Waiter()
    signals.task_failed.connect(waiter)
    yield waiter
    signals.task_failed.disconnect(waiter)


@pytest.mark.parametrize(
    ("task", "error"),
    [(always_fails, ValueError), (raises_type_error, TypeError)],
    ids=["max_attempts=2", "no max_attempts"],
)
def test_an_exception_in_execute_is_final(
    task: Any, error: type[Exception], failed: Waiter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cloudtask"), pytest.raises(error):
        task().execute()

    (signal,) = failed.calls
    assert signal["sender"] is task
    assert signal["request"].is_local is True
    assert isinstance(signal["exception"], error)
    assert signal["final"] is True
    assert any(
        "failed for good on attempt 1 of 1 (run inline)" in r.getMessage() for r in caplog.records
    )
