"""Under ATOMIC_REQUESTS a view's tasks are sent when it commits, before the response."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from tests.models import Order, Parcel

from . import views
from .conftest import records

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def atomic_requests(settings: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    settings.ROOT_URLCONF = "tests.oncommit.urls"
    # ATOMIC_REQUESTS is read from the connection's settings on each request.
    monkeypatch.setitem(connections["default"].settings_dict, "ATOMIC_REQUESTS", True)
    views.HANDLES.clear()
    yield emulator
    views.HANDLES.clear()


def test_the_view_commits_and_its_tasks_are_sent_before_the_response(
    atomic_requests: Any, deliveries: Any
) -> None:
    response = Client().post("/orders/")

    assert response.status_code == 200
    body = response.json()
    # Inside the view the call was only deferred...
    assert body == {"order": body["order"], "in_atomic_block": True, "state": "pending"}
    # ...and by the time the response is back it has been sent.
    (handle,) = views.HANDLES
    assert handle.state == "sent"  # type: ignore[attr-defined]
    assert atomic_requests.wait_idle()
    assert records("read_order") == [{"order": body["order"], "status": "paid"}]
    assert [d["label"] for d in deliveries.of("ping")] == ["from the view"]


def test_a_view_that_fails_sends_nothing(atomic_requests: Any) -> None:
    response = Client(raise_request_exception=False).post("/orders/fail/")

    assert response.status_code == 500
    assert not Order.objects.exists()
    (handle,) = views.HANDLES
    assert handle.state == "dropped"  # type: ignore[attr-defined]
    assert atomic_requests.wait_idle()
    assert records("read_order") == []


def test_a_binding_sees_the_change_the_view_made(atomic_requests: Any) -> None:
    parcel = Parcel.objects.create(status="paid")
    assert atomic_requests.wait_idle()  # let setup deliveries finish: SQLite has one writer

    response = Client().post(f"/parcels/{parcel.pk}/ship/")

    assert response.json() == {"tracker_changed_after_save": {}}
    assert atomic_requests.wait_idle()
    assert records("parcel_status_changed") == [
        {"pk": parcel.pk, "status": "shipped", "changes": {"status": ["paid", "shipped"]}}
    ]
