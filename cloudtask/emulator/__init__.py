"""An embedded Google Cloud Tasks emulator: the real gRPC API, real HTTP deliveries.

    from cloudtask.emulator import Emulator

    with Emulator(queues=["default"]) as emu:
        client = emu.client()           # google.cloud.tasks_v2.CloudTasksClient
        client.create_task(parent=emu.ensure_queue("default"), task={...})
        emu.wait_idle()

No Django import anywhere in this subpackage: it also runs on its own
(``python -m cloudtask.emulator``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TextIO, cast

import grpc
from google.cloud.tasks_v2 import CloudTasksClient
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from .clock import Clock, ManualClock, SystemClock
from .dispatcher import Dispatcher, DispatchRecord
from .oidc import CertsServer, TokenIssuer
from .server import CloudTasksService
from .state import PROJECT_ID_RE, Store, parse_queue_name

__all__ = ["Clock", "DispatchRecord", "Emulator", "ManualClock", "SystemClock"]


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = cast(TextIO, _CurrentStderr())


class Emulator:
    """A Cloud Tasks emulator serving plain-text gRPC on ``address``.

    ``queues`` are created at start (short ids go in ``project``/``location``).
    ``auto_create_queues`` makes CreateTask create a missing queue instead of NOT_FOUND.
    ``dedup_window`` is how long (seconds) a finished or deleted task's name stays taken.
    ``max_task_size`` bounds the serialized task (bytes). ``clock`` schedules everything
    (a :class:`ManualClock` makes retries deterministic). ``log`` gets one line per dispatch
    (None for silence). ``certs_port`` is the port of the OIDC certificate server (0: any).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        queues: Iterable[str] = (),
        project: str = "local-project",
        location: str = "local",
        auto_create_queues: bool = False,
        dedup_window: float = 3600.0,
        max_task_size: int = 1_048_576,
        clock: Clock | None = None,
        log: TextIO | None = _STDERR,
        oidc_issuer: str = "https://accounts.google.com",
        certs_port: int = 0,
    ) -> None:
        if not PROJECT_ID_RE.fullmatch(project):
            raise ValueError(f"Invalid project id {project!r}: use letters, digits, '-', ':', '.'")
        if dedup_window < 0:
            raise ValueError(f"dedup_window must not be negative, got {dedup_window!r}")
        if max_task_size <= 0:
            raise ValueError(f"max_task_size must be positive, got {max_task_size!r}")
        self.host = host
        self.project = project
        self.location = location
        self.oidc_issuer = oidc_issuer
        self.max_task_size = max_task_size
        self.dedup_window = dedup_window
        self._requested_port = port
        self._certs_port = certs_port
        self._initial_queues = list(queues)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.store = Store(self.clock, dedup_window=dedup_window, max_task_size=max_task_size)
        self.store.auto_create_queues = auto_create_queues
        self._log = log
        self._server: grpc.Server | None = None
        self._dispatcher: Dispatcher | None = None
        self._certs: CertsServer | None = None
        self.issuer: TokenIssuer | None = None  # the OIDC signer, made at start
        self._port: int | None = None
        self._client: CloudTasksClient | None = None
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        self._records: list[DispatchRecord] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Emulator:
        with self._lock:
            if self._server is not None:
                raise RuntimeError("This emulator is already running")
            issuer = TokenIssuer(self.oidc_issuer)
            dispatcher = Dispatcher(self.store, issuer, self._log, self._records)
            service = CloudTasksService(self.store, dispatcher)
            server = grpc.server(
                ThreadPoolExecutor(max_workers=16, thread_name_prefix="cloudtask-emulator-rpc"),
                handlers=(service.handler(),),
                # gRPC's 4 MB default would refuse a task the size limit allows.
                options=[
                    # Refuse a port another server holds instead of sharing it silently.
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_receive_message_length", max(4 << 20, self.max_task_size + 65536)),
                    ("grpc.max_send_message_length", max(4 << 20, self.max_task_size + 65536)),
                ],
            )
            try:
                port = server.add_insecure_port(f"{_bracket(self.host)}:{self._requested_port}")
            except RuntimeError as exc:  # grpcio reports a failed bind this way
                port = 0
                cause: Exception | None = exc
            else:
                cause = None
            if port == 0:
                raise OSError(
                    f"The Cloud Tasks emulator cannot listen on {self.host}:{self._requested_port} "
                    "(port in use?): choose another port, or 0 for any free one"
                ) from cause
            certs = CertsServer(issuer, self.host, self._certs_port)
            for queue in self._initial_queues:
                self.ensure_queue(queue)
            dispatcher.start()
            certs.start()
            server.start()
            self.issuer = issuer
            self._dispatcher, self._server, self._certs, self._port = (
                dispatcher,
                server,
                certs,
                port,
            )
            return self

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            server, dispatcher, certs = self._server, self._dispatcher, self._certs
            self._server = self._dispatcher = self._certs = None
            channel, self._channel, self._client = self._channel, None, None
        if server is None:
            return
        if channel is not None:
            channel.close()
        server.stop(grace).wait()
        if certs is not None:
            certs.stop()
        if dispatcher is not None:
            dispatcher.stop(grace)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- addresses and client ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The emulator is not started: call start() first")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` of the plain-text gRPC server."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def certs_url(self) -> str:
        """URL of the JSON ``{kid: PEM certificate}`` that verifies the OIDC tokens."""
        if self._certs is None:
            raise RuntimeError("The emulator is not started: call start() first")
        return f"http://{_bracket(self.host)}:{self._certs.port}/certs"

    def client(self) -> CloudTasksClient:
        """A CloudTasksClient talking plain gRPC to this emulator (one per emulator, reused)."""
        with self._lock:
            if self._client is None:
                self._channel = grpc.insecure_channel(self.address)
                self._client = CloudTasksClient(
                    transport=CloudTasksGrpcTransport(channel=self._channel)
                )
            return self._client

    # -- helpers ----------------------------------------------------------------------------

    def queue_path(
        self, queue: str, *, project: str | None = None, location: str | None = None
    ) -> str:
        if "/" in queue:
            parse_queue_name(queue)
            return queue
        name = (
            f"projects/{project or self.project}/locations/{location or self.location}"
            f"/queues/{queue}"
        )
        parse_queue_name(name)
        return name

    def ensure_queue(
        self, queue_id: str, *, project: str | None = None, location: str | None = None
    ) -> str:
        """Create the queue (with Google's defaults) unless it exists; returns its full name."""
        name = self.queue_path(queue_id, project=project, location=location)
        self.store.ensure_queue(name)
        return name

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no task is in flight or waiting in a running queue; False on timeout.

        Tasks scheduled in the future (or waiting for a retry) count as waiting.
        """
        deadline = time.monotonic() + timeout
        with self.store.cond:
            while not self.store.idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.store.cond.wait(remaining)
            return True

    @property
    def dispatches(self) -> list[DispatchRecord]:
        """Delivery attempts so far, oldest first (a copy; the most recent 100,000)."""
        with self.store.cond:
            return list(self._records)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
