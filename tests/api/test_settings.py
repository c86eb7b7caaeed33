"""CLOUDTASK: defaults, validation errors that name the key, and rebuilding on change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cloudtask import ConfigurationError
from cloudtask.conf import build_settings, get_settings
from cloudtask.transports import get_transport
from cloudtask.transports.immediate import ImmediateTransport

from .conftest import BASE


def test_defaults() -> None:
    s = build_settings({})
    assert (s.transport, s.queue, s.max_payload_size, s.client_timeout) == (
        "emulator",
        "default",
        102_400,
        5.0,
    )
    assert (s.enqueue_retry_deadline, s.outbox, s.outbox_flush_timeout) == (10.0, True, 1.0)
    assert (s.outbox_relay_interval, s.outbox_alert_age) == (30.0, 3600.0)
    assert s.secrets == () and s.url is None and s.dispatch_deadline is None
    assert s.allow_unauthenticated is False and s.oidc_verify is False
    assert s.on_commit_workers == 8
    assert dict(s.emulator) == {
        "HOST": "127.0.0.1",
        "PORT": 0,
        "LOG": True,
        "DEDUP_WINDOW": 3600.0,
        "MAX_TASK_SIZE": 1_048_576,
        "QUEUES": (),
        "PERSIST": True,
        "STATE_DIR": None,
        "IDLE_TIMEOUT": 3600.0,
    }


def test_secret_list_rotation() -> None:
    s = build_settings({"SECRET": ["new", "old"]})
    assert s.secrets == ("new", "old")
    assert s.secret_keys == (b"new", b"old")


def test_dispatch_deadline_forms() -> None:
    assert build_settings({"DISPATCH_DEADLINE": 60}).dispatch_deadline == timedelta(seconds=60)
    assert build_settings({"DISPATCH_DEADLINE": timedelta(minutes=30)}).dispatch_deadline == (
        timedelta(minutes=30)
    )


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"SECRETS": "x"}, "Unknown CLOUDTASK key(s) 'SECRETS'"),
        ({"SECRET": 5}, 'CLOUDTASK["SECRET"] must be a non-empty string or a list'),
        ({"SECRET": ["ok", ""]}, 'CLOUDTASK["SECRET"]'),
        ({"URL": ""}, 'CLOUDTASK["URL"] must be a non-empty string or None'),
        ({"MAX_PAYLOAD_SIZE": 0}, 'CLOUDTASK["MAX_PAYLOAD_SIZE"] must be a positive'),
        ({"DISPATCH_DEADLINE": 5}, "is 5 s; Cloud Tasks accepts 15 s to 30 minutes"),
        ({"DISPATCH_DEADLINE": "1m"}, "must be a timedelta or a number of seconds"),
        ({"OIDC_VERIFY": "yes"}, 'CLOUDTASK["OIDC_VERIFY"] must be True or False'),
        ({"EMULATOR": {"PROT": 1}}, "Unknown CLOUDTASK[\"EMULATOR\"] key(s) 'PROT'"),
        ({"EMULATOR": {"QUEUES": [1]}}, 'CLOUDTASK["EMULATOR"]["QUEUES"] must be a list'),
        ({"ON_COMMIT_WORKERS": 0}, 'CLOUDTASK["ON_COMMIT_WORKERS"] must be a positive integer'),
        ({"CLIENT_TIMEOUT": -1}, 'CLOUDTASK["CLIENT_TIMEOUT"] must be a positive number'),
        ({"OUTBOX": 1}, 'CLOUDTASK["OUTBOX"] must be True or False'),
        ({"OUTBOX_FLUSH_TIMEOUT": 0}, 'CLOUDTASK["OUTBOX_FLUSH_TIMEOUT"] must be a positive'),
        ({"ENQUEUE_RETRY_DEADLINE": -1}, 'CLOUDTASK["ENQUEUE_RETRY_DEADLINE"] must be a non-'),
        ({"QUEUE": None}, 'CLOUDTASK["QUEUE"] must be a queue id string'),
        ({"TRANSPORT": ""}, 'CLOUDTASK["TRANSPORT"] must be'),
    ],
)
def test_errors_name_the_key(user: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings(user)
    assert message in str(caught.value)


def test_settings_and_backend_are_rebuilt_on_change(settings: Any) -> None:
    first_settings, first_backend = get_settings(), get_transport()
    assert get_settings() is first_settings and get_transport() is first_backend
    settings.CLOUDTASK = {**BASE, "QUEUE": "elsewhere"}
    assert get_settings().queue == "elsewhere"
    assert get_transport() is not first_backend
    assert isinstance(get_transport(), ImmediateTransport)


def test_unknown_backend_fails_clearly(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "nope"}
    with pytest.raises(ConfigurationError, match="'nope' is not"):
        get_transport()


def test_the_old_backend_key_says_to_rename_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings({"BACKEND": "cloudtasks"})
    assert str(caught.value) == (
        'CLOUDTASK["BACKEND"] was renamed CLOUDTASK["TRANSPORT"] (BACKEND now means a '
        "django.tasks backend in TASKS): write \"TRANSPORT\": 'cloudtasks' instead."
    )
