"""OIDC tokens on deliveries, verified with google-auth against the emulator's certificates."""

from __future__ import annotations

import base64
import json

import pytest
from google.auth.transport.requests import Request
from google.cloud import tasks_v2
from google.oauth2 import id_token

from cloudtask.emulator import Emulator

from .conftest import Target

SERVICE_ACCOUNT = "tasks@local-project.iam.gserviceaccount.com"


def bearer(target: Target) -> str:
    (request,) = target.wait_for(1)
    authorization = request.header("Authorization") or ""
    assert authorization.startswith("Bearer ")
    return authorization.removeprefix("Bearer ")


def test_token_verifies_with_google_auth(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "http_request": {
                    "url": target.url(),
                    "oidc_token": {
                        "service_account_email": SERVICE_ACCOUNT,
                        "audience": "https://tasks.example.com/",
                    },
                }
            },
        }
    )
    token = bearer(target)
    claims = id_token.verify_token(
        token, Request(), audience="https://tasks.example.com/", certs_url=emulator.certs_url
    )
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == "https://tasks.example.com/"
    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert claims["sub"]
    assert claims["exp"] - claims["iat"] == 3600
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert header["kid"] in json.loads(Request()(emulator.certs_url).data)


def test_audience_defaults_to_the_url(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    url = target.url("/tasks/run")
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "http_request": {
                    "url": url,
                    "oidc_token": {"service_account_email": SERVICE_ACCOUNT},
                }
            },
        }
    )
    claims = id_token.verify_token(
        bearer(target), Request(), audience=url, certs_url=emulator.certs_url
    )
    assert claims["aud"] == url


def test_wrong_audience_or_other_emulator_is_refused(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "http_request": {
                    "url": target.url(),
                    "oidc_token": {"service_account_email": SERVICE_ACCOUNT},
                }
            },
        }
    )
    token = bearer(target)
    with pytest.raises(ValueError):
        id_token.verify_token(
            token, Request(), audience="https://other.example/", certs_url=emulator.certs_url
        )
    with Emulator(log=None) as other, pytest.raises(ValueError):
        id_token.verify_token(token, Request(), audience=target.url(), certs_url=other.certs_url)


def test_issuer_is_configurable(target: Target) -> None:
    with Emulator(queues=["q"], log=None, oidc_issuer="https://issuer.local") as emu:
        emu.client().create_task(
            request={
                "parent": emu.ensure_queue("q"),
                "task": {
                    "http_request": {
                        "url": target.url(),
                        "oidc_token": {"service_account_email": SERVICE_ACCOUNT},
                    }
                },
            }
        )
        claims = id_token.verify_token(
            bearer(target), Request(), audience=target.url(), certs_url=emu.certs_url
        )
        assert claims["iss"] == "https://issuer.local"


def test_the_token_replaces_a_task_authorization_header(
    client: tasks_v2.CloudTasksClient, emulator: Emulator, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "http_request": {
                    "url": target.url(),
                    "headers": {"Authorization": "Bearer forged"},
                    "oidc_token": {"service_account_email": SERVICE_ACCOUNT},
                }
            },
        }
    )
    claims = id_token.verify_token(
        bearer(target), Request(), audience=target.url(), certs_url=emulator.certs_url
    )
    assert claims["email"] == SERVICE_ACCOUNT


def test_without_a_token_headers_pass_unchanged(
    client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    client.create_task(
        request={
            "parent": queue,
            "task": {
                "http_request": {"url": target.url(), "headers": {"Authorization": "Basic x"}}
            },
        }
    )
    (request,) = target.wait_for(1)
    assert request.header("Authorization") == "Basic x"
