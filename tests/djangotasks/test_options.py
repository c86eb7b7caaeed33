"""TASKS[alias]["OPTIONS"]: ON_COMMIT and URL, and the system check messages for the rest."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error
from django.db import transaction

from cloudtask import ConfigurationError
from cloudtask.backends import CloudTasksBackend, TaskResultStatus, task_backends, task_enqueued

from .conftest import Runs, SignalLog, statuses
from .tasks import add

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = "cloudtask.backends.CloudTasksBackend"


def use_options(settings: Any, **options: Any) -> None:
    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": ["default"], "OPTIONS": options}}


# -- checks -------------------------------------------------------------------------------------


def test_valid_settings_pass_the_check(settings: Any) -> None:
    use_options(settings, ON_COMMIT=True, URL="https://example.com/_tasks/")
    assert task_backends["default"].check() == []


def test_the_check_names_each_wrong_option_and_queue() -> None:
    backend = CloudTasksBackend(
        "mail",
        {
            "QUEUES": ["default", "mail out"],
            "OPTIONS": {"ONCOMMIT": True, "QUEUE": "emails", "ON_COMMIT": "yes", "URL": ""},
        },
    )
    where = 'TASKS["mail"]["OPTIONS"]'
    assert backend.check() == [
        Error(
            f"Unknown key 'ONCOMMIT' in {where}; CloudTasksBackend accepts 'ON_COMMIT', 'URL' "
            "(everything else is set in CLOUDTASK).",
            id="cloudtask.E101",
        ),
        Error(
            f"Unknown key 'QUEUE' in {where}; CloudTasksBackend accepts 'ON_COMMIT', 'URL' "
            "(everything else is set in CLOUDTASK).",
            id="cloudtask.E101",
        ),
        Error(f"{where}[\"ON_COMMIT\"] must be True or False, not 'yes'.", id="cloudtask.E101"),
        Error(f"{where}[\"URL\"] must be a non-empty string or None, not ''.", id="cloudtask.E101"),
        Error(
            'TASKS["mail"]["QUEUES"]: queue id \'mail out\' is invalid: use 1 to 100 characters '
            "from A-Z, a-z, 0-9 and '-'.",
            id="cloudtask.E102",
        ),
    ]


def test_options_that_are_not_a_dict() -> None:
    backend = CloudTasksBackend("default", {"OPTIONS": ["ON_COMMIT"]})
    assert [m.msg for m in backend.check()] == [
        'TASKS["default"]["OPTIONS"] must be a dict, not [\'ON_COMMIT\'].'
    ]


def test_enqueue_refuses_a_misconfigured_backend(settings: Any, runs: Runs) -> None:
    use_options(settings, ONCOMMIT=True)
    with pytest.raises(ConfigurationError, match=r"Unknown key 'ONCOMMIT' in TASKS\[\"default\"\]"):
        add.enqueue(1)
    assert runs.of("add") == []


# -- ON_COMMIT ----------------------------------------------------------------------------------


@pytest.fixture
def on_commit(settings: Any, signal_log: SignalLog) -> SignalLog:
    use_options(settings, ON_COMMIT=True)
    signal_log.listen("enqueued", task_enqueued)
    return signal_log


def test_on_commit_sends_when_the_transaction_commits(on_commit: SignalLog, runs: Runs) -> None:
    with transaction.atomic():
        result = add.enqueue(1, b=2)
        assert runs.of("add") == []
        assert result.enqueued_at is None
        assert on_commit.of("enqueued") == []

    (run,) = runs.of("add")
    assert (run["a"], run["b"], run["task_id"]) == (1, 2, result.id)
    assert result.enqueued_at is not None
    assert [s["task_result"] for s in on_commit.of("enqueued")] == [result]


def test_on_commit_sends_nothing_when_the_transaction_rolls_back(
    on_commit: SignalLog, runs: Runs
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        result = add.enqueue(1, b=2)
        raise RuntimeError("roll back")

    assert runs.of("add") == []
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is None
    assert on_commit.of("enqueued") == []


def test_on_commit_sends_at_once_outside_a_transaction(on_commit: SignalLog, runs: Runs) -> None:
    result = add.enqueue(5)

    (run,) = runs.of("add")
    assert run["task_id"] == result.id


def test_without_on_commit_enqueue_sends_inside_the_transaction(runs: Runs) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue(1)
        raise RuntimeError("roll back")

    assert len(runs.of("add")) == 1  # sent, and ran, before the rollback


# -- URL ----------------------------------------------------------------------------------------


def test_url_sends_this_backends_tasks_to_another_endpoint(
    via_emulator: Any, settings: Any, endpoint_url: str, runs: Runs
) -> None:
    # CLOUDTASK["URL"] leads nowhere; OPTIONS["URL"] leads to the live server's endpoint.
    settings.CLOUDTASK = {**settings.CLOUDTASK, "URL": "http://127.0.0.1:9/nowhere/"}
    use_options(settings, URL=endpoint_url)

    result = add.enqueue(7, b=8)

    (run,) = runs.wait("add")
    assert (run["a"], run["b"], run["task_id"]) == (7, 8, result.id)
    assert statuses(via_emulator, result.id, 1) == [200]
