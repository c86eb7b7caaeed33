"""manage.py cloudtask_sync on queues: the emulator's queues made to match CLOUDTASK["QUEUES"],
read back with the real client's GetQueue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError
from google.api_core import exceptions as api_exceptions
from google.cloud import tasks_v2

from cloudtask.emulator import Emulator

from .conftest import queue_name, sync

EMAILS = {
    "max_attempts": 5,
    "min_backoff": 2,
    "max_backoff": timedelta(minutes=1),
    "max_doublings": 3,
    "max_retry_duration": timedelta(hours=1),
}
REPORTS = {"max_dispatches_per_second": 2.5, "max_concurrent_dispatches": 3}


def managed_headers(queue: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in queue.http_target.header_overrides}


def test_creates_the_queues_with_their_settings(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    configure({"emails": EMAILS, "reports": REPORTS})

    out = sync()

    assert "create    queue emails" in out
    assert "max_backoff: 60s" in out
    assert "max_dispatches_per_second: 2.5/s" in out
    assert "created queue emails\ncreated queue reports\n" in out
    assert "Done: 2 queues created." in out
    client = emu.client()
    emails = client.get_queue(name=queue_name(emu, "emails"))
    retry = emails.retry_config
    assert (retry.max_attempts, retry.max_doublings) == (5, 3)
    assert (retry.min_backoff, retry.max_backoff) == (timedelta(seconds=2), timedelta(minutes=1))
    assert retry.max_retry_duration == timedelta(hours=1)
    assert managed_headers(emails) == {"X-Cloudtask-Managed": "cloudtask_sync"}
    reports = client.get_queue(name=queue_name(emu, "reports"))
    assert reports.rate_limits.max_dispatches_per_second == 2.5
    assert reports.rate_limits.max_concurrent_dispatches == 3
    # Keys the entry leaves out are Google's defaults.
    assert reports.retry_config.max_attempts == 100


def test_a_second_run_changes_nothing_and_says_so(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure({"emails": EMAILS, "reports": REPORTS, "default": {}})
    sync()
    assert writes["create_queue"] == 3

    out = sync()

    assert out.splitlines()[-1] == "Nothing to change: 3 queues match the settings."
    assert "unchanged queue emails" in out
    assert writes == Counter(create_queue=3)


def test_an_update_shows_old_and_new_values_and_applies_them(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure({"emails": EMAILS, "reports": REPORTS})
    sync()
    configure({"emails": {**EMAILS, "max_attempts": 8, "min_backoff": 5}, "reports": REPORTS})

    out = sync()

    assert "update    queue emails\n" in out
    assert "max_attempts: 5 -> 8" in out
    assert "min_backoff: 2s -> 5s" in out
    assert "max_doublings" not in out.split("update    queue emails")[1].split("unchanged")[0]
    assert "unchanged queue reports" in out
    assert "Done: 1 queue updated." in out
    assert writes["update_queue"] == 1
    retry = emu.client().get_queue(name=queue_name(emu, "emails")).retry_config
    assert (retry.max_attempts, retry.min_backoff, retry.max_doublings) == (
        8,
        timedelta(seconds=5),
        3,
    )


def test_writing_googles_sub_second_default_backoff_goes_back_to_it(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure({"emails": {"min_backoff": 2, "max_backoff": 30}})
    sync()
    # docs/queues.md: removing a key does not reset it; write the default value to go back.
    configure({"emails": {"min_backoff": 0.1, "max_backoff": timedelta(milliseconds=2500)}})

    out = sync()

    assert "min_backoff: 2s -> 0.1s" in out
    assert "max_backoff: 30s -> 2.5s" in out
    retry = emu.client().get_queue(name=queue_name(emu, "emails")).retry_config
    assert (retry.min_backoff, retry.max_backoff) == (
        timedelta(milliseconds=100),
        timedelta(milliseconds=2500),
    )
    assert sync().splitlines()[-1] == "Nothing to change: 1 queue matches the settings."
    assert writes == Counter(create_queue=1, update_queue=1)


def test_dry_run_prints_the_plan_and_changes_nothing(
    emu: Emulator, configure: Callable[..., None], writes: Counter[str]
) -> None:
    configure({"emails": EMAILS})

    out = sync("--dry-run")

    assert "create    queue emails" in out
    assert "max_attempts: 5" in out
    assert out.splitlines()[-1] == "Dry run: 1 change(s) listed, none made."
    assert sum(writes.values()) == 0
    assert (
        list(emu.client().list_queues(parent=f"projects/{emu.project}/locations/{emu.location}"))
        == []
    )


def test_prune_deletes_a_managed_queue_no_longer_named_never_another(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    client = emu.client()
    handmade = client.create_queue(
        parent=f"projects/{emu.project}/locations/{emu.location}",
        queue=tasks_v2.Queue(name=queue_name(emu, "handmade")),
    )
    configure({"emails": EMAILS, "old": {}})
    sync()
    configure({"emails": EMAILS})

    without = sync()
    assert "delete    queue" not in without
    assert "No longer in the settings (--prune deletes them): queue old." in without
    pruned = sync("--prune")

    assert "delete    queue old" in pruned
    assert "Not created by cloudtask_sync, left alone: queue handmade." in pruned
    assert "Done: 1 queue deleted." in pruned
    with pytest.raises((api_exceptions.NotFound, api_exceptions.FailedPrecondition)):
        client.get_queue(name=queue_name(emu, "old"))
    assert client.get_queue(name=handmade.name).name == handmade.name
    assert client.get_queue(name=queue_name(emu, "emails")).retry_config.max_attempts == 5


def test_an_existing_queue_is_adopted_keeping_its_own_header_overrides(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    client = emu.client()
    own = tasks_v2.HttpTarget.HeaderOverride(
        header=tasks_v2.HttpTarget.Header(key="X-Team", value="billing")
    )
    client.create_queue(
        parent=f"projects/{emu.project}/locations/{emu.location}",
        queue=tasks_v2.Queue(
            name=queue_name(emu, "emails"),
            http_target=tasks_v2.HttpTarget(header_overrides=[own]),
        ),
    )
    configure({"emails": {"max_attempts": 5}})

    out = sync()

    assert "update    queue emails" in out
    assert "max_attempts: 100 -> 5" in out
    assert "X-Cloudtask-Managed header: (none) -> cloudtask_sync" in out
    queue = client.get_queue(name=queue_name(emu, "emails"))
    assert managed_headers(queue) == {"X-Team": "billing", "X-Cloudtask-Managed": "cloudtask_sync"}
    assert sync().splitlines()[-1] == "Nothing to change: 1 queue matches the settings."


def test_a_paused_queue_stays_paused(emu: Emulator, configure: Callable[..., None]) -> None:
    configure({"emails": EMAILS})
    sync()
    emu.client().pause_queue(name=queue_name(emu, "emails"))
    configure({"emails": {**EMAILS, "max_attempts": 9}})

    out = sync()

    assert "update    queue emails (paused; cloudtask_sync leaves a queue's state alone)" in out
    queue = emu.client().get_queue(name=queue_name(emu, "emails"))
    assert queue.state == tasks_v2.Queue.State.PAUSED
    assert queue.retry_config.max_attempts == 9


def test_a_recently_deleted_queue_fails_the_run_after_the_rest_is_done(
    emu: Emulator, configure: Callable[..., None]
) -> None:
    configure({"emails": EMAILS, "old": {}})
    sync()
    configure({"emails": EMAILS})
    sync("--prune")
    configure({"emails": EMAILS, "old": {}, "reports": REPORTS})

    with pytest.raises(CommandError) as raised:
        sync()

    message = str(raised.value)
    assert message.startswith("1 change failed; done: 1 queue created.\n")
    assert "create queue old: a queue named 'old' was deleted recently" in message
    assert "up to 7 days" in message
    # What could be done was done.
    assert emu.client().get_queue(name=queue_name(emu, "reports")).name.endswith("/reports")


def test_no_queues_in_the_settings(emu: Emulator, configure: Callable[..., None]) -> None:
    configure({})

    out = sync()

    assert out == (
        f"Queues in projects/{emu.project}/locations/{emu.location}:\n"
        "  (none in the settings)\n"
        "Nothing to change: 0 queues match the settings.\n"
    )


def test_a_transport_without_cloud_tasks_is_refused(settings: Any) -> None:
    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": "immediate"}

    with pytest.raises(CommandError) as raised:
        sync()

    assert str(raised.value).startswith(
        "cloudtask_sync talks to Cloud Tasks or an emulator of it, and "
        "CLOUDTASK[\"TRANSPORT\"] is 'immediate'"
    )
