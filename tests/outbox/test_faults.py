"""The transactional outbox under faults, with real parts: a process killed mid-send, Cloud Tasks
stopped or hung, two relays at once, rollbacks, sends that reached Cloud Tasks twice, retries.

Everything runs against the gRPC emulator delivering to a live server, on the test database
(SQLite files, or PostgreSQL with CLOUDTASK_TEST_DATABASE=postgres). A hang is a real socket
that never answers; the only injected faults are answers the server gives (UNAVAILABLE, a late
answer), which no real part produces on demand.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest
from django.db import transaction

from bench.delayline import DelayLine
from cloudtask import EnqueueError, TaskAlreadyExists
from cloudtask.dispatch import TaskHandle, get_dispatcher
from cloudtask.emulator import Emulator
from cloudtask.models import OutboxMessage
from cloudtask.outbox import RelayResult, message_of, relay
from cloudtask.transports import get_transport
from tests.models import Order, TaskRecord
from tests.oncommit.jobs import Deliveries, ping, read_order

from .conftest import (
    WAIT,
    BlackHole,
    Child,
    Configure,
    CreateCalls,
    Failures,
    answers_after_retry,
    create_queue,
    killed_mid_send,
    make_due,
    rows_at_each_send,
    unavailable,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def unique(prefix: str) -> str:
    """A task id no earlier test used (the emulator keeps used names for its dedup window)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def write_rows(count: int, **encode: Any) -> list[str]:
    """count committed outbox rows for ping calls, written as a deferred call writes them (and
    not sent: as if their process died at the commit). Their task ids."""
    dispatcher = get_dispatcher()
    with transaction.atomic():
        handles = [TaskHandle(ping(f"row {i}").encode(**encode)) for i in range(count)]
        for handle in handles:
            dispatcher.prepare(handle, "default")
        dispatcher.write(handles, "default")
    return [str(handle.task_id) for handle in handles]


def drain() -> RelayResult:
    """Relay until the outbox is empty (rows made due before each pass); every pass's total."""
    total = RelayResult()

    def empty() -> bool:
        nonlocal total
        make_due()
        total += relay(aliases=["default"])
        return not OutboxMessage.objects.exists()

    wait_for(empty, what="the outbox drained")
    return total


def ran_read_order() -> Counter[tuple[int, str]]:
    """(order, status it saw) of each read_order run."""
    return Counter(
        (r.payload["order"], r.payload["status"])
        for r in TaskRecord.objects.filter(label="read_order")
    )


def delivered(emulator: Emulator, task_ids: list[str]) -> Counter[str]:
    """Successful deliveries the emulator made of these task ids. (An attempt that failed, say
    on a busy SQLite database, is retried; that the task ran once is checked on its effect.)"""
    wanted = set(task_ids)
    return Counter(d.task for d in emulator.dispatches if d.task in wanted and d.status == 200)


def once(keys: list[str]) -> Counter[str]:
    return Counter(dict.fromkeys(keys, 1))


# -- 1. a process killed while its commit's sends hang -----------------------------------------


def test_a_process_killed_mid_send_loses_nothing_and_runs_each_task_once(
    emulator: Emulator,
    black_hole: BlackHole,
    child: Callable[..., Child],
    create_calls: CreateCalls,
) -> None:
    count = 20
    rows = killed_mid_send(child, black_hole, count)

    assert make_due() == count
    result = relay(aliases=["default"])

    assert (result.sent, result.failed, result.duplicates, result.skipped) == (count, 0, 0, {})
    assert not OutboxMessage.objects.exists()
    task_ids = [row.task_id for row in rows]
    assert emulator.wait_idle(timeout=WAIT)
    # Each task ran once and saw the committed data (the orders were paid after the calls).
    orders = Order.objects.values_list("pk", flat=True)
    assert ran_read_order() == Counter({(pk, "paid"): 1 for pk in orders})
    assert delivered(emulator, task_ids) == once(task_ids)
    assert create_calls.by_id == once(task_ids)


# -- 2. Cloud Tasks stopped while transactions commit, then started again ----------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cloud_tasks_down_while_50_transactions_commit(
    configure: Configure, deliveries: Deliveries
) -> None:
    # Its own emulator, on a fixed port, so it comes back where the client looks for it.
    emulator = Emulator(port=free_port(), auto_create_queues=True, log=None).start()
    create_queue(emulator)
    try:
        # The commit waits 50 ms; each send made at commit is retried for 0.2 s.
        configure(emulator.address, OUTBOX_FLUSH_TIMEOUT=0.05, ENQUEUE_RETRY_DEADLINE=0.2)
        emulator.stop()

        handles = []
        for _ in range(50):
            with transaction.atomic():
                order = Order.objects.create(status=Order.Status.NEW)
                handles.append(read_order(order.pk).delay())
                order.status = Order.Status.PAID
                order.save()

        assert {h.state for h in handles} == {"outboxed"}
        # Wait for the sends still running after their commits to give up (closing the pool
        # waits for them). A send the busy pool had not started within the bound was never
        # tried and left to the relay: its row has no attempt yet.
        get_dispatcher().close()
        rows = list(OutboxMessage.objects.all())
        assert len(rows) == 50
        tried = [row for row in rows if row.attempts]
        assert tried, "no send was tried at commit"
        assert {row.attempts for row in tried} == {1}
        assert all("did not create task" in row.last_error for row in tried)

        emulator.start()
        result = drain()

        assert (result.sent, result.duplicates) == (50, 0)
        assert emulator.wait_idle(timeout=WAIT)
        orders = Order.objects.values_list("pk", flat=True)
        assert ran_read_order() == Counter({(pk, "paid"): 1 for pk in orders})
        task_ids = [str(h.task_id) for h in handles]
        assert delivered(emulator, task_ids) == once(task_ids)
    finally:
        emulator.stop()


# -- 3. Cloud Tasks hung: the commit returns at the bound --------------------------------------


def test_a_hung_cloud_tasks_holds_no_commit_and_the_relay_sends_later(
    configure: Configure,
    black_hole: BlackHole,
    running_emulator: Emulator,
    deliveries: Deliveries,
    create_calls: CreateCalls,
) -> None:
    configure(black_hole.address, OUTBOX_FLUSH_TIMEOUT=0.2)
    with transaction.atomic():
        handles = [ping(f"hung {i}").delay() for i in range(5)]

    # The commit returned with the sends still hanging: every call is in the outbox.
    assert [(h.state, h.error) for h in handles] == [("outboxed", None)] * 5
    task_ids = [str(h.task_id) for h in handles]
    assert sorted(OutboxMessage.objects.values_list("task_id", flat=True)) == sorted(task_ids)
    black_hole.wait_accepted()

    # Cloud Tasks answers again. The new setting closes the hung channel, which ends the sends
    # in flight: each settles (failed; its row stays) before the relay runs.
    configure(running_emulator.address)
    wait_for(
        lambda: OutboxMessage.objects.filter(attempts=1).count() == 5,
        what="the hung sends settled",
    )
    assert all(isinstance(h.error, EnqueueError) for h in handles)

    make_due()
    result = relay(aliases=["default"])

    assert (result.sent, result.failed, result.duplicates) == (5, 0, 0)
    assert not OutboxMessage.objects.exists()
    deliveries.wait("ping", 5)
    assert running_emulator.wait_idle(timeout=WAIT)
    assert Counter(d["label"] for d in deliveries.of("ping")) == once(
        [f"hung {i}" for i in range(5)]
    )
    assert create_calls.by_id == once(task_ids)


# -- 4. two relays draining the same rows at once ----------------------------------------------


def test_two_relays_at_once_send_each_row_once(
    emulator: Emulator,
    configure: Configure,
    child: Callable[..., Child],
    create_calls: CreateCalls,
    deliveries: Deliveries,
) -> None:
    count = 1000
    # Deliveries here only count runs: without execution records (tested on their own), each
    # of the thousand costs the live server no database write.
    configure(emulator.address, RECORDS=False)
    task_ids = write_rows(count)
    make_due()

    # Two processes, as two servers (or a server and `--drain`) would run them, each relaying
    # passes of 100 rows until one finds nothing due: they claim from the same rows throughout.
    relays = [child("relay", limit=100) for _ in range(2)]
    for process in relays:
        assert process.readline() == "ready"
    for process in relays:
        process.send("go")
    results = [json.loads(process.readline(timeout=60)) for process in relays]

    assert sum(r["sent"] for r in results) == count, results
    assert sum(r["failed"] + r["duplicates"] for r in results) == 0, results
    assert not OutboxMessage.objects.exists()
    # Each row was sent once (claimed by one relay), so Cloud Tasks saw each id once.
    assert create_calls.by_id == once(task_ids)
    # A thousand deliveries to one live server (a few seconds; much longer on a busy machine).
    deliveries.wait("ping", count, timeout=120)
    assert emulator.wait_idle(timeout=WAIT)
    assert delivered(emulator, task_ids) == once(task_ids)
    assert Counter(d["label"] for d in deliveries.of("ping")) == once(
        [f"row {i}" for i in range(count)]
    )


# -- 5. rollbacks leave no row -----------------------------------------------------------------


def test_a_rolled_back_transaction_leaves_no_row(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        handle = ping("rolled back").delay()
        # Rows are written just before the commit, with the transaction's other calls.
        assert not OutboxMessage.objects.exists()
        raise Rollback

    assert handle.state == "dropped"
    assert not OutboxMessage.objects.exists()
    assert emulator.wait_idle(timeout=WAIT)
    assert create_calls.total == 0
    assert deliveries.of("ping") == []


def test_a_rolled_back_savepoint_leaves_no_row_in_a_committed_transaction(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    seen = rows_at_each_send(create_calls, 1)
    with transaction.atomic():
        kept = ping("kept").delay()
        with suppress(Rollback), transaction.atomic():
            dropped = ping("dropped").delay()
            raise Rollback
        assert not OutboxMessage.objects.exists()

    # At the commit only the surviving call was written: Cloud Tasks, asked for it, found its
    # row committed, and no other.
    assert seen == [{"default": {kept.task_id}}]
    assert (kept.state, dropped.state) == ("sent", "dropped")
    assert not OutboxMessage.objects.exists()
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["kept"]
    assert create_calls.by_id == once([str(kept.task_id)])


# -- 6. exactly once: a row Cloud Tasks already has --------------------------------------------


def test_a_row_sent_before_a_crash_is_not_sent_twice(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    (task_id,) = write_rows(1)
    # Cloud Tasks accepted the row's message, and the process died before deleting the row.
    get_transport().enqueue(message_of(OutboxMessage.objects.get()))

    make_due()
    result = relay(aliases=["default"])

    # ALREADY_EXISTS for the row's own generated id: it was sent; the row goes.
    assert (result.sent, result.failed, result.duplicates) == (1, 0, 0)
    assert not OutboxMessage.objects.exists()
    assert create_calls.by_id == Counter({task_id: 2})
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert delivered(emulator, [task_id]) == once([task_id])
    assert [d["label"] for d in deliveries.of("ping")] == ["row 0"]


def test_a_named_id_another_call_took_is_deleted_and_reported_by_the_relay(
    emulator: Emulator,
    create_calls: CreateCalls,
    deliveries: Deliveries,
    failures: Failures,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = unique("order-7-shipped")
    other = ping("the other call").delay(task_id=task_id)
    assert other.state == "sent"
    write_rows(1, task_id=task_id)  # ours, with the same caller-chosen id, left to the relay

    make_due()
    with caplog.at_level(logging.ERROR, logger="cloudtask"):
        result = relay(aliases=["default"])

    # ALREADY_EXISTS cannot tell "we sent it before" from "another call took the id": the row
    # is deleted and the call reported, as a named duplicate always is.
    assert (result.sent, result.failed, result.duplicates) == (0, 0, 1)
    assert not OutboxMessage.objects.exists()
    (failure,) = failures.wait(1)
    assert isinstance(failure["exception"], TaskAlreadyExists)
    assert failure["message"].task_id == task_id
    assert any(
        r.levelno == logging.ERROR and "already taken" in r.getMessage()
        for r in caplog.records
        if r.name == "cloudtask.outbox"
    )
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["the other call"]
    assert create_calls.by_id == Counter({task_id: 2})


def test_a_named_id_another_call_took_is_deleted_and_reported_at_commit(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries, failures: Failures
) -> None:
    task_id = unique("order-8-shipped")
    ping("the other call").delay(task_id=task_id)

    with transaction.atomic():
        ours = ping("ours").delay(task_id=task_id)

    assert ours.state == "failed" and isinstance(ours.error, TaskAlreadyExists)
    assert not OutboxMessage.objects.exists()
    (failure,) = failures.wait(1)
    assert isinstance(failure["exception"], TaskAlreadyExists)
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["the other call"]


# -- 7. enqueue retries ------------------------------------------------------------------------


def test_a_call_with_a_task_id_is_retried_after_unavailable(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    task_id = unique("retried")
    create_calls.inject(unavailable)
    handle = ping("named").delay(task_id=task_id)

    assert handle.state == "sent" and handle.task_id == task_id
    assert create_calls.by_id == Counter({task_id: 2})
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert delivered(emulator, [task_id]) == once([task_id])


def test_an_outboxed_call_is_retried_after_unavailable_within_the_commit(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    create_calls.inject(unavailable)
    with transaction.atomic():
        handle = ping("on commit").delay()

    # Its generated id makes the retry safe: sent at commit, the row gone.
    assert handle.state == "sent"
    assert not OutboxMessage.objects.exists()
    assert create_calls.by_id == Counter({str(handle.task_id): 2})
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)


def test_a_call_without_a_task_id_is_not_retried(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    create_calls.inject(unavailable)
    # Sent now (no transaction), with no id: a retry could create the task twice.
    with pytest.raises(EnqueueError, match="unavailable"):
        ping("unnamed").delay()

    assert create_calls.by_id == Counter({"": 1})
    assert emulator.wait_idle(timeout=WAIT)
    assert deliveries.of("ping") == []


def test_already_exists_after_a_timed_out_attempt_counts_as_created(
    emulator: Emulator,
    configure: Configure,
    create_calls: CreateCalls,
    deliveries: Deliveries,
) -> None:
    # The first attempt creates the task, but its answer comes only after the client's
    # deadline (CLIENT_TIMEOUT) passed and it retried: the retry hears ALREADY_EXISTS.
    configure(emulator.address, CLIENT_TIMEOUT=0.5)
    task_id = unique("answer-lost")
    create_calls.inject(answers_after_retry(create_calls))
    handle = ping("answer lost").delay(task_id=task_id)

    assert handle.state == "sent"
    assert str(handle.resource_name).endswith(f"/tasks/{task_id}")
    assert create_calls.by_id == Counter({task_id: 2})
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert delivered(emulator, [task_id]) == once([task_id])


# -- a relay in another process sends a row whose commit-time send is still in flight ----------


@pytest.mark.parametrize("named", [False, True], ids=["generated id", "named"])
def test_a_late_send_after_another_relay_sent_the_row_reports_nothing(
    named: bool,
    emulator: Emulator,
    configure: Configure,
    child: Callable[..., Child],
    create_calls: CreateCalls,
    deliveries: Deliveries,
    failures: Failures,
) -> None:
    """The commit's send is held on the line; `--drain` in another process sends the row; then
    the held send ends: ALREADY_EXISTS (named) or an error (generated id, its channel closed)."""
    task_id = unique("in-flight") if named else None
    with DelayLine(emulator.address, 0, held=True) as line:
        configure(line.address, OUTBOX_FLUSH_TIMEOUT=0.2, CLIENT_TIMEOUT=30.0)
        with transaction.atomic():
            handle = ping("in flight").delay(task_id=task_id)
        assert handle.state == "outboxed"

        make_due()
        drain = child("relay", limit=100, cloudtask={"EMULATOR_HOST": emulator.address})
        assert drain.readline() == "ready"
        drain.send("go")
        assert json.loads(drain.readline())["sent"] == 1
        assert not OutboxMessage.objects.exists()

        if named:
            line.release()  # the held CreateTask reaches Cloud Tasks: ALREADY_EXISTS
            create_calls.wait(str(handle.task_id), 2)
        else:
            configure(emulator.address)  # closes the held channel: the send fails
        wait_for(lambda: handle.error is not None, what="the held send ended")
        # Closing the pool waits for the late send's settling (its callback) to finish.
        get_dispatcher().close()

    # The task was created once and ran once: by this very call, through the relay.
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["in flight"]
    assert not OutboxMessage.objects.exists()
    # The late result finds the row gone (the relay sent it): nothing is reported as failed.
    assert not failures.calls
