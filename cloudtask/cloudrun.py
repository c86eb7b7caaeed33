"""On Cloud Run, find the PROJECT, LOCATION, SAE and URL a CLOUDTASK setting left unset.

Detection happens only inside a Cloud Run container (a service sets K_SERVICE, K_REVISION and
K_CONFIGURATION; a job sets CLOUD_RUN_JOB; neither sets KUBERNETES_SERVICE_HOST, which Knative on
Kubernetes sets beside the same K_* variables): anywhere else no metadata server is ever
contacted, so a laptop never waits on one. Each value comes from the first source that has it:

* PROJECT: GOOGLE_CLOUD_PROJECT, GCLOUD_PROJECT or CLOUDSDK_CORE_PROJECT, else the metadata
  server's ``project/project-id``;
* LOCATION: the region the container runs in (metadata ``instance/region``);
* SAE: the service account the container runs as (metadata
  ``instance/service-accounts/default/email``);
* URL: the service's deterministic URL ``https://{K_SERVICE}-{PROJECT_NUMBER}.{REGION}.run.app``
  plus the path of cloudtask's endpoint, reversed from the URLconf (``cloudtask:endpoint``).

Each lookup is made on first use and its answer remembered, as is a definitive failure (an HTTP
error from the metadata server, or a server that is not one). A network failure (refused, timed
out, cut) is tried again at once (METADATA_ATTEMPTS in all), then remembered for FAILURE_TTL
seconds only: a metadata server that is slow at a cold start costs a few short timeouts, not
one per task, and not the process's life. ``reset()`` forgets everything.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.urls import NoReverseMatch, reverse

from .exceptions import ConfigurationError

#: The settings detection can fill, in the order they are reported.
DETECTABLE = ("PROJECT", "LOCATION", "SAE", "URL")
#: Cloud Run sets all three in a service's containers (Knative's contract).
SERVICE_VARIABLES = ("K_SERVICE", "K_REVISION", "K_CONFIGURATION")
#: Cloud Run sets it in a job's containers.
JOB_VARIABLE = "CLOUD_RUN_JOB"
#: Kubernetes sets it in every pod, Knative services included; Cloud Run never does.
KUBERNETES_VARIABLE = "KUBERNETES_SERVICE_HOST"
#: Where Google's client libraries and the gcloud CLI read a project id, in their order.
PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
#: As google-auth: GCE_METADATA_HOST names host[:port], GCE_METADATA_ROOT is its old name.
METADATA_HOST_VARIABLES = ("GCE_METADATA_HOST", "GCE_METADATA_ROOT")
DEFAULT_METADATA_HOST = "metadata.google.internal"
#: Seconds one metadata request may take. The server is local to the container and answers in
#: milliseconds; a longer wait only delays the error.
METADATA_TIMEOUT = 1.0
#: Tries of one metadata request that fails on the network (refused, timed out, cut).
METADATA_ATTEMPTS = 3
#: Seconds between those tries: a server still starting with the container gets a moment.
METADATA_RETRY_PAUSE = 0.1
#: Seconds a network failure is remembered before the next lookup asks again.
FAILURE_TTL = 30.0
METADATA_SOURCE = "metadata server"
#: The name of cloudtask's endpoint in cloudtask/urls.py, under its app namespace.
ENDPOINT_URL_NAME = "cloudtask:endpoint"

_REGION_RE = re.compile(r"projects/[^/]+/regions/([a-z0-9-]+)")
#: No proxy, whatever HTTP_PROXY says: the metadata server is reachable only directly.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DetectionError(ConfigurationError):
    """On Cloud Run, an unset CLOUDTASK value could not be detected; the message says why and
    names the setting to set instead."""


@dataclass(frozen=True)
class Detected:
    """A detected value and where it came from (an environment variable, "metadata server")."""

    value: str
    source: str


def on_cloud_run(environ: Mapping[str, str]) -> bool:
    """Whether environ is that of a Cloud Run service or job container. The K_* variables are
    Knative's contract, which Knative on Kubernetes (GKE, ...) sets too; only there is
    KUBERNETES_SERVICE_HOST set, and that metadata server (if any) describes a node, not a
    Cloud Run service."""
    if environ.get(KUBERNETES_VARIABLE):
        return False
    return all(environ.get(name) for name in SERVICE_VARIABLES) or bool(environ.get(JOB_VARIABLE))


class _Unavailable:
    """Why a metadata lookup gave no value (remembered like a value, until ``expires``: a
    clock reading, None for a definitive answer)."""

    def __init__(self, reason: str, expires: float | None = None) -> None:
        self.reason = reason
        self.expires = expires


class CloudRun:
    """What one Cloud Run container can find out about itself; each answer is remembered.
    ``clock`` (monotonic seconds) times how long a network failure is remembered."""

    def __init__(
        self, environ: Mapping[str, str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.environ = dict(environ)
        self.clock = clock
        self.service = environ.get("K_SERVICE") or None
        self.job = environ.get(JOB_VARIABLE) or None
        host = next(
            (environ[name] for name in METADATA_HOST_VARIABLES if environ.get(name)),
            DEFAULT_METADATA_HOST,
        )
        self.metadata_root = f"http://{host}/computeMetadata/v1/"
        # Held during a request: a second thread needing the same answer waits for it instead
        # of asking again (at most METADATA_ATTEMPTS timeouts).
        self._lock = threading.Lock()
        self._answers: dict[str, str | _Unavailable] = {}
        #: Set when the server failed as a whole (unreachable, not a metadata server): every
        #: later lookup fails at once with the same reason instead of waiting again, until it
        #: expires (never, for a server that is not a metadata server).
        self._broken: _Unavailable | None = None
        self._endpoint_path: str | None = None

    def detect(self, key: str) -> Detected:
        """The detected value of CLOUDTASK[key] (one of DETECTABLE); DetectionError if none."""
        detector: dict[str, Callable[[], Detected]] = {
            "PROJECT": self.project,
            "LOCATION": self.location,
            "SAE": self.sae,
            "URL": self.url,
        }
        return detector[key]()

    def project(self) -> Detected:
        for name in PROJECT_VARIABLES:
            if value := self.environ.get(name):
                return Detected(value, name)
        return Detected(self._metadata("PROJECT", "project/project-id"), METADATA_SOURCE)

    def location(self) -> Detected:
        return Detected(self._region("LOCATION"), METADATA_SOURCE)

    def sae(self) -> Detected:
        path = "instance/service-accounts/default/email"
        return Detected(self._metadata("SAE", path), METADATA_SOURCE)

    def url(self) -> Detected:
        """The service's run.app URL of cloudtask's endpoint. The region is the one this
        container runs in, never CLOUDTASK["LOCATION"]: queues may live in another region."""
        if not self.service:
            raise self._error(
                "URL",
                f"a Cloud Run job ({JOB_VARIABLE}={self.job!r}) serves no URL of its own",
                "to the endpoint of the service that runs the tasks",
            )
        number = self._metadata("URL", "project/numeric-project-id")
        region = self._region("URL")
        base = f"https://{self.service}-{number}.{region}.run.app"
        return Detected(base + self._endpoint("URL", base), "K_SERVICE")

    def _region(self, key: str) -> str:
        value = self._metadata(key, "instance/region")
        match = _REGION_RE.fullmatch(value)
        if match is None:
            raise self._error(
                key,
                f"the metadata server's instance/region is {value!r}, not "
                '"projects/NUMBER/regions/REGION"',
            )
        return match.group(1)

    def _endpoint(self, key: str, base: str) -> str:
        # Reversed on first use, never at import: cloudtask.conf sits below the URLconf, which
        # may itself import modules that read the settings.
        if self._endpoint_path is None:
            try:
                self._endpoint_path = reverse(ENDPOINT_URL_NAME)
            except NoReverseMatch as exc:
                raise self._error(
                    key,
                    f"cloudtask's endpoint ({ENDPOINT_URL_NAME!r}) is not in the URLconf "
                    f'(include("cloudtask.urls")): {exc}',
                    f'to its full URL, e.g. "{base}/_tasks/"',
                ) from exc
        return self._endpoint_path

    def _metadata(self, key: str, path: str) -> str:
        with self._lock:
            answer = self._answers.get(path)
            if answer is None or self._expired(answer):
                answer = self._answers[path] = self._fetch(path)
        if isinstance(answer, _Unavailable):
            raise self._error(key, answer.reason)
        return answer

    def _expired(self, answer: str | _Unavailable) -> bool:
        return (
            isinstance(answer, _Unavailable)
            and answer.expires is not None
            and self.clock() >= answer.expires
        )

    def _fetch(self, path: str) -> str | _Unavailable:
        if self._broken is not None and not self._expired(self._broken):
            return self._broken
        self._broken = None
        url = self.metadata_root + path
        # S310: the scheme is http://, written in __init__, never taken from input.
        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})  # noqa: S310
        for attempt in range(1, METADATA_ATTEMPTS + 1):
            try:
                with _OPENER.open(request, timeout=METADATA_TIMEOUT) as response:
                    if response.headers.get("Metadata-Flavor") != "Google":
                        return self._not_metadata_server(url)
                    body: bytes = response.read()
            except urllib.error.HTTPError as exc:
                if exc.headers.get("Metadata-Flavor") != "Google":
                    return self._not_metadata_server(url)
                return _Unavailable(f"the metadata server answered {url} with HTTP {exc.code}")
            except (OSError, http.client.HTTPException) as exc:
                # URLError, a refused connection, a timeout and a cut connection: the server
                # may only be starting (a cold start), so it is asked again, and the failure
                # is remembered for FAILURE_TTL only.
                if attempt < METADATA_ATTEMPTS:
                    time.sleep(METADATA_RETRY_PAUSE)
                    continue
                reason = getattr(exc, "reason", exc)
                self._broken = _Unavailable(
                    f"no metadata server answered at {self.metadata_root} ({reason}; "
                    f"{METADATA_ATTEMPTS} attempts, asked again after {FAILURE_TTL:g} s)",
                    expires=self.clock() + FAILURE_TTL,
                )
                return self._broken
            value = body.decode("utf-8", "replace").strip()
            if not value:
                return _Unavailable(f"the metadata server answered {url} with an empty value")
            return value
        raise AssertionError("unreachable: the last attempt returns")

    def _not_metadata_server(self, url: str) -> _Unavailable:
        # A metadata server always sends the header: anything else at that address (a proxy, a
        # captive portal, an impostor) must not choose the project or the service account.
        self._broken = _Unavailable(
            f"{url} answered without the header Metadata-Flavor: Google, so it is not a "
            "metadata server"
        )
        return self._broken

    @staticmethod
    def _error(key: str, reason: str, fix: str = "") -> DetectionError:
        return DetectionError(
            f'CLOUDTASK["{key}"] is not set and could not be detected on Cloud Run: {reason}. '
            f'Set CLOUDTASK["{key}"]{" " + fix if fix else ""}.'
        )


_lock = threading.Lock()
_current: CloudRun | None = None
_looked = False


def current() -> CloudRun | None:
    """This process's Cloud Run container (made from os.environ once), or None elsewhere."""
    global _current, _looked
    with _lock:
        if not _looked:
            _current = CloudRun(os.environ) if on_cloud_run(os.environ) else None
            _looked = True
        return _current


def reset() -> None:
    """Forget the environment and every lookup: the next current() looks again."""
    global _current, _looked
    with _lock:
        _current, _looked = None, False
