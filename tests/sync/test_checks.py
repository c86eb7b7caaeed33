"""CLOUDTASK["QUEUES"] system checks (cloudtask.E023-E027, W008): Cloud Tasks' own bounds, caught
at start-up with the queue and key named."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.checks import Error, Warning, run_checks

from cloudtask.conf import get_settings
from tests.api.conftest import BASE

WHERE = "CLOUDTASK[\"QUEUES\"]['emails']"


def queue_checks(queues: Any, settings: Any) -> list[Any]:
    settings.CLOUDTASK = {**BASE, "QUEUES": queues}
    return [
        m
        for m in run_checks(tags=["cloudtask"])
        if m.id in {f"cloudtask.E02{n}" for n in range(3, 8)} or m.id == "cloudtask.W008"
    ]


#: The queues tests/tasks.py's tasks send to. Tasks registered by other test modules (imported
#: or not, depending on which tests run in this process) send to others: W008s about those are
#: not these tests' business.
OURS = ("default", "other-queue", "night")


def about_ours(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.id != "cloudtask.W008" or any(f"'{q}'" in m.msg for q in OURS)]


def errors(queues: Any, settings: Any) -> list[Any]:
    return [m for m in queue_checks(queues, settings) if m.id != "cloudtask.W008"]


@pytest.mark.parametrize(
    ("options", "check_id", "message"),
    [
        (
            {"max_dispatches_per_second": 501},
            "cloudtask.E025",
            f"{WHERE}['max_dispatches_per_second'] must be a number of tasks per second above 0 "
            "and at most 500 (Cloud Tasks' limit), not 501; to stop a queue, pause it.",
        ),
        (
            {"max_dispatches_per_second": 0},
            "cloudtask.E025",
            f"{WHERE}['max_dispatches_per_second'] must be a number of tasks per second above 0 "
            "and at most 500 (Cloud Tasks' limit), not 0; to stop a queue, pause it.",
        ),
        (
            {"max_concurrent_dispatches": 5001},
            "cloudtask.E025",
            f"{WHERE}['max_concurrent_dispatches'] must be an integer from 1 to 5000 "
            "(Cloud Tasks' limit), not 5001.",
        ),
        (
            {"max_concurrent_dispatches": -1},
            "cloudtask.E025",
            f"{WHERE}['max_concurrent_dispatches'] must be an integer from 1 to 5000 "
            "(Cloud Tasks' limit), not -1.",
        ),
        (
            {"max_attempts": 0},
            "cloudtask.E026",
            f"{WHERE}['max_attempts'] must be -1 (unlimited) or a positive integer (it counts "
            "the first attempt), not 0.",
        ),
        (
            {"max_attempts": -2},
            "cloudtask.E026",
            f"{WHERE}['max_attempts'] must be -1 (unlimited) or a positive integer (it counts "
            "the first attempt), not -2.",
        ),
        (
            {"min_backoff": -1},
            "cloudtask.E026",
            f"{WHERE}['min_backoff'] must be a non-negative number of seconds, not -1 s.",
        ),
        (
            {"max_retry_duration": timedelta(seconds=1.5)},
            "cloudtask.E026",
            f"{WHERE}['max_retry_duration'] must be a whole number of seconds (Cloud Tasks "
            "truncates it to the second), not 1.5 s.",
        ),
        (
            {"max_backoff": "1h"},
            "cloudtask.E026",
            f"{WHERE}['max_backoff'] must be a number of seconds or a timedelta, not '1h'.",
        ),
        (
            {"max_doublings": 0},
            "cloudtask.E026",
            f"{WHERE}['max_doublings'] must be a positive integer, not 0 (0 cannot be sent: the "
            "API reads it as unset and Cloud Tasks picks its default, 16).",
        ),
        (
            {"min_backoff": 60, "max_backoff": 10},
            "cloudtask.E027",
            f"{WHERE}: min_backoff (60 s) is greater than max_backoff (10 s); Cloud Tasks "
            "refuses that.",
        ),
        (
            {"min_backoff": timedelta(hours=2)},
            "cloudtask.E027",
            f"{WHERE}: min_backoff (7200 s) is greater than max_backoff (3600 s, Google's "
            "default); Cloud Tasks refuses that.",
        ),
        (
            {"max_burst_size": 10},
            "cloudtask.E024",
            f"{WHERE}['max_burst_size']: Cloud Tasks computes a queue's burst size from "
            "max_dispatches_per_second (the field is output only): remove the key.",
        ),
        (
            {"max_retries": 3, "rate": 1},
            "cloudtask.E024",
            f"{WHERE}: unknown key(s) 'max_retries', 'rate'; known keys: "
            "max_dispatches_per_second, max_concurrent_dispatches, max_attempts, "
            "max_retry_duration, min_backoff, max_backoff, max_doublings.",
        ),
    ],
)
def test_each_bound_is_an_error_naming_the_queue_and_key(
    settings: Any, options: dict[str, Any], check_id: str, message: str
) -> None:
    assert errors({"emails": options, "default": {}}, settings) == [Error(message, id=check_id)]


def test_queue_id_syntax(settings: Any) -> None:
    assert errors({"bad_id": {}, "default": {}}, settings) == [
        Error(
            "CLOUDTASK[\"QUEUES\"]: queue id 'bad_id' is invalid: use 1 to 100 characters from "
            "A-Z, a-z, 0-9 and '-'.",
            id="cloudtask.E023",
        )
    ]


def test_queues_must_be_a_dict_of_dicts(settings: Any) -> None:
    assert errors(["emails"], settings) == [
        Error(
            "CLOUDTASK[\"QUEUES\"] must be a dict of queue id -> options, not ['emails'].",
            id="cloudtask.E023",
        )
    ]
    assert errors({"emails": 5}, settings) == [
        Error(
            "CLOUDTASK[\"QUEUES\"] maps queue ids to dicts of options; 'emails': 5 is not one.",
            id="cloudtask.E023",
        )
    ]


def test_every_mistake_is_listed_and_the_rest_of_the_settings_still_checked(
    settings: Any,
) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "QUEUES": {"a": {"max_attempts": 0}, "b": {"max_dispatches_per_second": 900}},
        "SECRET": None,
    }
    found = {m.id for m in run_checks(tags=["cloudtask"])}
    assert {"cloudtask.E026", "cloudtask.E025", "cloudtask.W001"} <= found
    assert "cloudtask.E000" not in found


def test_good_queues_pass_and_parse_into_typed_values(settings: Any) -> None:
    queues = {
        "default": {
            "max_dispatches_per_second": 500,
            "max_concurrent_dispatches": 5000,
            "max_attempts": -1,
            "max_retry_duration": 0,
            "min_backoff": 0,
            "max_backoff": timedelta(minutes=5),
            "max_doublings": 4,
        },
        "other-queue": {},
    }
    assert about_ours(queue_checks(queues, settings)) == []
    parsed = get_settings().queues["default"]
    assert parsed.max_dispatches_per_second == 500.0
    assert parsed.max_retry_duration == timedelta(0)
    assert parsed.max_backoff == timedelta(minutes=5)
    assert get_settings().queues["other-queue"].max_attempts is None


def test_a_queue_tasks_use_but_queues_leaves_out_is_a_warning(settings: Any) -> None:
    # tests/tasks.py sends to "default" (CLOUDTASK["QUEUE"]) and to "other-queue".
    assert about_ours(queue_checks({"default": {}}, settings)) == [
        Warning(
            "Queue 'other-queue' is used (task tests.tasks.fixed_name) but is not in "
            'CLOUDTASK["QUEUES"]: manage.py cloudtask_sync will not create it.',
            hint="Add 'other-queue' to CLOUDTASK[\"QUEUES\"] ({} keeps Google's defaults), or "
            "create the queue yourself.",
            id="cloudtask.W008",
        )
    ]


def test_no_queues_setting_no_warning(settings: Any) -> None:
    settings.CLOUDTASK = dict(BASE)
    assert [m for m in run_checks(tags=["cloudtask"]) if m.id == "cloudtask.W008"] == []


def test_a_queue_a_schedule_uses_counts_too(settings: Any) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "QUEUES": {"default": {}, "other-queue": {}},
        "SCHEDULES": {
            "nightly": {"task": "tests.tasks.add", "cron": "0 3 * * *", "queue": "night"}
        },
    }
    assert [
        m.msg for m in about_ours(run_checks(tags=["cloudtask"])) if m.id == "cloudtask.W008"
    ] == [
        "Queue 'night' is used (schedule nightly) but is not in CLOUDTASK[\"QUEUES\"]: "
        "manage.py cloudtask_sync will not create it."
    ]
