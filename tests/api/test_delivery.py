"""End to end: .delay() goes over gRPC to the emulator, which POSTs to a live Django server."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from cloudtask.transports import get_transport
from cloudtask.transports.emulator import EmulatorTransport
from tests.models import Order
from tests.tasks import add, echo, touch_order, with_headers

from .conftest import BASE, poll

pytestmark = pytest.mark.django_db(transaction=True)


def test_delay_runs_the_task_with_its_arguments_and_request(via_emulator: Any, runs: Any) -> None:
    handle = add(a=10, b=30).delay()

    assert handle.state == "sent"
    assert (handle.name or "").startswith(
        f"projects/{via_emulator.project}/locations/{via_emulator.location}/queues/default/tasks/"
    )
    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (10, 30)
    assert run["queue_name"] == "default"
    assert run["task_name"] == handle.id
    assert run["retry_count"] == 0
    assert run["execution_count"] == 0
    assert run["is_local"] is False
    assert run["eta"].tzinfo is not None
    assert abs(run["eta"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_push_is_an_alias_and_positional_arguments_work(via_emulator: Any, runs: Any) -> None:
    add(30, 10).push()
    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (30, 10)


def test_argument_types_survive_the_trip(via_emulator: Any, runs: Any) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    values: tuple[Any, ...] = (
        when,
        date(2026, 1, 2),
        timedelta(days=1, microseconds=5),
        Decimal("1.10"),
        UUID(int=7),
        (1, (2, 3)),
        {1, 2},
        frozenset({"a"}),
        b"\x00\xff",
        {"nested": [{"set": {3}}], 5: "int key"},
    )
    echo(*values, key=Decimal("2.50")).delay()

    (run,) = runs.wait("echo")
    assert run["args"] == values
    assert [type(v) for v in run["args"]] == [type(v) for v in values]
    assert run["kwargs"] == {"key": Decimal("2.50")}


def test_model_instance_is_fetched_fresh(via_emulator: Any, runs: Any) -> None:
    order = Order.objects.create(status=Order.Status.NEW)
    call = touch_order(order, note="hello")
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PAID)

    call.delay()

    (run,) = runs.wait("touch_order")
    # The task saw the row as it was when it ran, not as it was at .delay().
    assert run["status"] == Order.Status.PAID
    order.refresh_from_db()
    assert order.note == "hello"


def test_task_headers_and_deadline_reach_the_handler(via_emulator: Any, runs: Any) -> None:
    with_headers().delay()
    (run,) = runs.wait("with_headers")
    assert run["custom"] == "yes"
    assert run["headers"]["Content-Type"] == "application/json"
    assert run["headers"]["X-Cloudtask-Signature"].startswith("sha256=")


def test_oidc_tokens_from_the_emulator_are_verified(
    settings: Any, via_emulator: Any, endpoint_url: str, runs: Any
) -> None:
    settings.CLOUDTASK = {
        **settings.CLOUDTASK,
        "SECRET": None,
        "OIDC_VERIFY": True,
        "OIDC_CERTS_URL": via_emulator.certs_url,
    }
    add(a=1, b=2).delay()
    (run,) = runs.wait("add")
    assert run["headers"]["Authorization"].startswith("Bearer ")


def test_oidc_token_for_another_service_account_is_refused(
    settings: Any, via_emulator: Any, runs: Any
) -> None:
    settings.CLOUDTASK = {
        **settings.CLOUDTASK,
        "SECRET": None,
        "OIDC_VERIFY": True,
        "OIDC_CERTS_URL": via_emulator.certs_url,
    }
    backend = get_transport()
    # A token for some other service account (any Google account can get one) is not enough.
    message = replace(
        add(a=1, b=2).encode(), oidc_service_account="intruder@example.iam.gserviceaccount.com"
    )
    created = backend.enqueue(message)
    try:
        records = poll(lambda: [d for d in via_emulator.dispatches if d.task == created.task_id])
        assert records[0].status == 403
        assert runs.of("add") == []
    finally:
        backend.client.delete_task(name=created.resource_name)  # type: ignore[attr-defined]


def test_emulator_backend_is_zero_config(settings: Any, endpoint_url: str, runs: Any) -> None:
    # PERSIST off: the emulator inside this process (the shared background one is
    # tests/localqueue's subject, each test with its own state directory).
    settings.CLOUDTASK = {
        "URL": endpoint_url,
        "SECRET": "s3cret",
        "EMULATOR": {"LOG": False, "PERSIST": False},
    }
    backend = get_transport()
    assert isinstance(backend, EmulatorTransport)

    handle = add(a=2, b=3).delay()

    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (2, 3)
    assert (handle.name or "").startswith(
        "projects/local-project/locations/local/queues/default/tasks/"
    )
    # One client and one emulator per process: a second call reuses both.
    client = backend.client
    add(a=4, b=5).delay()
    runs.wait("add", 2)
    assert get_transport() is backend and backend.client is client


def test_emulator_backend_verifies_its_own_oidc_tokens(
    settings: Any, endpoint_url: str, runs: Any
) -> None:
    settings.CLOUDTASK = {
        "URL": endpoint_url,
        "SAE": BASE["SAE"],
        "OIDC_VERIFY": True,
        "EMULATOR": {"LOG": False, "PERSIST": False},
    }
    add(a=7, b=8).delay()
    (run,) = runs.wait("add")
    assert (run["a"], run["b"]) == (7, 8)


def test_secret_and_oidc_together_both_must_pass(
    settings: Any, via_emulator: Any, runs: Any
) -> None:
    settings.CLOUDTASK = {
        **settings.CLOUDTASK,
        "OIDC_VERIFY": True,
        "OIDC_CERTS_URL": via_emulator.certs_url,
    }
    add(a=5, b=5).delay()
    (run,) = runs.wait("add")
    assert run["headers"]["Authorization"].startswith("Bearer ")
    assert run["headers"]["X-Cloudtask-Signature"].startswith("sha256=")

    # A valid OIDC token does not make up for a wrong signature.
    backend = get_transport()
    message = add(a=6, b=6).encode()
    forged = replace(
        message, headers={**message.headers, "X-CloudTask-Signature": "sha256=" + "0" * 64}
    )
    created = backend.enqueue(forged)
    try:
        records = poll(lambda: [d for d in via_emulator.dispatches if d.task == created.task_id])
        assert records[0].status == 403
        assert len(runs.of("add")) == 1
    finally:
        backend.client.delete_task(name=created.resource_name)  # type: ignore[attr-defined]


def test_threads_share_one_client(via_emulator: Any, runs: Any) -> None:
    backend = get_transport()
    client = backend.client  # type: ignore[attr-defined]
    errors: list[BaseException] = []

    def send_some(worker: int) -> None:
        try:
            for i in range(5):
                add(a=worker, b=i).delay()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send_some, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    done = runs.wait("add", 40)
    assert sorted((r["a"], r["b"]) for r in done) == [(w, i) for w in range(8) for i in range(5)]
    assert get_transport() is backend
    assert backend.client is client  # type: ignore[attr-defined]
