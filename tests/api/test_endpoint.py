"""The endpoint: authentication first, then decoding, routing, running and the status codes."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import pytest
from django.test import Client

from cloudtask import signals
from cloudtask.conf import get_settings
from cloudtask.models import DeadLetter
from cloudtask.signing import sign
from tests.models import Order
from tests.tasks import add, always_fails, discard_me, echo, fails_once, retry_me, touch_order

from .conftest import BASE

URL = "/_tasks/"
pytestmark = pytest.mark.django_db


def body_of(call: Any) -> bytes:
    return bytes(call.encode().body)


def post(
    client: Client, body: bytes, *, signed: bool = True, headers: dict[str, str] | None = None
) -> Any:
    all_headers = dict(headers or {})
    if signed:
        all_headers["X-CloudTask-Signature"] = sign(body, get_settings()) or ""
    return client.post(URL, data=body, content_type="application/json", headers=all_headers)


@pytest.fixture
def client() -> Client:
    return Client()


def test_a_signed_request_runs_the_task(client: Client, runs: Any) -> None:
    response = post(
        client,
        body_of(add(a=1, b=2)),
        headers={
            "X-CloudTasks-QueueName": "projects/p/locations/l/queues/default",
            "X-CloudTasks-TaskName": "abc",
            "X-CloudTasks-TaskRetryCount": "3",
            "X-CloudTasks-TaskExecutionCount": "2",
            "X-CloudTasks-TaskETA": "1767225600.5",
            "X-CloudTasks-TaskPreviousResponse": "500",
            "X-CloudTasks-TaskRetryReason": "Internal error",
        },
    )
    assert response.status_code == 200
    (run,) = runs.of("add")
    assert (run["a"], run["b"]) == (1, 2)
    # A full queue path is reduced to its id; the ETA is an aware datetime.
    assert run["queue_name"] == "default"
    assert run["task_name"] == "abc"
    assert (run["retry_count"], run["execution_count"]) == (3, 2)
    assert run["eta"].isoformat() == "2026-01-01T00:00:00.500000+00:00"


def test_cloud_task_request_exposes_previous_response_and_reason(client: Client) -> None:
    seen: list[Any] = []

    def on_started(sender: Any, request: Any, **kwargs: Any) -> None:
        seen.append(request)

    signals.task_started.connect(on_started)
    try:
        post(
            client,
            body_of(echo()),
            headers={
                "X-CloudTasks-TaskPreviousResponse": "503",
                "X-CloudTasks-TaskRetryReason": "Backend unavailable",
            },
        )
    finally:
        signals.task_started.disconnect(on_started)
    (request,) = seen
    assert request.previous_response == 503
    assert request.retry_reason == "Backend unavailable"
    assert request.method == "POST"  # falls through to the Django request
    assert request.task is echo


@pytest.mark.parametrize("method", ["get", "put", "delete", "head"])
def test_only_post_is_allowed(client: Client, method: str, runs: Any) -> None:
    response = getattr(client, method)(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_missing_signature_is_forbidden(client: Client, runs: Any) -> None:
    response = post(client, body_of(add(a=1, b=2)), signed=False)
    assert response.status_code == 403
    assert runs.of("add") == []


def test_wrong_signature_is_forbidden(client: Client, runs: Any) -> None:
    response = post(
        client,
        body_of(add(a=1, b=2)),
        signed=False,
        headers={"X-CloudTask-Signature": "sha256=" + "0" * 64},
    )
    assert response.status_code == 403
    assert runs.of("add") == []


def test_altered_body_is_forbidden(client: Client, runs: Any) -> None:
    body = body_of(add(a=1, b=2))
    signature = sign(body, get_settings()) or ""
    altered = body.replace(b'"a":1', b'"a":9')
    assert altered != body
    response = post(client, altered, signed=False, headers={"X-CloudTask-Signature": signature})
    assert response.status_code == 403
    assert runs.of("add") == []


def test_forged_cloud_tasks_headers_prove_nothing(client: Client, runs: Any) -> None:
    response = post(
        client,
        body_of(add(a=1, b=2)),
        signed=False,
        headers={"X-CloudTasks-QueueName": "default", "User-Agent": "Google-Cloud-Tasks"},
    )
    assert response.status_code == 403


def test_secret_rotation_accepts_old_and_new(settings: Any, client: Client, runs: Any) -> None:
    settings.CLOUDTASK = {**BASE, "SECRET": "old"}
    old_body = body_of(add(a=1, b=1))
    old_signature = sign(old_body, get_settings()) or ""
    settings.CLOUDTASK = {**BASE, "SECRET": ["new", "old"]}
    assert (
        post(
            client, old_body, signed=False, headers={"X-CloudTask-Signature": old_signature}
        ).status_code
        == 200
    )
    assert post(client, body_of(add(a=2, b=2))).status_code == 200
    settings.CLOUDTASK = {**BASE, "SECRET": ["newer"]}
    assert (
        post(
            client, old_body, signed=False, headers={"X-CloudTask-Signature": old_signature}
        ).status_code
        == 403
    )
    assert len(runs.of("add")) == 2


@pytest.mark.parametrize("secret", ["short", "k" * 64, "a-secret-longer-than-the-block-" * 4])
def test_signature_is_standard_hmac_sha256(
    settings: Any, client: Client, runs: Any, secret: str
) -> None:
    # Any sender that can compute HMAC-SHA256 can call the endpoint: a signature made with the
    # standard library (keys shorter than, equal to and longer than SHA-256's block) is accepted,
    # and ours is byte for byte the same.
    settings.CLOUDTASK = {**BASE, "SECRET": secret}
    body = body_of(add(a=3, b=4))
    standard = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, get_settings()) == standard
    response = post(client, body, signed=False, headers={"X-CloudTask-Signature": standard})
    assert response.status_code == 200
    assert [(r["a"], r["b"]) for r in runs.of("add")] == [(3, 4)]


def test_unknown_task_is_404(client: Client) -> None:
    body = b'{"v":1,"task":"no.such.task","args":[],"kwargs":{}}'
    assert post(client, body).status_code == 404


def test_the_endpoint_never_imports_what_a_request_names(client: Client) -> None:
    import sys

    body = b'{"v":1,"task":"antigravity.fly","args":[],"kwargs":{}}'
    assert post(client, body).status_code == 404
    assert "antigravity" not in sys.modules


UNDECODABLE = [
    b"not json",
    b"[1, 2]",
    b'{"v": 2, "task": "tests.tasks.add", "args": [], "kwargs": {}}',
    b'{"v": 1, "task": "tests.tasks.add", "args": {}, "kwargs": {}}',
    b'{"v": 1, "task": "tests.tasks.add", "args": [{"__ct__": "nope", "v": 1}], "kwargs": {}}',
    b'{"v": 1, "task": "tests.tasks.add", "args": [{"__ct__": "decimal", "v": "x"}], "kwargs": {}}',
]
UNDECODABLE_IDS = ["not-json", "not-object", "version", "args-type", "tag", "decimal"]
MISMATCHED = [
    b'{"v": 1, "task": "tests.tasks.add", "args": [], "kwargs": {"c": 1}}',
    b'{"v": 1, "task": "tests.tasks.add", "args": [1, 2, 3], "kwargs": {}}',
]


@pytest.mark.parametrize("body", UNDECODABLE, ids=UNDECODABLE_IDS)
def test_a_signed_body_that_can_never_decode_is_dead_lettered_and_not_retried(
    client: Client, body: bytes, runs: Any
) -> None:
    response = post(client, body)
    # 2xx: retrying a body that can never decode cannot help; Cloud Tasks stops.
    assert response.status_code == 200
    assert b"dead-lettered" in response.content
    assert runs.of("add") == []
    (letter,) = DeadLetter.objects.all()
    assert (letter.reason, bytes(letter.body)) == ("undecodable", body)
    assert letter.errors[0]["exception_class"] == "cloudtask.exceptions.InvalidTaskRequest"


@pytest.mark.parametrize("body", UNDECODABLE + MISMATCHED)
def test_without_records_malformed_requests_are_400_and_run_nothing(
    client: Client, body: bytes, runs: Any, settings: Any
) -> None:
    settings.CLOUDTASK = {**BASE, "RECORDS": False}
    assert post(client, body).status_code == 400
    assert runs.of("add") == []
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize("body", MISMATCHED, ids=["kwarg", "arity"])
def test_arguments_that_do_not_fit_are_400_and_retried(
    client: Client, body: bytes, runs: Any
) -> None:
    # A deploy may bring the code these arguments were sent for: not dead-lettered.
    assert post(client, body).status_code == 400
    assert runs.of("add") == []
    assert not DeadLetter.objects.exists()


def test_malformed_unsigned_request_is_403_not_400(client: Client) -> None:
    # Authentication comes before parsing: an attacker learns nothing about the format.
    assert post(client, b"not json", signed=False).status_code == 403


def test_task_exception_is_500_with_traceback_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cloudtask"):
        response = post(client, body_of(fails_once()))
    assert response.status_code == 500
    (record,) = [r for r in caplog.records if r.name == "cloudtask"]
    assert "tests.tasks.fails_once" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_discard_is_200_and_final(client: Client) -> None:
    failed: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failed.append(kwargs)

    signals.task_failed.connect(on_failed)
    try:
        response = post(client, body_of(discard_me("not needed")))
    finally:
        signals.task_failed.disconnect(on_failed)
    assert response.status_code == 200
    (call,) = failed
    assert call["final"] is True
    assert call["exception"].reason == "not needed"


def test_retry_is_503_with_retry_after(client: Client) -> None:
    response = post(client, body_of(retry_me(until=5)))
    assert response.status_code == 503
    assert response["Retry-After"] == "1"


def test_a_requested_retry_is_not_logged_again_by_django_a_crash_is(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # cloudtask logs a requested retry in one WARNING line; Django's request log, which turns
    # every 5xx into an ERROR, stays quiet for it, and still reports a crash.
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert post(client, body_of(retry_me(until=5))).status_code == 503
        assert not [r for r in caplog.records if r.name == "django.request"]
        assert post(client, body_of(fails_once())).status_code == 500
    (logged,) = [r for r in caplog.records if r.name == "django.request"]
    assert logged.levelno == logging.ERROR


def test_max_attempts_reached_is_logged_and_200(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    failed: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failed.append(kwargs)

    signals.task_failed.connect(on_failed)
    body = body_of(always_fails())
    try:
        first = post(client, body, headers={"X-CloudTasks-TaskRetryCount": "0"})
        with caplog.at_level(logging.ERROR, logger="cloudtask"):
            last = post(client, body, headers={"X-CloudTasks-TaskRetryCount": "1"})
    finally:
        signals.task_failed.disconnect(on_failed)
    assert first.status_code == 500
    assert last.status_code == 200
    assert [c["final"] for c in failed] == [False, True]
    assert any("failed for good on attempt 2 of 2" in r.getMessage() for r in caplog.records)


def test_deleted_model_instance_is_200_final_and_logged(
    client: Client, caplog: pytest.LogCaptureFixture, runs: Any
) -> None:
    order = Order.objects.create()
    body = body_of(touch_order(order, note="x"))
    order.delete()
    failed: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failed.append(kwargs)

    signals.task_failed.connect(on_failed)
    try:
        with caplog.at_level(logging.WARNING, logger="cloudtask"):
            response = post(client, body)
    finally:
        signals.task_failed.disconnect(on_failed)
    assert response.status_code == 200
    assert runs.of("touch_order") == []
    assert failed[0]["final"] is True
    assert type(failed[0]["exception"]).__name__ == "ObjectDeleted"
    assert any("no longer exists" in r.getMessage() for r in caplog.records)


class TestWithoutAuthentication:
    @pytest.fixture(autouse=True)
    def no_auth(self, settings: Any) -> None:
        settings.CLOUDTASK = {**BASE, "SECRET": None}

    def test_refused_when_debug_is_off(
        self, client: Client, caplog: pytest.LogCaptureFixture, runs: Any
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="cloudtask"):
            assert post(client, body_of(add(a=1, b=2)), signed=False).status_code == 403
        assert runs.of("add") == []
        assert any("no authentication is configured" in r.getMessage() for r in caplog.records)

    def test_runs_with_a_loud_warning_when_debug_is_on(
        self, settings: Any, client: Client, caplog: pytest.LogCaptureFixture, runs: Any
    ) -> None:
        import cloudtask.handler

        settings.DEBUG = True
        cloudtask.handler._warned_unauthenticated = False
        with caplog.at_level(logging.WARNING, logger="cloudtask"):
            assert post(client, body_of(add(a=1, b=2)), signed=False).status_code == 200
            assert post(client, body_of(add(a=1, b=2)), signed=False).status_code == 200
        warnings = [r for r in caplog.records if "WITHOUT AUTHENTICATION" in r.getMessage()]
        assert len(warnings) == 1
        assert len(runs.of("add")) == 2

    def test_runs_when_explicitly_allowed(self, settings: Any, client: Client, runs: Any) -> None:
        settings.CLOUDTASK = {**BASE, "SECRET": None, "ALLOW_UNAUTHENTICATED": True}
        assert post(client, body_of(add(a=1, b=2)), signed=False).status_code == 200


def test_oidc_required_without_a_token_is_forbidden(settings: Any, client: Client) -> None:
    settings.CLOUDTASK = {**BASE, "OIDC_VERIFY": True}
    # Signed correctly, but the OIDC token is missing: both must pass.
    assert post(client, body_of(add(a=1, b=2))).status_code == 403
    assert (
        post(
            client, body_of(add(a=1, b=2)), headers={"Authorization": "Bearer not-a-token"}
        ).status_code
        == 403
    )


def test_csrf_is_not_required(settings: Any, runs: Any) -> None:
    settings.MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware"]
    client = Client(enforce_csrf_checks=True)
    assert post(client, body_of(add(a=1, b=2))).status_code == 200
    assert json.loads(body_of(add(a=1, b=2)))["task"] == "tests.tasks.add"
