"""When outbox rows are written: all together, inside the transaction, just before its commit.

A call deferred in a transaction writes nothing at its line; the transaction's surviving calls
are written in one go right before the COMMIT (cloudtask.dispatch's _CommitHook), so they are
durable with the data, and committed before any of them is sent. Real parts throughout: the
gRPC emulator delivering to a live server, the test database (SQLite files, or PostgreSQL with
CLOUDTASK_TEST_DATABASE=postgres); the rows at the moment of each send are read by another
connection, from the emulator's thread, while the committing thread waits on the send.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from cloudtask.dispatch import TaskHandle, get_dispatcher
from cloudtask.emulator import Emulator
from cloudtask.models import OutboxMessage
from cloudtask.outbox import WRITE_BATCH, WRITE_BYTES, message_of, relay
from tests.models import Order
from tests.oncommit.jobs import Deliveries, ping, ping_other, read_order

from .conftest import WAIT, Configure, CreateCalls, make_due, rows_at_each_send

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


@pytest.fixture(autouse=True)
def patient_commit(emulator: Emulator, configure: Configure) -> None:
    """The commit waits for its sends as long as any wait here (not the default 1 s): these
    tests check what each send found, and a busy machine must not turn a send "outboxed"."""
    configure(emulator.address, OUTBOX_FLUSH_TIMEOUT=WAIT)


def committed_task_ids() -> set[str]:
    """The task ids of the outbox rows another connection sees: what is committed."""
    seen: set[str] = set()

    def read() -> None:
        try:
            seen.update(OutboxMessage.objects.values_list("task_id", flat=True))
        finally:
            connections.close_all()  # this thread's own connection

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(WAIT)
    assert not reader.is_alive()
    return seen


def unique(prefix: str) -> str:
    """A task id no earlier test used (the emulator keeps used names for its dedup window)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_rows_are_written_at_the_commit_and_committed_before_the_send(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    seen = rows_at_each_send(create_calls, 3)
    with transaction.atomic():
        handles = [ping(f"call {i}").delay() for i in range(3)]
        # Nothing at the calls' lines: not even this connection sees a row yet.
        assert not OutboxMessage.objects.exists()

    task_ids = {h.task_id for h in handles}
    # Every send found all three rows committed (another connection saw them).
    assert seen == [{"default": task_ids}] * 3
    assert [h.state for h in handles] == ["sent"] * 3
    # Sent, then deleted.
    assert not OutboxMessage.objects.exists()
    deliveries.wait("ping", 3)
    assert emulator.wait_idle(timeout=WAIT)


def test_a_row_holds_the_message_exactly_as_it_was_encoded(
    emulator: Emulator, black_hole: Any, configure: Configure
) -> None:
    # Cloud Tasks hung, and the commit waits 0.2 s: the rows stay, to be read back.
    configure(black_hole.address, OUTBOX_FLUSH_TIMEOUT=0.2)
    when = timezone.now() + timedelta(hours=1)
    named = unique("written-at-commit")
    with transaction.atomic():
        handles = [
            ping("plain").delay(),
            ping("épreuve ✓", {"nested": [1, 2.5, None]}).schedule(when, task_id=named),
            # Written by hand, with what no task here sets: a deadline, an OIDC audience.
            TaskHandle(
                replace(
                    ping("deadline").encode(),
                    dispatch_deadline=timedelta(seconds=90, microseconds=250),
                    oidc_audience="https://audience.example/",
                )
            ),
        ]
        get_dispatcher().prepare(handles[2], "default")
        get_dispatcher().write(handles[2:], "default")

    rows = {row.task_id: row for row in OutboxMessage.objects.all()}
    assert set(rows) == {h.task_id for h in handles}
    for handle in handles:
        row = rows[str(handle.task_id)]
        # Bytes, JSON headers, an aware schedule time, a duration, OIDC: as the ORM reads them.
        assert message_of(row) == handle.message
        assert row.named == (handle.task_id == named)
        assert (row.attempts, row.last_error, row.lease_owner, row.lease_until) == (0, "", "", None)
        assert row.next_attempt_at > row.created_at
    # Let the hung sends end: the new setting closes the hung channel.
    configure(emulator.address)
    get_dispatcher().close()


def test_a_failing_row_write_fails_the_commit_and_sends_nothing(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    with pytest.raises(DatabaseError), transaction.atomic():
        order = Order.objects.create(status=Order.Status.PAID)
        handle = read_order(order.pk).delay()
        # The outbox table goes inside the transaction (DDL is transactional on both
        # databases): the write before the commit fails as it would on a missing table.
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {table}")

    # The user's transaction raised and was rolled back as a whole: no order, no call.
    assert handle.state == "dropped"
    assert not Order.objects.exists()
    assert not OutboxMessage.objects.exists()  # the table is back, empty
    assert emulator.wait_idle(timeout=WAIT)
    assert create_calls.total == 0

    # The connection is fine for the next transaction.
    with transaction.atomic():
        again = ping("after the failure").delay()
    assert again.state == "sent"
    assert [d["label"] for d in deliveries.wait("ping", 1)] == ["after the failure"]
    assert emulator.wait_idle(timeout=WAIT)


def test_a_rolled_back_transaction_leaves_nothing_for_the_next_commit(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        dropped = [ping(f"dropped {i}").delay() for i in range(3)]
        raise Rollback

    # The next commit on this connection, with no call of its own, writes nothing...
    with transaction.atomic():
        Order.objects.create(status=Order.Status.NEW)
    assert not OutboxMessage.objects.exists()
    # ...and one with a call writes that call only.
    seen = rows_at_each_send(create_calls, 1)
    with transaction.atomic():
        kept = ping("kept").delay()

    assert seen == [{"default": {kept.task_id}}]
    assert [h.state for h in dropped] == ["dropped"] * 3
    assert kept.state == "sent"
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["kept"]
    assert create_calls.by_id == {str(kept.task_id): 1}


def test_a_savepoint_rolled_back_after_a_nested_one_released_leaves_only_the_outer_calls(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    seen = rows_at_each_send(create_calls, 2)
    with transaction.atomic():
        first = ping("first").delay()
        with suppress(Rollback), transaction.atomic():
            inner = ping("inner").delay()
            with transaction.atomic():
                released = ping("released").delay()
            raise Rollback
        last = ping("last").delay()

    assert seen == [{"default": {first.task_id, last.task_id}}] * 2
    assert [h.state for h in (first, inner, released, last)] == [
        "sent",
        "dropped",
        "dropped",
        "sent",
    ]
    deliveries.wait("ping", 2)
    assert emulator.wait_idle(timeout=WAIT)
    assert sorted(d["label"] for d in deliveries.of("ping")) == ["first", "last"]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_each_database_writes_its_calls_at_its_own_commit(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    seen = rows_at_each_send(create_calls, 2, aliases=("default", "other"))
    with transaction.atomic():
        on_default = ping("default").delay()
        with transaction.atomic(using="other"):
            on_other = ping_other("other").delay()
        # other's transaction committed, wrote its row, and sent its call...
        assert on_other.state == "sent"
        # (Its delivery writes an execution record on "default": let it end first, or on SQLite
        # the read below would hold a shared lock that the delivery's write and this
        # transaction's commit would deadlock on, one of them failing "database is locked".)
        deliveries.wait("ping_other", 1)
        assert emulator.wait_idle(timeout=WAIT)
        # ...while default's call is still unwritten in its open transaction.
        assert (on_default.state, OutboxMessage.objects.using("default").exists()) == (
            "pending",
            False,
        )

    assert seen == [
        {"default": set(), "other": {on_other.task_id}},
        {"default": {on_default.task_id}, "other": set()},
    ]
    assert on_default.state == "sent"
    assert not OutboxMessage.objects.using("default").exists()
    assert not OutboxMessage.objects.using("other").exists()
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)


def test_a_manual_transaction_cannot_defer_and_leaves_nothing_to_write(
    emulator: Emulator, create_calls: CreateCalls
) -> None:
    transaction.set_autocommit(False)
    try:
        # Django's on_commit() refuses manual transactions, as it always did.
        with pytest.raises(transaction.TransactionManagementError):
            ping("manual").delay()
        Order.objects.create(status=Order.Status.NEW)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)

    assert Order.objects.count() == 1
    assert not OutboxMessage.objects.exists()
    assert emulator.wait_idle(timeout=WAIT)
    assert create_calls.total == 0
    # The connection's commit hook, installed by the refused call or not, writes nothing later.
    with transaction.atomic():
        Order.objects.create(status=Order.Status.NEW)
    assert not OutboxMessage.objects.exists()


def test_each_handle_knows_its_own_row_across_statements() -> None:
    # More rows than one statement writes (WRITE_BATCH on PostgreSQL, fewer on SQLite): the
    # ids come back in the order of the rows, statement after statement.
    count = WRITE_BATCH + 234
    handles = [TaskHandle(ping(f"row {i}").encode()) for i in range(count)]
    dispatcher = get_dispatcher()
    with transaction.atomic():
        for handle in handles:
            assert dispatcher.prepare(handle, "default")
        dispatcher.write(handles, "default")

    rows = dict(OutboxMessage.objects.values_list("pk", "task_id"))
    assert len(rows) == count
    assert [rows[h.outbox.pk] for h in handles] == [h.task_id for h in handles]
    assert len({h.task_id for h in handles}) == count


def test_a_manual_transaction_writes_the_calls_of_each_commit_at_that_commit(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    # Autocommit off: Django keeps the on-commit callables through every commit until
    # set_autocommit(True) runs them, so the second block's calls join the first one's batch.
    seen = rows_at_each_send(create_calls, 2)
    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            first = ping("first").delay()
        assert committed_task_ids() == set()
        transaction.commit()
        after_first = committed_task_ids()
        with transaction.atomic():
            second = ping("second").delay()
            with suppress(Rollback), transaction.atomic():
                rolled_back = ping("rolled back").delay()
                raise Rollback
        transaction.commit()
        after_second = committed_task_ids()
        assert (first.state, second.state) == ("pending", "pending")
        transaction.commit()  # a commit with no new call writes nothing
        assert committed_task_ids() == after_second
    finally:
        transaction.set_autocommit(True)

    # Each call's row was written, and committed, at its own commit.
    assert after_first == {first.task_id}
    assert after_second == {first.task_id, second.task_id}
    assert seen == [{"default": {first.task_id, second.task_id}}] * 2
    assert [h.state for h in (first, second, rolled_back)] == ["sent", "sent", "dropped"]
    assert not OutboxMessage.objects.exists()
    deliveries.wait("ping", 2)
    assert emulator.wait_idle(timeout=WAIT)
    assert sorted(d["label"] for d in deliveries.of("ping")) == ["first", "second"]


def test_a_manual_transaction_rolled_back_after_a_commit_leaves_that_commits_calls_outboxed(
    emulator: Emulator, create_calls: CreateCalls, deliveries: Deliveries
) -> None:
    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            committed = ping("committed").delay()
        transaction.commit()
        with transaction.atomic():
            rolled_back = ping("rolled back").delay()
        # The rollback drops every callable Django kept, the committed call's too, so this
        # process sends neither; the committed call's row stays, for the relay.
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)

    assert (committed.state, rolled_back.state) == ("outboxed", "dropped")
    assert committed.wait(timeout=0)
    assert committed_task_ids() == {committed.task_id}
    assert create_calls.total == 0

    make_due()
    assert (relay(aliases=["default"]).sent, committed_task_ids()) == (1, set())
    deliveries.wait("ping", 1)
    assert emulator.wait_idle(timeout=WAIT)
    assert [d["label"] for d in deliveries.of("ping")] == ["committed"]
    assert create_calls.by_id == {str(committed.task_id): 1}


def _blob_sizes(params: Any) -> Iterator[int]:
    """The sizes of the binary values among a statement's parameters (arrays included)."""
    if isinstance(params, list | tuple):
        for param in params:
            yield from _blob_sizes(param)
    elif isinstance(params, bytes | memoryview):
        yield len(params)
    elif isinstance(getattr(params, "obj", None), bytes | memoryview):  # psycopg's Binary
        yield len(params.obj)


def test_a_transaction_of_large_bodies_is_written_in_statements_of_bounded_size() -> None:
    # 40 bodies of 900 kB, more than twice WRITE_BYTES: written in several statements, none
    # holding more than WRITE_BYTES of bodies (on PostgreSQL the whole bytea array travels
    # hex-encoded in one message, which may not exceed 1 GB).
    size = 900_000
    count = 40
    assert count * size > 2 * WRITE_BYTES
    template = ping("large").encode()
    handles = [TaskHandle(replace(template, body=bytes([i]) * size)) for i in range(count)]
    dispatcher = get_dispatcher()
    statements: list[int] = []

    def measure(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("INSERT INTO") and OutboxMessage._meta.db_table in sql:
            statements.append(sum(_blob_sizes(params)))
        return execute(sql, params, many, context)

    with transaction.atomic(), connection.execute_wrapper(measure):
        for handle in handles:
            assert dispatcher.prepare(handle, "default")
        dispatcher.write(handles, "default")

    assert sum(statements) == count * size
    assert len(statements) >= 3
    assert max(statements) <= WRITE_BYTES
    bodies = {pk: bytes(body) for pk, body in OutboxMessage.objects.values_list("pk", "body")}
    assert len(bodies) == count
    assert [bodies[h.outbox.pk] for h in handles] == [h.message.body for h in handles]


def test_calls_reusing_one_task_id_each_get_their_own_row() -> None:
    # Ids are paired with calls by task id (the order of RETURNING rows is not promised); a
    # caller-chosen id used twice pairs in the order of the calls.
    named = unique("twice")
    handles = [
        TaskHandle(ping("generated 1").encode()),
        TaskHandle(replace(ping("named 1").encode(), task_id=named)),
        TaskHandle(ping("generated 2").encode()),
        TaskHandle(replace(ping("named 2").encode(), task_id=named)),
    ]
    dispatcher = get_dispatcher()
    with transaction.atomic():
        for handle in handles:
            assert dispatcher.prepare(handle, "default")
        dispatcher.write(handles, "default")

    rows = {row.pk: row for row in OutboxMessage.objects.all()}
    assert len(rows) == 4
    assert [message_of(rows[h.outbox.pk]) for h in handles] == [h.message for h in handles]
    assert [rows[h.outbox.pk].named for h in handles] == [False, True, False, True]
