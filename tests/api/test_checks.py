"""System checks: stable ids and exact messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.checks import Error, Warning, run_checks

from cloudtask import registry
from cloudtask.tasks import Task

from .conftest import BASE


def cloudtask_checks() -> list[Any]:
    return [m for m in run_checks(tags=["cloudtask"]) if (m.id or "").startswith("cloudtask.")]


def deploy_checks() -> list[Any]:
    return [
        m
        for m in run_checks(tags=["cloudtask"], include_deployment_checks=True)
        if (m.id or "").startswith("cloudtask.")
    ]


def ids() -> list[str]:
    return [m.id for m in cloudtask_checks()]


def test_the_test_settings_pass() -> None:
    assert cloudtask_checks() == []


@pytest.mark.parametrize(
    ("key", "check_id"),
    [("PROJECT", "cloudtask.E001"), ("LOCATION", "cloudtask.E002"), ("SAE", "cloudtask.E003")],
)
def test_cloudtasks_transport_needs_project_location_sae(
    settings: Any, key: str, check_id: str
) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "cloudtasks", key: None}
    assert cloudtask_checks() == [
        Error(
            f'CLOUDTASK["{key}"] is required by the "cloudtasks" transport.',
            hint=f'Inside a Cloud Run container CLOUDTASK["{key}"] is detected when left unset; '
            "this process is not in one, so set it here. manage.py cloudtask_sync run from a "
            "laptop or CI needs it set too (e.g. from an environment variable).",
            id=check_id,
        )
    ]


def test_other_backends_do_not_need_them(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "PROJECT": None, "SAE": None}
    assert cloudtask_checks() == []


def test_no_url_anywhere(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": None}
    without = sorted(t.name for t in registry.all_tasks() if not t.url)
    assert cloudtask_checks() == [
        Error(
            'CLOUDTASK["URL"] is not set and these tasks have no url=: ' + ", ".join(without) + ".",
            hint='Set CLOUDTASK["URL"] to the endpoint\'s full URL, e.g. '
            '"https://example.com/_tasks/". Inside a Cloud Run container CLOUDTASK["URL"] is '
            "detected when left unset; this process is not in one, so set it here. manage.py "
            "cloudtask_sync run from a laptop or CI needs it set too (e.g. from an environment "
            "variable).",
            id="cloudtask.E004",
        )
    ]


def test_immediate_backend_needs_no_url(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "URL": None}
    assert cloudtask_checks() == []


def test_invalid_default_queue(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "QUEUE": "my_queue"}
    assert cloudtask_checks() == [
        Error(
            "CLOUDTASK[\"QUEUE\"]: queue id 'my_queue' is invalid: use 1 to 100 characters from "
            "A-Z, a-z, 0-9 and '-'.",
            id="cloudtask.E005",
        )
    ]


@pytest.fixture
def broken_task() -> Iterator[Task[Any, Any]]:
    def broken(request: Any) -> None:
        pass

    t: Task[Any, Any] = Task(broken, name="api.test_checks.broken")
    registry.register(t)
    yield t
    registry.unregister(t.name)


def test_invalid_task_queue_and_name(broken_task: Task[Any, Any]) -> None:
    # Decoration already refuses these; the check also catches tasks changed after it.
    broken_task.queue = "bad.queue"
    broken_task.named = "bad name"
    assert cloudtask_checks() == [
        Error(
            "Task api.test_checks.broken: queue id 'bad.queue' is invalid: use 1 to 100 "
            "characters from A-Z, a-z, 0-9 and '-'.",
            id="cloudtask.E006",
        ),
        Error(
            "Task api.test_checks.broken: task id 'bad name' is invalid: use only A-Z, a-z, "
            "0-9, '_' and '-'.",
            id="cloudtask.E007",
        ),
    ]


def test_unauthenticated_endpoint_warns(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "SECRET": None}
    assert cloudtask_checks() == [
        Warning(
            "The cloudtask endpoint has no authentication: anyone who can reach it can run any "
            "task.",
            hint='Set CLOUDTASK["SECRET"] (HMAC body signatures) and/or '
            'CLOUDTASK["OIDC_VERIFY"] = True. Without them the endpoint refuses requests while '
            'DEBUG is off unless CLOUDTASK["ALLOW_UNAUTHENTICATED"] is True.',
            id="cloudtask.W001",
        )
    ]


@pytest.mark.parametrize("configured", [True, False])
def test_deploy_check_warns_about_the_embedded_emulator(settings: Any, configured: bool) -> None:
    # Only `check --deploy` asks: the emulator is the right default on a laptop.
    settings.CLOUDTASK = (
        {**BASE, "TRANSPORT": "emulator"}
        if configured
        else {k: v for k, v in BASE.items() if k != "TRANSPORT"}
    )
    assert cloudtask_checks() == []
    assert deploy_checks() == [
        Warning(
            f'CLOUDTASK["TRANSPORT"] is "emulator"{"" if configured else " (the default)"}: tasks '
            "go to a Cloud Tasks emulator in a local background process, with its state on this "
            "machine's disk, not to Google Cloud Tasks.",
            hint='Set CLOUDTASK["TRANSPORT"] = "cloudtasks" (with PROJECT, LOCATION and SAE) in '
            "production settings.",
            id="cloudtask.W002",
        )
    ]
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "EMULATOR": {"PERSIST": False}}
    (in_process,) = deploy_checks()
    assert "emulator in this process, and are lost when it stops, not to" in in_process.msg
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "cloudtasks"}
    assert deploy_checks() == []


def test_oidc_alone_is_authentication(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "SECRET": None, "OIDC_VERIFY": True}
    assert cloudtask_checks() == []


def test_unknown_transport(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "nosuch.module.Backend"}
    (message,) = cloudtask_checks()
    assert message.id == "cloudtask.E008"
    assert message.msg.startswith(
        'CLOUDTASK["TRANSPORT"] = \'nosuch.module.Backend\' is not "emulator", "cloudtasks", '
        '"immediate", "capture" or an importable dotted path'
    )


def test_transport_that_is_not_a_transport(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "collections.OrderedDict"}
    assert cloudtask_checks() == [
        Error(
            "CLOUDTASK[\"TRANSPORT\"] = 'collections.OrderedDict' is not a subclass of "
            "cloudtask.transports.BaseTransport.",
            hint='Use "emulator", "cloudtasks", "immediate", "capture" or a dotted path.',
            id="cloudtask.E008",
        )
    ]


def test_oidc_needs_sae_and_an_audience(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "OIDC_VERIFY": True, "SAE": None, "URL": None}
    assert ids() == ["cloudtask.E009", "cloudtask.E010"]
    assert cloudtask_checks()[0].msg == (
        'CLOUDTASK["OIDC_VERIFY"] needs CLOUDTASK["SAE"]: the service account whose tokens the '
        "endpoint accepts."
    )
    assert cloudtask_checks()[1].msg == (
        'CLOUDTASK["OIDC_VERIFY"] needs an audience: set CLOUDTASK["OIDC_AUDIENCE"] or '
        'CLOUDTASK["URL"].'
    )


def test_invalid_setting_is_reported_not_raised(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "SECRETS": "typo"}
    (message,) = cloudtask_checks()
    assert message.id == "cloudtask.E000"
    assert message.msg.startswith("Unknown CLOUDTASK key(s) 'SECRETS'; known keys: PROJECT,")


def test_the_old_backend_key_is_an_error_naming_the_new_one(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "BACKEND": "cloudtasks"}
    del settings.CLOUDTASK["TRANSPORT"]
    assert cloudtask_checks() == [
        Error(
            'CLOUDTASK["BACKEND"] was renamed CLOUDTASK["TRANSPORT"]: BACKEND now means a '
            "django.tasks backend (TASKS[...]['BACKEND']).",
            hint='Write "TRANSPORT": \'cloudtasks\' in CLOUDTASK instead of "BACKEND".',
            id="cloudtask.E011",
        )
    ]


def test_an_emulator_host_needs_no_project_location_or_sae(settings: Any) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "cloudtasks",
        "EMULATOR_HOST": "127.0.0.1:8123",
        "PROJECT": None,
        "LOCATION": None,
        "SAE": None,
    }
    assert cloudtask_checks() == []
