"""Traps: include("cloudtask.urls") forgotten, or CLOUDTASK["URL"] pointing beside the endpoint.

Checks cloudtask.E013 and E014, through Django's check framework as `manage.py check` runs them.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error, run_checks

from tests.api.conftest import BASE

WITHOUT = "tests.traps.urls_without_endpoint"


def endpoint_checks() -> list[Any]:
    return [
        m for m in run_checks(tags=["cloudtask"]) if m.id in ("cloudtask.E013", "cloudtask.E014")
    ]


def test_the_readme_setup_passes(settings: Any) -> None:
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": "http://127.0.0.1:8000/_tasks/"}
    assert endpoint_checks() == []


def test_forgotten_include(settings: Any) -> None:
    settings.ROOT_URLCONF = WITHOUT
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": "http://127.0.0.1:8000/jobs/"}
    assert endpoint_checks() == [
        Error(
            f"cloudtask's endpoint is not in the URLconf {WITHOUT!r}, but "
            "CLOUDTASK[\"URL\"] = 'http://127.0.0.1:8000/jobs/' is this site: every task "
            "delivery would be answered 404.",
            hint=f'Add path("jobs/", include("cloudtask.urls")) to urlpatterns in {WITHOUT}.',
            id="cloudtask.E014",
        )
    ]


def test_forgotten_include_with_the_immediate_transport(settings: Any) -> None:
    # The immediate transport delivers through this site's URLconf wherever URL points.
    settings.ROOT_URLCONF = WITHOUT
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "immediate", "URL": "https://w.example.com/t/"}
    assert endpoint_checks() == [
        Error(
            f'cloudtask\'s endpoint is not in the URLconf {WITHOUT!r}, but the "immediate" '
            "transport delivers tasks in this process: every task delivery would be answered "
            "404.",
            hint=f'Add path("_tasks/", include("cloudtask.urls")) to urlpatterns in {WITHOUT}.',
            id="cloudtask.E014",
        )
    ]


def test_tasks_sent_to_another_service_need_no_endpoint_here(settings: Any) -> None:
    # ALLOWED_HOSTS = ["*"] (the test settings) does not make every host this site's.
    settings.ROOT_URLCONF = WITHOUT
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": "https://w.example.com/t/"}
    assert endpoint_checks() == []


@pytest.mark.parametrize(
    ("url", "allowed_hosts"),
    [
        ("https://mailer-123.europe-west6.run.app/_tasks/", [".run.app"]),
        ("https://mailer-123.europe-west6.run.app/jobs/", [".run.app"]),
        ("https://jobs.example.com/t/", ["shop.example.com", ".example.com"]),
    ],
)
def test_a_domain_pattern_in_allowed_hosts_is_not_this_site(
    settings: Any, url: str, allowed_hosts: list[str]
) -> None:
    # ".run.app" (common on Cloud Run) admits every service's run.app host: a URL under it
    # may be another service's, so these errors, which stop migrate and runserver, stay quiet.
    settings.ALLOWED_HOSTS = allowed_hosts
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": url}
    assert endpoint_checks() == []
    settings.ROOT_URLCONF = WITHOUT
    assert endpoint_checks() == []


@pytest.mark.parametrize(
    ("url", "allowed_hosts"),
    [
        ("http://127.0.0.1:8000/tasks/", ["*"]),
        ("http://localhost:8000/tasks/", []),
        ("http://testserver/tasks/", ["*"]),
        ("https://shop.example.com/tasks/", [".example.com", "shop.example.com"]),
    ],
)
def test_url_beside_the_endpoint(settings: Any, url: str, allowed_hosts: list[str]) -> None:
    settings.ALLOWED_HOSTS = allowed_hosts
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": url}
    assert endpoint_checks() == [
        Error(
            f"CLOUDTASK[\"URL\"] = {url!r} is this site, but its path '/tasks/' does not reach "
            "cloudtask's endpoint in the URLconf 'tests.urls', which serves it at '/_tasks/': "
            "every task delivery would miss it.",
            hint="Set CLOUDTASK[\"URL\"] to end in '/_tasks/', or route the path to it with "
            'path("tasks/", include("cloudtask.urls")) in tests.urls.',
            id="cloudtask.E013",
        )
    ]


def test_url_on_the_endpoint_passes(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["shop.example.com"]
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": "https://shop.example.com/_tasks/",
    }
    assert endpoint_checks() == []


def test_script_name_is_taken_off(settings: Any) -> None:
    settings.FORCE_SCRIPT_NAME = "/shop"
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": "http://localhost/shop/_tasks/"}
    assert endpoint_checks() == []
