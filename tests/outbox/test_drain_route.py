"""The drain route beside the task endpoint: a Cloud Scheduler job's way to run the relay."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from cloudtask.conf import get_settings
from cloudtask.emulator import Emulator
from cloudtask.models import OutboxMessage
from cloudtask.signing import sign

from .fixtures import Cloud, cloud, commit_pings, make_due, outbox_emulator

__all__ = ["cloud", "outbox_emulator"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

URL = "/_tasks/outbox/drain/"
#: The fixed body a Cloud Scheduler job sends (any body works; its signature must match).
BODY = b'{"job": "outbox-drain"}'


def signed_post(client: Client, body: bytes = BODY, query: str = "") -> Any:
    signature = str(sign(body, get_settings()))
    return client.post(
        URL + query,
        data=body,
        content_type="application/json",
        headers={"X-CloudTask-Signature": signature},
    )


def test_the_route_sits_beside_the_endpoint() -> None:
    assert reverse("cloudtask:outbox-drain") == URL


def test_unsigned_and_wrongly_signed_requests_are_refused(
    cloud: Cloud, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    commit_pings("kept")
    cloud.restore()
    make_due()

    with caplog.at_level(logging.WARNING, logger="cloudtask"):
        unsigned = client.post(URL, data=BODY, content_type="application/json")
        wrong = client.post(
            URL,
            data=BODY,
            content_type="application/json",
            headers={"X-CloudTask-Signature": str(sign(b"another body", get_settings()))},
        )

    assert unsigned.status_code == wrong.status_code == 403
    assert OutboxMessage.objects.count() == 1
    assert [r.getMessage() for r in caplog.records if r.name == "cloudtask"] == [
        "Refused outbox drain request from 127.0.0.1: missing or wrong X-CloudTask-Signature."
    ] * 2


def test_only_post() -> None:
    assert Client().get(URL).status_code == 405


def test_a_signed_request_sends_what_is_due_and_answers_the_counts(
    cloud: Cloud, client: Client
) -> None:
    commit_pings("a", "b")
    cloud.restore()
    make_due()

    response = signed_post(client)

    assert response.status_code == 200
    assert response.json() == {"sent": 2, "failed": 0, "duplicates": 0, "skipped": {}}
    assert cloud.delivered(2) == ["a", "b"]
    assert not OutboxMessage.objects.exists()


def test_an_empty_signed_body_works_too(cloud: Cloud, client: Client) -> None:
    assert signed_post(client, b"").json() == {
        "sent": 0,
        "failed": 0,
        "duplicates": 0,
        "skipped": {},
    }


def test_limit_bounds_one_pass(cloud: Cloud, client: Client) -> None:
    commit_pings("1", "2", "3")
    cloud.restore()
    make_due()

    assert signed_post(client, query="?limit=1").json()["sent"] == 1
    assert OutboxMessage.objects.count() == 2
    cloud.delivered(1)
    for bad in ("0", "501", "ten"):
        response = signed_post(client, query=f"?limit={bad}")
        assert response.status_code == 400
        assert response.content == b"limit must be a whole number from 1 to 500"


def test_rows_that_fail_are_counted_not_a_server_error(cloud: Cloud, client: Client) -> None:
    commit_pings("still down")
    make_due()  # Cloud Tasks is still down

    response = signed_post(client)

    assert response.status_code == 200
    assert response.json() == {"sent": 0, "failed": 1, "duplicates": 0, "skipped": {}}
    assert OutboxMessage.objects.get().attempts == 2


def test_a_database_it_cannot_read_is_a_500(client: Client) -> None:
    call_command("migrate", "cloudtask", "zero", database="other", verbosity=0)
    try:
        response = signed_post(client)
    finally:
        call_command("migrate", "cloudtask", database="other", verbosity=0)

    assert response.status_code == 500
    data = response.json()
    assert (data["sent"], data["failed"], list(data["skipped"])) == (0, 0, ["other"])


def test_oidc_instead_of_a_signature(
    settings: Any, outbox_emulator: Emulator, client: Client
) -> None:
    """A Cloud Scheduler job with --oidc-service-account-email: the token's audience is the one
    task deliveries use (OIDC_AUDIENCE, else URL), its email is SAE."""
    audience = "https://example.com/_tasks/"
    settings.CLOUDTASK = {
        **settings.CLOUDTASK,
        "SECRET": None,
        "OIDC_VERIFY": True,
        "OIDC_AUDIENCE": audience,
        "OIDC_CERTS_URL": outbox_emulator.certs_url,
    }
    issuer = outbox_emulator.issuer
    assert issuer is not None
    sae = get_settings().sae
    assert sae is not None

    def post(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return int(client.post(URL, headers=headers).status_code)

    assert post(issuer.token(sae, audience, time.time())) == 200
    assert post(None) == 403
    assert post(issuer.token(sae, URL, time.time())) == 403
    assert post(issuer.token("someone@else.iam.gserviceaccount.com", audience, time.time())) == 403
