"""A task sent on Cloud Run with nothing but TRANSPORT set reaches the queue of the detected
project and location, addressed to the detected URL with an OIDC token of the detected account."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtask import CloudTaskRequest, registry, task
from cloudtask.emulator import Emulator
from tests.tasks import add

from .conftest import METADATA, REGION, UNSET, CloudRunEnvironment, FakeMetadataServer


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator serving the project and region the metadata server names."""
    with Emulator(
        project=METADATA["project/project-id"],
        location=REGION,
        auto_create_queues=True,
        log=None,
    ) as emu:
        yield emu


def test_a_task_carries_the_detected_url_and_service_account(
    environment: CloudRunEnvironment,
    metadata: FakeMetadataServer,
    cloud_settings: Any,
    emulator: Emulator,
) -> None:
    environment.service(metadata.host)
    cloud_settings.CLOUDTASK = {
        **UNSET,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
    }

    # A day ahead: the emulator keeps it instead of delivering it to run.app, out of reach here.
    handle = add(a=1, b=2).schedule(timedelta(days=1))

    assert handle.resource_name == (
        f"projects/meta-project/locations/europe-west6/queues/default/tasks/{handle.task_id}"
    )
    queued = emulator.client().get_task(
        request={"name": handle.resource_name, "response_view": tasks_v2.Task.View.FULL}
    )
    request = queued.http_request
    assert request.url == "https://svc-123.europe-west6.run.app/_tasks/"
    assert (
        request.oidc_token.service_account_email
        == METADATA["instance/service-accounts/default/email"]
    )
    assert request.oidc_token.audience == "https://svc-123.europe-west6.run.app/_tasks/"


@pytest.fixture
def mailer_task() -> Iterator[Any]:
    """A task with a url= of its own: it runs on another service."""

    @task(name="cloudrun.send_mail", url=MAILER_URL)
    def send_mail(request: CloudTaskRequest, to: str) -> None:
        pass

    yield send_mail
    registry.unregister(send_mail.name)


MAILER_URL = "https://mailer.example.com/_tasks/"


def test_a_cloud_run_job_sends_a_task_that_has_its_own_url(
    environment: CloudRunEnvironment,
    metadata: FakeMetadataServer,
    cloud_settings: Any,
    emulator: Emulator,
    mailer_task: Any,
) -> None:
    # A job serves no URL, so CLOUDTASK["URL"] cannot be detected; a task that names its own
    # url needs none, and its token's audience is that url (no OIDC_AUDIENCE, no URL).
    environment.job(metadata.host)
    cloud_settings.CLOUDTASK = {
        **UNSET,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": emulator.address,
    }

    handle = mailer_task(to="a@example.com").schedule(timedelta(days=1))

    queued = emulator.client().get_task(
        request={"name": handle.resource_name, "response_view": tasks_v2.Task.View.FULL}
    )
    request = queued.http_request
    assert request.url == MAILER_URL
    assert request.oidc_token.audience == MAILER_URL
    assert (
        request.oidc_token.service_account_email
        == METADATA["instance/service-accounts/default/email"]
    )
