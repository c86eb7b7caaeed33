"""The claim and its settlement as prebuilt SQL (cloudtask.records on PostgreSQL and SQLite):
what they write reads back through the ORM exactly as the ORM's own writes do; on PostgreSQL
they commit asynchronously only as transactions of their own, and never with
CLOUDTASK["RECORDS_SYNCHRONOUS_COMMIT"] = True.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext, override_settings

from cloudtask import records
from cloudtask.conf import build_settings
from cloudtask.exceptions import ConfigurationError
from cloudtask.models import TaskExecution

from .conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)

#: Asynchronous commit is PostgreSQL's: elsewhere no write may carry it. (Not a skip: each test
#: below asserts what holds on the database the suite runs on.)
POSTGRESQL = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

LEASE = timedelta(minutes=7)
#: Not UTC, with microseconds: the fields must convert it as the ORM does (SQLite keeps naive UTC).
ZURICH = timezone(timedelta(hours=2))
NOW = datetime(2026, 11, 28, 14, 5, 6, 123456, tzinfo=ZURICH)
ETA = datetime(2026, 11, 28, 12, 0, 0, 654321, tzinfo=UTC)
#: A return value with what JSON encoders differ on: non-ASCII, nesting, floats, null, quotes.
VALUE = {"naïve": ["ü", 1.5, None, {"deep": [True, "a'b\"c"]}], "n": 2**40}


def orm_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make records take the ORM path, as on a vendor it has no prebuilt SQL for."""
    monkeypatch.setattr(records, "_prebuilt", lambda connection: False)


def write(task_id: str, *, fail: bool) -> list[str]:
    """A first delivery's claim and settlement; the SQL they sent."""
    with CaptureQueriesContext(connection) as captured:
        held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, eta=ETA, now=NOW)
        assert held.run and held.attempts == 1
        if fail:
            error = ValueError("card declined: ü")
            records.finish(held, "failed", duration=0.25, error=error, now=NOW + LEASE / 7)
        else:
            records.finish(held, "succeeded", duration=0.25, value=VALUE, now=NOW + LEASE / 7)
    return [q["sql"] for q in captured.captured_queries]


def fields(task_id: str) -> dict[str, Any]:
    row = TaskExecution.objects.get(task_id=task_id)
    found = model_to_dict(row)
    found.pop("id")
    found.pop("task_id")
    return found


@pytest.mark.parametrize("fail", [False, True], ids=["succeeded", "failed"])
def test_a_prebuilt_record_reads_back_as_the_orms(
    monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    fast, slow = unique("prebuilt"), unique("orm")
    sqls = write(fast, fail=fail)
    # The prebuilt statements ran (the ORM's INSERT has no ON CONFLICT), two of them.
    assert len(sqls) == 2
    assert "ON CONFLICT" in sqls[0] and sqls[1].startswith("UPDATE")
    with monkeypatch.context() as patch:
        orm_only(patch)
        assert "ON CONFLICT" not in write(slow, fail=fail)[0]
    prebuilt, orm = fields(fast), fields(slow)
    # Traceback text names no task id; the error's time is the same for both.
    assert prebuilt == orm
    assert prebuilt["first_started_at"] == prebuilt["last_started_at"] == NOW
    assert prebuilt["lease_until"] is None and prebuilt["eta"] == ETA
    assert prebuilt["finished_at"] == NOW + LEASE / 7
    assert prebuilt["status"] == ("failed" if fail else "succeeded")
    if fail:
        assert prebuilt["errors"][0]["message"] == "card declined: ü"
        assert prebuilt["return_value"] is None
    else:
        assert prebuilt["return_value"] == VALUE and prebuilt["errors"] == []


def test_a_none_return_value_is_sql_null_as_through_the_orm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The settling UPDATE writes a None as NULL in its SQL: what the ORM's update() stores for
    # None in a JSONField (SQL NULL, not JSON null), which a filter on isnull tells apart.
    fast, slow = unique("prebuilt-none"), unique("orm-none")
    for task_id in (fast, slow):
        with monkeypatch.context() as patch:
            if task_id == slow:
                orm_only(patch)
            held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
            records.finish(held, "succeeded", duration=0.25, value=None, now=NOW)
    nulls = TaskExecution.objects.filter(task_id__in=[fast, slow], return_value__isnull=True)
    assert sorted(nulls.values_list("task_id", flat=True)) == sorted([fast, slow])
    assert fields(fast) == fields(slow)


def test_the_claim_reads_back_while_running() -> None:
    task_id = unique("prebuilt-running")
    records.claim(task_id, "shop.tasks.charge", "", LEASE, now=NOW)
    row = TaskExecution.objects.get(task_id=task_id)
    assert (row.status, row.attempts, row.queue, row.eta) == ("running", 1, "", None)
    assert row.lease_until == NOW + LEASE
    assert (row.finished_at, row.duration, row.return_value) == (None, None, None)
    assert (row.return_repr, row.error_type, row.traceback, row.errors) == ("", "", "", [])


def test_a_second_claim_of_an_id_takes_the_orm_path_and_waits_for_the_lease() -> None:
    task_id = unique("prebuilt-twice")
    first = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
    second = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
    assert first.run and not second.run
    assert second.pk == first.pk and second.busy_for == LEASE.total_seconds()
    assert TaskExecution.objects.filter(task_id=task_id).count() == 1


def test_a_stale_claim_settles_nothing() -> None:
    task_id = unique("prebuilt-stale")
    held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
    TaskExecution.objects.filter(task_id=task_id).update(attempts=2)  # a newer attempt took it
    assert records.finish(held, "succeeded", duration=0.1, value=1) is None
    assert TaskExecution.objects.get(task_id=task_id).status == "running"


def async_commit(sqls: list[str]) -> list[bool]:
    return ["synchronous_commit" in sql for sql in sqls]


def test_on_postgresql_each_write_commits_asynchronously_by_itself() -> None:
    sqls = write(unique("async"), fail=False)
    assert async_commit(sqls) == [POSTGRESQL, POSTGRESQL]
    if POSTGRESQL:
        # Local to each write's own transaction: the session's durability is unchanged.
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone() == ("on",)


def test_records_synchronous_commit_keeps_every_write_durable() -> None:
    with override_settings(CLOUDTASK={**settings.CLOUDTASK, "RECORDS_SYNCHRONOUS_COMMIT": True}):
        sqls = write(unique("sync"), fail=False)
    assert async_commit(sqls) == [False, False]
    assert "ON CONFLICT" in sqls[0]  # still the prebuilt statements


def test_inside_a_transaction_no_write_changes_its_durability() -> None:
    task_id = unique("in-atomic")
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
        records.finish(held, "succeeded", duration=0.1, value=1)
    sqls = [q["sql"] for q in captured.captured_queries]
    assert any("ON CONFLICT" in sql for sql in sqls)
    assert not any(async_commit(sqls))
    assert TaskExecution.objects.get(task_id=task_id).status == "succeeded"


def test_with_autocommit_off_no_write_changes_the_open_transaction() -> None:
    task_id = unique("no-autocommit")
    transaction.set_autocommit(False)
    try:
        with CaptureQueriesContext(connection) as captured:
            held = records.claim(task_id, "shop.tasks.charge", "orders", LEASE, now=NOW)
            records.finish(held, "succeeded", duration=0.1, value=1)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert async_commit([q["sql"] for q in captured.captured_queries]) == [False, False]


# psycopg 3's server-side binding exists only on PostgreSQL: the test is defined there only.
if POSTGRESQL:

    @pytest.fixture
    def server_side_binding() -> Iterator[None]:
        """The default connection reconnected with psycopg 3's server-side binding."""
        options = connection.settings_dict["OPTIONS"]
        connection.close()
        options["server_side_binding"] = True
        try:
            yield
        finally:
            del options["server_side_binding"]
            connection.close()

    @pytest.mark.usefixtures("server_side_binding")
    def test_the_prebuilt_writes_work_with_server_side_binding() -> None:
        task_id = unique("server-binding")
        sqls = write(task_id, fail=False)
        assert type(connection.connection.cursor()).__name__ == "ServerBindingCursor"
        assert async_commit(sqls) == [True, True]
        row = TaskExecution.objects.get(task_id=task_id)
        assert (row.status, row.return_value, row.first_started_at) == ("succeeded", VALUE, NOW)


def test_the_execution_table_has_only_the_indexes_its_queries_use() -> None:
    # Every delivery inserts a row and settles it, paying for each index twice: the unique
    # task id (claims, get_result), last_started_at (the admin's ordering and date filter,
    # pruning) and task name (the admin's filter), and nothing the settlement changes.
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, TaskExecution._meta.db_table)
    indexed = {
        (tuple(c["columns"]), c["unique"])
        for c in found.values()
        if (c["index"] or c["unique"]) and not c["primary_key"]
    }
    assert indexed == {
        (("task_id",), True),
        (("last_started_at",), False),
        (("task_name", "last_started_at"), False),
    }


# Heap-only tuple updates are PostgreSQL's: the test is defined there only.
if POSTGRESQL:

    def test_the_settling_update_touches_no_index() -> None:
        # One transaction, so PostgreSQL's per-transaction counters see both writes.
        with transaction.atomic(), connection.cursor() as cursor:
            held = records.claim(unique("hot"), "shop.tasks.charge", "orders", LEASE, eta=ETA)
            records.finish(held, "succeeded", duration=0.25, value=VALUE)
            cursor.execute(
                "SELECT pg_stat_get_xact_tuples_updated(%s::regclass),"
                " pg_stat_get_xact_tuples_hot_updated(%s::regclass)",
                [TaskExecution._meta.db_table] * 2,
            )
            assert cursor.fetchone() == (1, 1)


def test_records_synchronous_commit_is_a_bool() -> None:
    assert build_settings({}).records_synchronous_commit is False
    assert build_settings({"RECORDS_SYNCHRONOUS_COMMIT": True}).records_synchronous_commit
    with pytest.raises(ConfigurationError, match=r'CLOUDTASK\["RECORDS_SYNCHRONOUS_COMMIT"\]'):
        build_settings({"RECORDS_SYNCHRONOUS_COMMIT": "off"})
