"""System checks of CLOUDTASK["SCHEDULES"] (cloudtask.E028-E034): each mistake gets its id and
a message naming the schedule and the key to fix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.test import override_settings

from cloudtask import CloudTaskRequest, ConfigurationError, registry, schedule, schedules, task
from cloudtask.checks import check_schedules
from cloudtask.emulator import cron
from tests.schedules import jobs  # noqa: F401 - registers the tasks named below

GOOD = {"task": "schedules.report", "cron": "0 3 * * *", "args": [date(2026, 3, 1)]}


def _check(entries: Any) -> list[tuple[str, str]]:
    with override_settings(CLOUDTASK={**django_settings.CLOUDTASK, "SCHEDULES": entries}):
        return [(m.id or "", m.msg) for m in check_schedules()]


def test_good_schedules_pass() -> None:
    assert _check({"nightly": GOOD, "weekly": {**GOOD, "time_zone": "Europe/Zurich"}}) == []


@pytest.mark.parametrize(
    ("entry", "check_id", "message"),
    [
        ({"cron": "0 3 * * *"}, "cloudtask.E028", """['r']["task"] must be the registered name"""),
        ({**GOOD, "every": 2}, "cloudtask.E028", "['r']: unknown key(s) 'every'"),
        ({**GOOD, "args": "today"}, "cloudtask.E028", """['r']["args"] must be a list"""),
        (
            {**GOOD, "cron": "0 3 * *"},
            "cloudtask.E029",
            """['r']["cron"]: cron schedule '0 3 * *' has 4 fields""",
        ),
        (
            {**GOOD, "cron": "0 3 L * *"},
            "cloudtask.E029",
            """['r']["cron"]: cron schedule '0 3 L * *': the day of month field 'L'""",
        ),
        ({**GOOD, "cron": "0 25 * * *"}, "cloudtask.E029", "out of range"),
        (
            {**GOOD, "cron": "0 0 31 2 *"},
            "cloudtask.E029",
            """['r']["cron"]: cron schedule '0 0 31 2 *' never fires: no date matches""",
        ),
        (
            {**GOOD, "time_zone": "Mars/Olympus"},
            "cloudtask.E030",
            """['r']["time_zone"]: time zone 'Mars/Olympus'""",
        ),
        (
            {**GOOD, "deadline": 5},
            "cloudtask.E031",
            """['r']["deadline"] is 5 s; Cloud Scheduler accepts 15 s to 1800 s""",
        ),
        (
            {**GOOD, "retry": {"retry_count": 6}},
            "cloudtask.E031",
            """['r']["retry"]["retry_count"] must be an integer from 0 to 5""",
        ),
        (
            {**GOOD, "retry": {"min_backoff": 60, "max_backoff": 10}},
            "cloudtask.E031",
            """['r']["retry"]: min_backoff (60 s) is greater than max_backoff (10 s)""",
        ),
        (
            {**GOOD, "retry": {"tries": 1}},
            "cloudtask.E031",
            """['r']["retry"]: unknown key(s) 'tries'""",
        ),
        (
            {**GOOD, "queue": "bad_queue"},
            "cloudtask.E031",
            """['r']["queue"]: queue id 'bad_queue' is invalid""",
        ),
        (
            {**GOOD, "url": "ftp://example.com/"},
            "cloudtask.E031",
            """['r']["url"] must be the endpoint's absolute http(s) URL""",
        ),
        (
            {**GOOD, "description": "x" * 480},
            "cloudtask.E031",
            """['r']["description"] must be a string of at most 477""",
        ),
        (
            {**GOOD, "task": "schedules.nope"},
            "cloudtask.E032",
            """['r']["task"]: no task is registered as 'schedules.nope'""",
        ),
        (
            {**GOOD, "args": []},
            "cloudtask.E033",
            """['r']["args"]: the arguments do not fit task schedules.report: """
            "missing a required argument: 'day'",
        ),
        (
            {**GOOD, "kwargs": {"colour": "red"}},
            "cloudtask.E033",
            """['r']["kwargs"]: the arguments do not fit task schedules.report: """
            "got an unexpected keyword argument 'colour'",
        ),
        (
            {**GOOD, "args": [object()]},
            "cloudtask.E033",
            "['r']: schedules.report() argument 'day': cannot serialize object of type object",
        ),
    ],
)
def test_each_mistake_has_its_id_and_names_the_schedule_and_key(
    entry: dict[str, Any], check_id: str, message: str
) -> None:
    ((found_id, found),) = _check({"r": entry})
    assert found_id == check_id
    assert found.startswith('CLOUDTASK["SCHEDULES"]')
    assert message in found


def test_a_bad_name_or_shape() -> None:
    assert _check({"bad.name": GOOD}) == [
        (
            "cloudtask.E028",
            """CLOUDTASK["SCHEDULES"]['bad.name']: the schedule name is its Cloud Scheduler job """
            "id, and job id 'bad.name' is invalid: use 1 to 500 characters from A-Z, a-z, 0-9, "
            "'_' and '-'.",
        )
    ]
    assert _check("0 3 * * *") == [
        (
            "cloudtask.E028",
            """CLOUDTASK["SCHEDULES"] must be a dict of schedule name -> options, not """
            "'0 3 * * *'.",
        )
    ]


def test_every_mistake_is_reported_and_the_good_ones_still_checked() -> None:
    found = _check(
        {
            "a": {**GOOD, "cron": "daily"},
            "b": {**GOOD, "time_zone": "Nowhere"},
            "c": {**GOOD, "task": "schedules.nope"},
            "d": GOOD,
        }
    )
    assert sorted(i for i, _ in found) == ["cloudtask.E029", "cloudtask.E030", "cloudtask.E032"]


def test_a_mistake_does_not_break_the_other_settings() -> None:
    with override_settings(
        CLOUDTASK={**django_settings.CLOUDTASK, "SCHEDULES": {"r": {**GOOD, "cron": "x"}}}
    ):
        ids = {m.id for m in run_checks(tags=["cloudtask"])}
        with pytest.raises(ConfigurationError, match="""CLOUDTASK\\["SCHEDULES"\\]\\['r'\\]"""):
            schedules.get_schedules()
    assert "cloudtask.E029" in ids
    assert "cloudtask.E000" not in ids


def test_the_missing_client_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # google-cloud-scheduler is installed for the tests: make this process not see it.
    monkeypatch.setattr(cron, "HAVE_SCHEDULER", False)
    ((check_id, message),) = _check({"r": GOOD})
    assert check_id == "cloudtask.E034"
    assert "pip install 'dj-cloud-task[scheduler]'" in message
    assert _check({}) == []


@pytest.fixture
def decorated() -> Iterator[str]:
    @schedule("30 6 * * 1", time_zone="Europe/Zurich")
    @task(name="schedules.checked")
    def checked(request: CloudTaskRequest) -> None:
        pass

    yield "schedules-checked"
    schedules.unregister("schedules-checked")
    registry.unregister("schedules.checked")


def test_a_setting_and_a_decorator_with_one_name_clash(decorated: str) -> None:
    assert _check({}) == []
    ((check_id, message),) = _check({decorated: GOOD})
    assert check_id == "cloudtask.E028"
    assert message.startswith(
        f"""CLOUDTASK["SCHEDULES"]['{decorated}'] has the name of the @schedule"""
    )
