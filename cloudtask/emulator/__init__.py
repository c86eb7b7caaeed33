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

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, cast

import grpc
from google.cloud.tasks_v2 import CloudTasksClient
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

if TYPE_CHECKING:
    from google.cloud.scheduler_v1 import CloudSchedulerClient

from . import cron
from .clock import Clock, ManualClock, SystemClock
from .cron import HAVE_SCHEDULER
from .dashboard import Dashboard
from .dispatcher import Dispatcher, DispatchRecord
from .idle import ActivityInterceptor, IdleWatch
from .log import write_line
from .oidc import CertsServer, TokenIssuer
from .persist import StateFile
from .scheduler import CloudSchedulerService, Scheduler
from .server import CloudTasksService
from .state import PROJECT_ID_RE, ApiError, Store, parse_queue_name

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
    ``dashboard`` serves a web page of queues, tasks and dispatches on loopback, at
    :attr:`dashboard_url` (``dashboard_port``; 0: any free port).
    ``state_path`` keeps queues, tasks and tombstones in that JSON file across restarts.
    ``hold_unreachable`` keeps a task whose target refuses connections (the site is down) without
    counting attempts, until it answers. ``idle_timeout`` stops the emulator after that many
    seconds with no RPC and no task held (tasks held for an unreachable site do not count when
    they are kept in ``state_path``).
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
        dashboard: bool = True,
        dashboard_port: int = 0,
        state_path: str | os.PathLike[str] | None = None,
        hold_unreachable: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        if not PROJECT_ID_RE.fullmatch(project):
            raise ValueError(f"Invalid project id {project!r}: use letters, digits, '-', ':', '.'")
        if dedup_window < 0:
            raise ValueError(f"dedup_window must not be negative, got {dedup_window!r}")
        if max_task_size <= 0:
            raise ValueError(f"max_task_size must be positive, got {max_task_size!r}")
        if not 0 <= dashboard_port <= 65535:
            raise ValueError(f"dashboard_port must be 0 to 65535, got {dashboard_port!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive seconds or None, got {idle_timeout!r}")
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
        #: The Cloud Scheduler service's jobs (None without google-cloud-scheduler, or stopped).
        self.scheduler: Scheduler | None = None
        self._scheduler_client: CloudSchedulerClient | None = None
        self._dashboard_port = dashboard_port if dashboard else None
        self._dashboard: Dashboard | None = None
        self.state_path = os.fspath(state_path) if state_path is not None else None
        self.hold_unreachable = hold_unreachable
        self.idle_timeout = idle_timeout
        self._state: StateFile | None = None
        self._state_loaded = False
        # Cloud Scheduler jobs kept across stop() and start() (and loaded from the state file).
        self._jobs: list[dict[str, Any]] = []
        self._idle: IdleWatch | None = None
        #: Called (from the idle watcher's thread) right before the emulator stops itself after
        #: idle_timeout: serve() unpublishes the emulator's address there.
        self.before_idle_stop: Callable[[], None] | None = None
        self._stopped = threading.Event()
        self._stopped.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Emulator:
        with self._lock:
            if self._server is not None:
                raise RuntimeError("This emulator is already running")
            issuer = TokenIssuer(self.oidc_issuer)
            dispatcher = Dispatcher(
                self.store, issuer, self._log, self._records, hold_unreachable=self.hold_unreachable
            )
            service = CloudTasksService(self.store, dispatcher)
            handlers = [service.handler()]
            # Cloud Scheduler on the same port, when its client (the optional extra) is installed.
            scheduler = Scheduler(self.clock, issuer, self._log) if HAVE_SCHEDULER else None
            if scheduler is not None:
                handlers.append(CloudSchedulerService(scheduler).handler())
            # What may fail comes before any port is bound, so a failed start holds none.
            state = self._open_state(scheduler)
            if scheduler is not None:
                # The jobs of the state file, or of this emulator before it was stopped.
                self._restore_jobs(scheduler)
            for queue in self._initial_queues:
                self.ensure_queue(queue)
            if state is not None:
                state.start()  # makes its directory, which may fail: no port is bound yet
            activity = ActivityInterceptor()  # for idle_timeout
            try:
                certs = CertsServer(issuer, self.host, self._certs_port)
                try:
                    # Last: grpcio frees a port bound by a server that never started only
                    # when it is started and stopped.
                    server, port = self._bind(handlers, activity)
                except BaseException:
                    certs.stop()  # never served: closes its socket
                    raise
            except BaseException:
                if state is not None:
                    # The bind error is the one to report, not a failed final save after it.
                    with contextlib.suppress(Exception):
                        state.stop()
                raise
            dispatcher.start()
            if scheduler is not None:
                scheduler.start()
            certs.start()
            server.start()
            if self.idle_timeout is not None:
                self._idle = IdleWatch(self.idle_timeout, activity, self._busy, self._idle_stop)
                self._idle.start()
            self._state = state
            self._stopped.clear()
            self.issuer = issuer
            self.scheduler = scheduler
            self._dispatcher, self._server, self._certs, self._port = (
                dispatcher,
                server,
                certs,
                port,
            )
        if self._dashboard_port is not None:
            self._start_dashboard(self._dashboard_port)
        return self

    def _bind(
        self, handlers: list[grpc.GenericRpcHandler], activity: ActivityInterceptor
    ) -> tuple[grpc.Server, int]:
        """The gRPC server (not started) and the port it is bound to."""
        server = grpc.server(
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="cloudtask-emulator-rpc"),
            interceptors=(activity,),
            handlers=handlers,
            options=[
                # Refuse a port another server holds instead of sharing it silently.
                ("grpc.so_reuseport", 0),
                # gRPC's 4 MB default would refuse a task the size limit allows.
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
        return server, port

    def _restore_jobs(self, scheduler: Scheduler) -> None:
        """Put the kept jobs back one by one: a bad one (a state file edited by hand, or
        written by another version) is dropped with a log line, and the rest still run."""
        kept = []
        for item in self._jobs:
            try:
                scheduler.restore_job(item)
            except Exception as exc:  # whatever is wrong with it, the others still run
                name = item.get("job", {}).get("name") if isinstance(item, dict) else None
                reason = exc.message if isinstance(exc, ApiError) else str(exc)
                self._write(
                    f"[cloudtask emulator] dropped Cloud Scheduler job {name or item!r} of "
                    f"{self.state_path or 'the last run'}: {exc.__class__.__name__}: {reason}"
                )
            else:
                kept.append(item)
        self._jobs = kept

    def _write(self, line: str) -> None:
        write_line(self._log, line)

    def _start_dashboard(self, port: int) -> None:
        # Loopback only, whatever host gRPC binds: the dashboard pauses, purges and runs tasks.
        dashboard = Dashboard(
            self.store,
            self._records,
            self.client,
            grpc_address=self.address,
            host="::1" if ":" in self.host else "127.0.0.1",
            port=port,
        )
        try:
            dashboard.start()
        except OSError:
            self.stop()
            raise
        with self._lock:
            self._dashboard = dashboard

    def _open_state(self, scheduler: Scheduler | None) -> StateFile | None:
        """The state file, loaded into the store at the first start (later starts keep the
        store as it is)."""
        if self.state_path is None:
            return None
        state = StateFile(self.store, self.state_path, self._log, scheduler)
        if not self._state_loaded:
            state.load()
            self._jobs = state.jobs
            self._state_loaded = True
        return state

    def _busy(self) -> int:
        """Tasks that keep an emulator with idle_timeout running. One held for a site that
        refuses connections does not when it is kept in the state file: the site, once up,
        starts the emulator again (cloudtask's keep_up), which delivers it."""
        if self.state_path is None:
            return self.pending()  # stopping would lose it
        return self.store.pending(held=False)

    def _idle_stop(self) -> None:
        self._write(
            f"[cloudtask emulator] no call and no task for {self.idle_timeout:g} s: stopping"
        )
        if self.before_idle_stop is not None:
            self.before_idle_stop()
        self.stop()

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            server, dispatcher, certs = self._server, self._dispatcher, self._certs
            self._server = self._dispatcher = self._certs = None
            channel, self._channel, self._client = self._channel, None, None
            scheduler, self.scheduler, self._scheduler_client = self.scheduler, None, None
            dashboard, self._dashboard = self._dashboard, None
            state, idle, self._state, self._idle = self._state, self._idle, None, None
        if idle is not None:
            idle.cancel()
        if dashboard is not None:
            dashboard.stop()  # first: its buttons call the gRPC server
        if server is None:
            self._stopped.wait()  # another thread is stopping it (idle_timeout): wait for that
            return
        try:
            if channel is not None:
                channel.close()
            server.stop(grace).wait()
            if certs is not None:
                certs.stop()
            if dispatcher is not None:
                dispatcher.stop(grace)
            if scheduler is not None:
                scheduler.stop(grace)
                self._jobs = scheduler.snapshot()
        finally:
            try:
                if state is not None:
                    state.stop()  # last: the final state has every RPC and delivery result
            finally:
                # Even when the last save failed (a full disk): whoever waits for the stop
                # must not wait forever.
                self._stopped.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the emulator is stopped (by stop(), or by itself after idle_timeout);
        False on timeout. True at once if it is not running."""
        return self._stopped.wait(timeout)

    def save(self) -> None:
        """Write the state file now (no-op without state_path, or when stopped: stop() saved)."""
        state = self._state
        if state is not None:
            state.save(force=True)

    def pending(self) -> int:
        """Tasks held in all queues (paused ones too): scheduled, waiting to retry, in flight."""
        return self.store.pending()

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

    @property
    def dashboard_url(self) -> str:
        """URL of the web dashboard, such as ``http://127.0.0.1:8125/``."""
        if self._dashboard is None:
            if self._dashboard_port is None:
                raise RuntimeError(
                    "This emulator has no dashboard: it was made with dashboard=False"
                )
            raise RuntimeError("The emulator is not started: call start() first")
        return self._dashboard.url

    def client(self) -> CloudTasksClient:
        """A CloudTasksClient talking plain gRPC to this emulator (one per emulator, reused)."""
        with self._lock:
            if self._client is None:
                self._client = CloudTasksClient(
                    transport=CloudTasksGrpcTransport(channel=self._grpc_channel())
                )
            return self._client

    def scheduler_client(self) -> CloudSchedulerClient:
        """A google.cloud.scheduler_v1 CloudSchedulerClient talking plain gRPC to this emulator's
        Cloud Scheduler service (one per emulator, reused; needs google-cloud-scheduler)."""
        if not HAVE_SCHEDULER:
            raise RuntimeError(
                f"The Cloud Scheduler client is not installed: pip install '{cron.EXTRA}'"
            )
        with self._lock:
            if self._scheduler_client is None:
                self._scheduler_client = cron.scheduler_v1.CloudSchedulerClient(
                    transport=cron.CloudSchedulerGrpcTransport(channel=self._grpc_channel())
                )
            return self._scheduler_client

    @property
    def location_path(self) -> str:
        """``projects/PROJECT/locations/LOCATION``: the parent of this emulator's jobs."""
        return f"projects/{self.project}/locations/{self.location}"

    def _grpc_channel(self) -> grpc.Channel:
        """The one plain-text channel both clients share (under self._lock)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

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
