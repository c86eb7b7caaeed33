"""Fixtures for Cloud Run detection: a fake metadata server on loopback, and a Cloud Run
environment pointing at it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings as django_settings

from cloudtask import conf

PROJECT_NUMBER = "123"
REGION = "europe-west6"
#: What Cloud Run answers for a service running as Compute Engine's default account.
METADATA = {
    "project/project-id": "meta-project",
    "project/numeric-project-id": PROJECT_NUMBER,
    "instance/region": f"projects/{PROJECT_NUMBER}/regions/{REGION}",
    "instance/service-accounts/default/email": (
        f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
    ),
}
#: The test settings without the four values detection fills.
UNSET = {
    **django_settings.CLOUDTASK,
    "PROJECT": None,
    "LOCATION": None,
    "SAE": None,
    "URL": None,
}
#: Everything that makes a process a Cloud Run container or names a project or metadata host.
CLOUD_VARIABLES = (
    "K_SERVICE",
    "K_REVISION",
    "K_CONFIGURATION",
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CORE_PROJECT",
    "GCE_METADATA_HOST",
    "GCE_METADATA_ROOT",
    "KUBERNETES_SERVICE_HOST",
)


class FakeMetadataServer:
    """The metadata server's contract on 127.0.0.1: GET /computeMetadata/v1/<path> answers the
    value with ``Metadata-Flavor: Google``, only to requests that send that header (else 403);
    unknown paths are 404. ``flavor=False`` plays an impostor that never sends the header.
    ``cut`` requests are answered by closing the connection without a word (a server still
    starting); set it to make the next ones fail. Every request is counted in ``requests``
    (paths)."""

    def __init__(self, values: dict[str, str], *, flavor: bool = True, cut: int = 0) -> None:
        self.values = dict(values)
        self.flavor = flavor
        self.cut = cut
        self.requests: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append(self.path.removeprefix("/computeMetadata/v1/"))
                    cut = fake.cut > 0
                    fake.cut -= cut
                if cut:
                    self.close_connection = True
                    return  # no status line: the client sees the connection closed
                value = fake.values.get(self.path.removeprefix("/computeMetadata/v1/"))
                if self.headers.get("Metadata-Flavor") != "Google":
                    status, body = 403, b"Missing Metadata-Flavor header"
                elif value is None:
                    status, body = 404, b"Not found"
                else:
                    status, body = 200, value.encode()
                self.send_response(status)
                if fake.flavor:
                    self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeMetadataServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class SilentServer:
    """Accepts connections and never answers: a metadata server that hangs. Counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the blocked accept() (close() alone does not on Linux).
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()
        for conn in self.connections:
            conn.close()


class CloudRunEnvironment:
    """The environment variables of a Cloud Run container, set for one test."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.mp = mp

    def service(self, metadata_host: str, name: str = "svc", **variables: str) -> None:
        self.set(
            K_SERVICE=name,
            K_REVISION=f"{name}-00001-abc",
            K_CONFIGURATION=name,
            GCE_METADATA_HOST=metadata_host,
            **variables,
        )

    def job(self, metadata_host: str, name: str = "nightly", **variables: str) -> None:
        self.set(
            CLOUD_RUN_JOB=name,
            CLOUD_RUN_EXECUTION=f"{name}-x7k2p",
            GCE_METADATA_HOST=metadata_host,
            **variables,
        )

    def set(self, **variables: str) -> None:
        for name, value in variables.items():
            self.mp.setenv(name, value)
        # Detection reads the environment once per process: look again.
        conf.reset()


@pytest.fixture
def environment() -> Iterator[CloudRunEnvironment]:
    """No Cloud Run variable at first (whatever the shell running the tests has); afterwards
    the real environment again, and detection forgotten, so no later test sees this one's."""
    with pytest.MonkeyPatch.context() as mp:
        for name in CLOUD_VARIABLES:
            mp.delenv(name, raising=False)
        conf.reset()
        yield CloudRunEnvironment(mp)
    conf.reset()


@pytest.fixture
def metadata() -> Iterator[FakeMetadataServer]:
    with FakeMetadataServer(METADATA) as server:
        yield server


@pytest.fixture
def cloud_settings(environment: CloudRunEnvironment, settings: Any) -> Any:
    """pytest-django's settings, with CLOUDTASK's PROJECT, LOCATION, SAE and URL unset. After
    environment, so the settings are restored before the environment is."""
    settings.CLOUDTASK = dict(UNSET)
    return settings
