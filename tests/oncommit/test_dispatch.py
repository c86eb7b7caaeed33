"""@on_commit_task and delay_on_commit(): sent after the outermost commit, never before."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest
from django.db import connections, transaction

from cloudtask import InvalidTaskCall, TaskAlreadyExists, signals
from tests.models import Order

from .conftest import records
from .jobs import ping, ping_other, plain_ping, read_order

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def test_outside_a_transaction_it_is_sent_at_once(emulator: Any, deliveries: Any) -> None:
    handle = ping("now").delay()

    assert handle.state == "sent"
    assert handle.name is not None and handle.name.startswith(f"projects/{emulator.project}/")
    assert deliveries.wait("ping")[0]["label"] == "now"


def test_inside_atomic_it_is_sent_once_after_the_commit(emulator: Any, deliveries: Any) -> None:
    with transaction.atomic():
        handle = ping("committed").delay()
        assert (handle.state, handle.name) == ("pending", None)
        assert emulator.wait_idle()
        assert deliveries.of("ping") == []

    # The commit returned after the task was sent: nothing to wait for.
    assert handle.state == "sent"
    assert handle.name is not None
    (delivered,) = deliveries.wait("ping")
    assert delivered["label"] == "committed"
    assert delivered["task_name"] == handle.id
    assert emulator.wait_idle()
    assert len(deliveries.of("ping")) == 1


def test_the_task_sees_the_committed_row(emulator: Any) -> None:
    with transaction.atomic():
        order = Order.objects.create(status=Order.Status.PAID)
        read_order(order.pk).delay()

    assert emulator.wait_idle()
    assert records("read_order") == [{"order": order.pk, "status": "paid"}]


def test_a_rolled_back_transaction_sends_nothing(emulator: Any, deliveries: Any) -> None:
    with pytest.raises(Boom), transaction.atomic():
        handle = ping("rolled back").delay()
        raise Boom

    # The handle ends: wait() returns at once instead of hanging.
    assert handle.state == "dropped"
    assert handle.wait() is True
    assert emulator.wait_idle()
    assert deliveries.of("ping") == []


def test_a_rolled_back_savepoint_sends_nothing_of_its_own(emulator: Any, deliveries: Any) -> None:
    with transaction.atomic():
        ping("outer").delay()
        try:
            with transaction.atomic():
                ping("middle").delay()
                with transaction.atomic():
                    ping("inner, released into middle").delay()
                raise Boom
        except Boom:
            pass
        with transaction.atomic():
            ping("sibling savepoint, released").delay()
        try:
            with transaction.atomic():
                ping("second rolled-back savepoint").delay()
                raise Boom
        except Boom:
            pass

    assert emulator.wait_idle()
    labels = sorted(d["label"] for d in deliveries.of("ping"))
    assert labels == ["outer", "sibling savepoint, released"]


def test_only_the_dropped_savepoint_is_lost_when_it_held_the_first_call(
    emulator: Any, deliveries: Any
) -> None:
    # The batch must not depend on its first callable surviving.
    with transaction.atomic():
        try:
            with transaction.atomic():
                ping("first, rolled back").delay()
                raise Boom
        except Boom:
            pass
        ping("second").delay()

    assert [d["label"] for d in deliveries.wait("ping")] == ["second"]
    assert emulator.wait_idle()
    assert len(deliveries.of("ping")) == 1


def test_delay_on_commit_works_for_a_plain_task(emulator: Any, deliveries: Any) -> None:
    with transaction.atomic():
        handle = plain_ping("deferred").delay_on_commit()
        immediate = plain_ping("immediate").delay()
        assert (handle.state, immediate.state) == ("pending", "sent")

    assert handle.state == "sent"
    assert emulator.wait_idle()
    assert sorted(d["label"] for d in deliveries.of("plain_ping")) == ["deferred", "immediate"]


def test_push_and_schedule_are_deferred_too(emulator: Any, deliveries: Any) -> None:
    with transaction.atomic():
        pushed = ping("pushed").push()
        scheduled = ping("scheduled").schedule(countdown=0)
        assert (pushed.state, scheduled.state) == ("pending", "pending")

    assert (pushed.state, scheduled.state) == ("sent", "sent")
    assert emulator.wait_idle()
    assert sorted(d["label"] for d in deliveries.of("ping")) == ["pushed", "scheduled"]


def test_arguments_are_encoded_at_the_call(emulator: Any, deliveries: Any) -> None:
    payload = {"items": [1, 2]}
    with transaction.atomic():
        ping("snapshot", payload).delay()
        payload["items"].append(3)

    assert deliveries.wait("ping")[0]["payload"] == {"items": [1, 2]}


def test_an_argument_that_will_not_serialize_fails_at_the_call(emulator: Any) -> None:
    with transaction.atomic():
        with pytest.raises(InvalidTaskCall, match="payload"):
            ping("bad", object()).delay()
        assert connections["default"].run_on_commit == []


def test_many_calls_go_out_concurrently_and_the_commit_waits_for_them(
    emulator: Any, deliveries: Any
) -> None:
    threads: set[str] = set()
    lock = threading.Lock()

    def seen(**kwargs: Any) -> None:
        with lock:
            threads.add(threading.current_thread().name)

    signals.task_enqueued.connect(seen)
    try:
        with transaction.atomic():
            handles = [ping(f"n{i}").delay() for i in range(40)]
    finally:
        signals.task_enqueued.disconnect(seen)

    assert {h.state for h in handles} == {"sent"}
    assert len({h.name for h in handles}) == 40
    assert len(threads) > 1
    assert all(name.startswith("cloudtask-on-commit") for name in threads)
    assert len(deliveries.wait("ping", 40)) == 40


def test_a_failed_send_is_logged_signalled_and_stops_nothing(
    emulator: Any, deliveries: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: the emulator refuses a task name that already exists.
    name = f"dup-{uuid.uuid4().hex}"
    failures: list[dict[str, Any]] = []

    def failed(sender: Any, **kwargs: Any) -> None:
        failures.append({"sender": sender, **kwargs})

    after: list[str] = []
    signals.task_enqueue_failed.connect(failed)
    try:
        with caplog.at_level(logging.ERROR, logger="cloudtask"), transaction.atomic():
            first = ping("first").delay(name=name)
            second = ping("second", {"why": "duplicate"}).delay(name=name)
            other = ping("other").delay()
            transaction.on_commit(lambda: after.append("ran"))
    finally:
        signals.task_enqueue_failed.disconnect(failed)

    assert after == ["ran"]
    assert other.state == "sent"
    states = sorted([first.state, second.state])
    assert states == ["failed", "sent"]
    loser = first if first.state == "failed" else second
    assert isinstance(loser.error, TaskAlreadyExists)
    (failure,) = failures
    assert failure["sender"] is ping
    assert failure["call"] is loser.call
    assert failure["message"] is loser.message
    assert failure["exception"] is loser.error
    (log,) = [r for r in caplog.records if r.name == "cloudtask.dispatch"]
    assert "tests.oncommit.jobs.ping" in log.getMessage()
    assert repr(loser.call.args) in log.getMessage()
    assert emulator.wait_idle()
    assert len(deliveries.of("ping")) == 2


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_using_waits_for_that_databases_transaction(emulator: Any, deliveries: Any) -> None:
    with transaction.atomic(using="other"):
        on_other = ping_other("task using=other").delay()
        explicit = ping("delay_on_commit(using=other)").delay_on_commit(using="other")
        with transaction.atomic():
            # A transaction on default does not hold calls bound to other.
            assert (on_other.state, explicit.state) == ("pending", "pending")
        assert (on_other.state, explicit.state) == ("pending", "pending")

    assert (on_other.state, explicit.state) == ("sent", "sent")

    with transaction.atomic():
        # No transaction is open on other: sent at once.
        assert ping_other("no transaction on other").delay().state == "sent"

    assert emulator.wait_idle()
    assert len(deliveries.of("ping_other")) == 2
    assert len(deliveries.of("ping")) == 1


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_rollback_on_other_drops_its_calls(emulator: Any, deliveries: Any) -> None:
    with pytest.raises(Boom), transaction.atomic(using="other"):
        handle = ping_other("dropped").delay()
        raise Boom

    assert handle.state == "dropped"
    assert emulator.wait_idle()
    assert deliveries.of("ping_other") == []
