"""On Cloud Run, unset PROJECT, LOCATION, SAE and URL are detected from the environment and the
metadata server (a real HTTP server on loopback here), and the checks say what was found."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver

from cloudtask.cloudrun import FAILURE_TTL, PROJECT_VARIABLES, DetectionError
from cloudtask.conf import get_settings
from tests.api.test_checks import cloudtask_checks
from tests.tasks import add

from .conftest import (
    METADATA,
    UNSET,
    CloudRunEnvironment,
    FakeMetadataServer,
    SilentServer,
)

#: ROOT_URLCONF for the test whose site does not include cloudtask.urls.
urlpatterns: list[URLPattern | URLResolver] = []

SERVICE_URL = "https://svc-123.europe-west6.run.app"
COMPUTE_SA = "123-compute@developer.gserviceaccount.com"


def messages() -> list[tuple[str, str]]:
    return [(m.id, m.msg) for m in cloudtask_checks()]


def test_all_four_are_detected_and_looked_up_once(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host)
    s = get_settings()

    assert (s.project, s.location, s.sae, s.url) == (
        "meta-project",
        "europe-west6",
        COMPUTE_SA,
        f"{SERVICE_URL}/_tasks/",
    )
    # instance/region serves both LOCATION and URL; nothing is asked twice, not even by the
    # checks, which build settings of their own.
    cloudtask_checks()
    assert sorted(metadata.requests) == sorted(METADATA)


def test_nothing_is_looked_up_before_it_is_needed(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host)
    s = get_settings()
    assert metadata.requests == []

    assert s.sae == COMPUTE_SA
    assert metadata.requests == ["instance/service-accounts/default/email"]


def test_explicit_settings_win_and_ask_nothing(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host, GOOGLE_CLOUD_PROJECT="env-project")
    cloud_settings.CLOUDTASK = {
        **UNSET,
        "TRANSPORT": "cloudtasks",
        "PROJECT": "my-project",
        "LOCATION": "us-central1",
        "SAE": "tasks@my-project.iam.gserviceaccount.com",
        "URL": "https://shop.example.com/_tasks/",
    }
    s = get_settings()

    assert (s.project, s.location, s.sae, s.url) == (
        "my-project",
        "us-central1",
        "tasks@my-project.iam.gserviceaccount.com",
        "https://shop.example.com/_tasks/",
    )
    assert messages() == []  # nothing detected: no I001
    assert metadata.requests == []


def test_the_url_is_in_the_services_region_not_the_queues(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host)
    cloud_settings.CLOUDTASK = {**UNSET, "LOCATION": "us-central1"}

    assert get_settings().url == f"{SERVICE_URL}/_tasks/"
    assert get_settings().location == "us-central1"


def test_the_url_path_is_where_the_urlconf_includes_the_endpoint(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host)
    cloud_settings.ROOT_URLCONF = "tests.cloudrun.urls"

    assert get_settings().url == f"{SERVICE_URL}/queue/in/"


@pytest.mark.parametrize("variable", PROJECT_VARIABLES)
def test_a_project_in_the_environment_wins_over_the_metadata_server(
    environment: CloudRunEnvironment,
    metadata: FakeMetadataServer,
    cloud_settings: Any,
    variable: str,
) -> None:
    environment.service(metadata.host, **{variable: "env-project"})

    assert get_settings().project == "env-project"
    assert metadata.requests == []


def test_google_cloud_project_comes_first(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(
        metadata.host,
        GOOGLE_CLOUD_PROJECT="first",
        GCLOUD_PROJECT="second",
        CLOUDSDK_CORE_PROJECT="third",
    )

    assert get_settings().project == "first"


@pytest.mark.parametrize(
    "variables",
    [
        {},
        # Half a Cloud Run environment (a variable copied into a laptop's shell) is not one.
        {"K_SERVICE": "svc"},
        {"GOOGLE_CLOUD_PROJECT": "env-project"},
        # Knative on Kubernetes sets the same three K_* variables; Kubernetes adds its own.
        {
            "K_SERVICE": "svc",
            "K_REVISION": "svc-00001-abc",
            "K_CONFIGURATION": "svc",
            "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        },
    ],
    ids=["nothing", "K_SERVICE alone", "GOOGLE_CLOUD_PROJECT", "Knative on Kubernetes"],
)
def test_off_cloud_run_nothing_is_detected_and_no_metadata_server_is_asked(
    environment: CloudRunEnvironment,
    metadata: FakeMetadataServer,
    cloud_settings: Any,
    variables: dict[str, str],
) -> None:
    environment.set(GCE_METADATA_HOST=metadata.host, **variables)
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "cloudtasks"}
    s = get_settings()

    assert (s.project, s.location, s.sae, s.url) == (None, None, None, None)
    assert [m[0] for m in messages()] == [
        "cloudtask.E001",
        "cloudtask.E002",
        "cloudtask.E003",
        "cloudtask.E004",
    ]
    assert metadata.requests == []


def test_a_metadata_server_that_never_answers_is_an_error_naming_each_setting(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "cloudtasks"}
    with SilentServer() as silent:
        environment.service(silent.host)
        reason = f"no metadata server answered at http://{silent.host}/computeMetadata/v1/ "
        reason += "(timed out; 3 attempts, asked again after 30 s)"

        # Sending fails at once, saying what to set (the task has no url= of its own).
        with pytest.raises(DetectionError) as raised:
            add(a=1, b=2).delay()
        assert str(raised.value) == (
            'CLOUDTASK["URL"] is not set and could not be detected on Cloud Run: '
            f'{reason}. Set CLOUDTASK["URL"].'
        )
        assert messages() == [
            (
                "cloudtask.E020",
                f'CLOUDTASK["{key}"] is not set and could not be detected on Cloud Run: '
                f'{reason}. Set CLOUDTASK["{key}"].',
            )
            for key in ("PROJECT", "LOCATION", "SAE")
        ] + [
            (
                "cloudtask.E021",
                'CLOUDTASK["URL"] is not set and could not be detected on Cloud Run: '
                f'{reason}. Set CLOUDTASK["URL"].',
            )
        ]
        # One lookup of three attempts, not one per value (nor one per task sent later).
        assert len(silent.connections) == 3


def test_a_metadata_server_that_fails_once_at_a_cold_start_is_asked_again(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    with FakeMetadataServer(METADATA, cut=1) as metadata:
        environment.service(metadata.host)

        assert get_settings().sae == COMPUTE_SA
        assert metadata.requests == ["instance/service-accounts/default/email"] * 2


def test_a_network_failure_is_remembered_for_a_while_not_for_the_process_life(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "capture"}
    with FakeMetadataServer(METADATA, cut=3) as metadata:
        environment.service(metadata.host)
        cloud_run = get_settings().cloud_run
        assert cloud_run is not None
        now = [1000.0]
        cloud_run.clock = lambda: now[0]

        with pytest.raises(DetectionError, match="no metadata server answered"):
            add(a=1, b=2).delay()
        assert len(metadata.requests) == 3  # every attempt cut
        # Within FAILURE_TTL every send fails at once, without asking again.
        now[0] += FAILURE_TTL - 1
        with pytest.raises(DetectionError, match="no metadata server answered"):
            add(a=1, b=2).delay()
        assert len(metadata.requests) == 3

        now[0] += 1
        handle = add(a=1, b=2).delay()

    assert handle.task_id
    assert get_settings().url == f"{SERVICE_URL}/_tasks/"


def test_an_http_error_of_the_metadata_server_is_a_definitive_answer(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    values = {k: v for k, v in METADATA.items() if k != "instance/region"}
    with FakeMetadataServer(values) as metadata:
        environment.service(metadata.host)
        cloud_run = get_settings().cloud_run
        assert cloud_run is not None
        now = [1000.0]
        cloud_run.clock = lambda: now[0]

        for _ in range(2):
            detection = get_settings().detections()["LOCATION"]
            assert isinstance(detection, DetectionError)
            assert "instance/region with HTTP 404" in str(detection)
            now[0] += 10 * FAILURE_TTL
        assert metadata.requests.count("instance/region") == 1


def test_a_server_without_the_metadata_flavor_header_is_refused(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    with FakeMetadataServer(METADATA, flavor=False) as impostor:
        environment.service(impostor.host)

        cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "capture"}

        with pytest.raises(DetectionError) as raised:
            add(a=1, b=2).delay()
        assert str(raised.value) == (
            'CLOUDTASK["URL"] is not set and could not be detected on Cloud Run: '
            f"http://{impostor.host}/computeMetadata/v1/project/numeric-project-id answered "
            "without the header Metadata-Flavor: Google, so it is not a metadata server. "
            'Set CLOUDTASK["URL"].'
        )
        # Nothing else it might say is trusted either, and it is not asked again.
        detections = get_settings().detections()
        assert sorted(detections) == ["LOCATION", "PROJECT", "SAE", "URL"]
        for detection in detections.values():
            assert isinstance(detection, DetectionError)
            assert "not a metadata server" in str(detection)
        assert impostor.requests == ["project/numeric-project-id"]


def test_the_info_check_says_what_was_detected_and_from_where(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host, GOOGLE_CLOUD_PROJECT="p")
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "cloudtasks"}

    assert messages() == [
        (
            "cloudtask.I001",
            "Detected on Cloud Run: PROJECT='p' (GOOGLE_CLOUD_PROJECT), "
            "LOCATION='europe-west6' (metadata server), "
            "SAE='123-compute@developer.gserviceaccount.com' (metadata server), "
            "URL='https://svc-123.europe-west6.run.app/_tasks/' (K_SERVICE)",
        ),
        (
            "cloudtask.W006",
            "Tasks carry OIDC tokens of 123-compute@developer.gserviceaccount.com, the Compute "
            "Engine default service account this Cloud Run service runs as (detected): whoever "
            "may act as it may call the endpoint, and it usually holds the project-wide Editor "
            "role.",
        ),
    ]


def test_a_dedicated_service_account_draws_no_warning(
    environment: CloudRunEnvironment, cloud_settings: Any
) -> None:
    dedicated = "shop-runtime@p.iam.gserviceaccount.com"
    values = {**METADATA, "instance/service-accounts/default/email": dedicated}
    with FakeMetadataServer(values) as metadata:
        environment.service(metadata.host)
        cloud_settings.CLOUDTASK = {**UNSET, "PROJECT": "p", "LOCATION": "europe-west6"}

        assert messages() == [
            (
                "cloudtask.I001",
                f"Detected on Cloud Run: SAE={dedicated!r} (metadata server), "
                f"URL='{SERVICE_URL}/_tasks/' (K_SERVICE)",
            )
        ]


def test_a_job_detects_everything_but_a_url(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.job(metadata.host)
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "cloudtasks", "SAE": "tasks@p.iam.x"}

    assert messages() == [
        (
            "cloudtask.I001",
            "Detected on Cloud Run: PROJECT='meta-project' (metadata server), "
            "LOCATION='europe-west6' (metadata server)",
        ),
        (
            "cloudtask.E021",
            'CLOUDTASK["URL"] is not set and could not be detected on Cloud Run: a Cloud Run '
            "job (CLOUD_RUN_JOB='nightly') serves no URL of its own. Set CLOUDTASK[\"URL\"] to "
            "the endpoint of the service that runs the tasks.",
        ),
    ]


def test_a_site_without_the_endpoint_cannot_have_its_url_detected(
    environment: CloudRunEnvironment, metadata: FakeMetadataServer, cloud_settings: Any
) -> None:
    environment.service(metadata.host)
    cloud_settings.ROOT_URLCONF = __name__
    cloud_settings.CLOUDTASK = {**UNSET, "TRANSPORT": "capture"}

    with pytest.raises(DetectionError) as raised:
        add(a=1, b=2).delay()
    assert str(raised.value).startswith(
        'CLOUDTASK["URL"] is not set and could not be detected on Cloud Run: cloudtask\'s '
        "endpoint ('cloudtask:endpoint') is not in the URLconf (include(\"cloudtask.urls\")): "
    )
    assert str(raised.value).endswith(
        f'Set CLOUDTASK["URL"] to its full URL, e.g. "{SERVICE_URL}/_tasks/".'
    )
