"""The zero-config default: a local Cloud Tasks emulator, shared by the project's processes.

Tasks go through the real google-cloud-tasks client (the cloudtasks transport's code) over gRPC to
cloudtask.emulator, which POSTs them to CLOUDTASK["URL"] like Cloud Tasks would: the same
signatures, OIDC tokens, retries and named-task dedup as production, on a laptop.

With CLOUDTASK["EMULATOR"]["PERSIST"] (the default) the emulator is one background process per
project (``python -m cloudtask.emulator --state-dir DIR``), started by the first process that
needs it and found again by every later one through DIR/emulator.json. Its tasks live in
DIR/state.json, so a task scheduled from a shell that has exited, or waiting for a retry while
runserver reloads, is still delivered. With PERSIST False the emulator runs inside this process,
as before, and its undelivered tasks die with it (said on stderr at exit).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core import mail
from django.core.signals import request_started
from django.dispatch import Signal
from google.api_core import exceptions as api_exceptions

from ..conf import CloudTaskSettings
from ..emulator import Emulator
from ..emulator.persist import (
    EXIT_ALREADY_RUNNING,
    LOG_FILE,
    PRIVATE_FILE,
    daemon_command,
    locked,
    make_state_dir,
    read_running,
)
from ..exceptions import ConfigurationError, EnqueueError
from . import get_transport
from .base import EnqueuedTask, TaskMessage
from .cloudtasks import CloudTasksTransport

__all__ = [
    "EmulatorTransport",
    "LocalEmulator",
    "emulator_connected",
    "find_running",
    "keep_up",
    "keep_up_while_serving",
    "state_dir",
]

#: Sent once per process and emulator, right after the transport first connects to the shared
#: background emulator (or starts the in-process one), and again after it had to start a dead
#: one anew: kwargs ``address`` (gRPC host:port), ``project``, ``location``. Receivers run before
#: the first task goes out, and an exception from one propagates to the sender, so a bad
#: configuration they apply (queues, schedules) is loud.
emulator_connected = Signal()

logger = logging.getLogger("cloudtask.emulator")

#: Seconds a process waits for the background emulator it started to listen.
START_TIMEOUT = 10.0
#: A log larger than this (bytes) is kept as emulator.log.1 when a background emulator starts,
#: so the log of a project's emulator does not grow forever.
MAX_LOG_SIZE = 5 * 1024 * 1024
#: Times it starts one again after the one it started found the directory held by a process
#: that then let go of it without serving it.
MAX_RESPAWNS = 3
#: The directory holding the cloudtask package, so the spawned ``python -m cloudtask.emulator``
#: imports this very copy even when it is not installed (a source checkout on sys.path).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalEmulator:
    """Where this process's emulator listens: the shared background one, or its own."""

    address: str
    project: str
    location: str
    certs_url: str | None
    dashboard_url: str | None
    #: The background emulator's process id (None: the in-process emulator).
    pid: int | None = None
    #: Its state directory (None: the in-process emulator).
    state_dir: Path | None = None
    #: The options the background emulator was started with (its emulator.json).
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)


def _settings_module() -> str:
    # The environment first: override_settings() hides SETTINGS_MODULE behind a holder.
    return os.environ.get("DJANGO_SETTINGS_MODULE") or str(
        getattr(django_settings, "SETTINGS_MODULE", None) or ""
    )


def _project_dir() -> Path:
    """The directory holding the settings module's top-level package (or module): the project's
    root, whatever the current directory of the process that asks."""
    module = _settings_module()
    top = sys.modules.get(module.partition(".")[0]) if module else None
    paths = list(getattr(top, "__path__", None) or ())
    if paths:
        return Path(paths[0]).resolve().parent
    file = getattr(top, "__file__", None)
    return Path(file).resolve().parent if file else Path.cwd()


def _sqlite_file() -> Path | None:
    """The default database's file when it is a SQLite file (not in memory)."""
    database: Mapping[str, Any] = django_settings.DATABASES.get("default") or {}
    name = database.get("NAME")
    if "sqlite3" not in str(database.get("ENGINE", "")) or not name:
        return None
    text = os.fspath(name)
    if text == ":memory:" or text.startswith("file:"):
        return None
    return Path(text).resolve()


def state_dir(options: Mapping[str, Any]) -> Path:
    """The background emulator's directory (state.json, emulator.json, emulator.lock,
    emulator.log): CLOUDTASK["EMULATOR"]["STATE_DIR"] (relative to the project directory), else
    ``.cloudtask/`` beside the default database's SQLite file, else
    ``$XDG_CACHE_HOME/cloudtask/<project>-<hash>`` (``~/.cache`` without XDG_CACHE_HOME), one per
    settings module and project directory."""
    configured = options.get("STATE_DIR")
    if configured is not None:
        return _project_dir() / Path(os.fspath(configured)).expanduser()
    database = _sqlite_file()
    if database is not None:
        return database.parent / ".cloudtask"
    project = _project_dir()
    module = _settings_module()
    digest = hashlib.sha256(f"{module}\0{project}".encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cloudtask" / f"{project.name or 'project'}-{digest}"


def find_running(directory: Path) -> LocalEmulator | None:
    """The background emulator that holds ``directory``, if one runs (a stale emulator.json left
    by a killed one gives None)."""
    info = read_running(directory)
    if info is None:
        return None
    return LocalEmulator(
        address=str(info["address"]),
        project=str(info["project"]),
        location=str(info["location"]),
        certs_url=info.get("certs_url"),
        dashboard_url=info.get("dashboard_url"),
        pid=int(info["pid"]),
        state_dir=directory,
        options=info.get("options") or {},
    )


def _differences(found: LocalEmulator, settings: CloudTaskSettings) -> list[str]:
    """What the running background emulator was started with that this process's settings
    say otherwise (it keeps the options of the process that started it)."""
    options = settings.emulator
    wanted: dict[str, tuple[object, object]] = {
        'CLOUDTASK["PROJECT"]': (found.project, settings.project or "local-project"),
        'CLOUDTASK["LOCATION"]': (found.location, settings.location or "local"),
    }
    for key, option in (
        ("DEDUP_WINDOW", "dedup_window"),
        ("MAX_TASK_SIZE", "max_task_size"),
        ("IDLE_TIMEOUT", "idle_timeout"),
    ):
        if option in found.options:
            wanted[f'CLOUDTASK["EMULATOR"]["{key}"]'] = (found.options[option], options[key])
    return [
        f"{label} is {mine!r}, it runs with {theirs!r}"
        for label, (theirs, mine) in wanted.items()
        if theirs != mine
    ]


def _say_differences(found: LocalEmulator, settings: CloudTaskSettings) -> None:
    differences = _differences(found, settings)
    if differences:
        logger.warning(
            "The project's background Cloud Tasks emulator (pid %s, %s) was started with other "
            "settings: %s. Run `manage.py cloudtask_emulator --stop`; the next task starts it "
            "with these (its tasks are kept).",
            found.pid,
            found.address,
            "; ".join(differences),
        )


#: The background emulators this process started: pid -> exit status, None while it runs. A
#: child that exits stays a zombie until reaped, and a zombie passes a pid check.
_children: dict[int, int | None] = {}
_children_lock = threading.Lock()


def _exit_status(pid: int) -> int | None:
    """The exit status of a background emulator this process started (reaped), None while it
    runs."""
    with _children_lock:  # one reaper: a second waitpid() would lose the status
        status = _children.get(pid)
        if status is None:
            try:
                done, raw = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped outside this module: gone all the same
                done, raw = pid, 0
            if done:
                status = _children[pid] = os.waitstatus_to_exitcode(raw)
        return status


def _alive(pid: int) -> bool:
    if pid in _children:
        return _exit_status(pid) is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def start_background(settings: CloudTaskSettings) -> LocalEmulator:
    """The project's background emulator: the running one, or one started now (detached, its
    output appended to STATE_DIR/emulator.log). Of several processes starting one at once, the
    state directory's lock lets one win; the others exit and everyone uses the winner."""
    directory = state_dir(settings.emulator)
    found = find_running(directory)
    if found is not None:
        _say_differences(found, settings)
        return found
    make_state_dir(directory)
    log_path = directory / LOG_FILE
    _rotate(log_path)
    options = settings.emulator
    argv = daemon_command(
        directory,
        host=str(options["HOST"]),
        port=int(options["PORT"]),
        project=settings.project or "local-project",
        location=settings.location or "local",
        queues=list(dict.fromkeys([settings.queue, *options["QUEUES"]])),
        dedup_window=float(options["DEDUP_WINDOW"]),
        max_task_size=int(options["MAX_TASK_SIZE"]),
        idle_timeout=options["IDLE_TIMEOUT"],
        hold_unreachable=True,
        quiet=not options["LOG"],
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    pid = _spawn(argv, env, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    respawns = 0
    while True:
        found = find_running(directory)
        if found is not None:
            if found.pid != pid:
                _dismiss(pid)
            return found
        status = _exit_status(pid)
        if status == EXIT_ALREADY_RUNNING and respawns < MAX_RESPAWNS and not locked(directory):
            respawns += 1
            # It lost the directory to a process that has let go of it since without serving
            # it (an emulator that was stopping, `cloudtask_emulator --reset`): start another.
            pid = _spawn(argv, env, log_path)
            deadline = time.monotonic() + START_TIMEOUT
        elif status is not None and status != EXIT_ALREADY_RUNNING:
            raise EnqueueError(
                f"The background Cloud Tasks emulator exited with status {status} before it "
                f"listened; its log is {log_path}."
            )
        if time.monotonic() > deadline:
            raise EnqueueError(
                f"The background Cloud Tasks emulator did not listen within {START_TIMEOUT:g} s; "
                f"its log is {log_path}."
            )
        time.sleep(0.02)


def _dismiss(pid: int) -> None:
    """Stop the emulator this process started once another one serves the directory.

    Started in a race it lost, it would exit on its own when it finds the directory locked, but
    one whose start-up is slow reaches the lock later: after a `cloudtask_emulator --stop` of the
    winner it would take the directory over, an emulator nobody asked for, serving on after the
    stop. It cannot hold the lock while the winner does, so it is stopped before it serves
    (SIGTERM: at start-up, Python's default action), and reaped.
    """
    if _exit_status(pid) is not None:
        return  # it found the directory taken and exited already
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT
    while _exit_status(pid) is None:
        if time.monotonic() > deadline:
            logger.warning(
                "The background Cloud Tasks emulator pid %s, started while another one took "
                "the state directory, did not stop within %g s of SIGTERM.",
                pid,
                START_TIMEOUT,
            )
            return
        time.sleep(0.01)


def _rotate(log_path: Path) -> None:
    """Keep a log grown past MAX_LOG_SIZE as emulator.log.1 (replacing the one before)."""
    try:
        if log_path.stat().st_size > MAX_LOG_SIZE:
            os.replace(log_path, log_path.with_name(f"{log_path.name}.1"))
    except FileNotFoundError:
        pass


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """Start a background emulator, its output appended to ``log_path``; its pid."""
    # Detached: its own session, so Ctrl-C in the terminal of the process that started it
    # (runserver, a shell) does not stop the emulator that keeps the project's tasks; no
    # subprocess.Popen, whose object would complain when collected while the emulator lives on.
    pid = os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (
                os.POSIX_SPAWN_OPEN,
                1,
                str(log_path),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                PRIVATE_FILE,  # the log names tasks and URLs: the owner's, as the state is
            ),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    with _children_lock:
        _children[pid] = None
    return pid


# -- the in-process emulator (PERSIST False) ------------------------------------------------------

_emulators: dict[tuple[Any, ...], Emulator] = {}
_lock = threading.Lock()


def _key(options: Mapping[str, Any], project: str | None, location: str | None) -> tuple[Any, ...]:
    return (*sorted((k, str(v)) for k, v in options.items()), project, location)


def embedded_emulator(
    options: Mapping[str, Any], project: str | None = None, location: str | None = None
) -> Emulator:
    """The process's own emulator for these CLOUDTASK["EMULATOR"] options (started once)."""
    key = _key(options, project, location)
    emu = _emulators.get(key)
    if emu is not None:
        return emu
    with _lock:
        emu = _emulators.get(key)
        if emu is None:
            emu = Emulator(
                host=options["HOST"],
                port=options["PORT"],
                auto_create_queues=True,
                dedup_window=float(options["DEDUP_WINDOW"]),
                max_task_size=int(options["MAX_TASK_SIZE"]),
                log=sys.stderr if options["LOG"] else None,
                queues=tuple(options["QUEUES"]),
                project=project or "local-project",
                location=location or "local",
            ).start()
            _emulators[key] = emu
        return emu


@atexit.register
def _stop_all() -> None:
    with _lock:
        emulators = list(_emulators.values())
        _emulators.clear()
    dropped = 0
    for emu in emulators:
        dropped += emu.pending()
        emu.stop(grace=0.2)
    if dropped:
        # Said at exit, where the loss happens: a shell that scheduled a task sees why it never ran.
        sys.stderr.write(
            f"cloudtask: the in-process emulator dropped {dropped} undelivered task(s) at exit "
            '(scheduled or retrying); CLOUDTASK["EMULATOR"]["PERSIST"] = True keeps them\n'
        )
        sys.stderr.flush()


class EmulatorTransport(CloudTasksTransport):
    """The cloudtasks transport pointed at the local emulator: the project's shared background
    one (started on first use), or with PERSIST False one inside this process. With
    CLOUDTASK["EMULATOR_HOST"] set it talks to that emulator instead and starts none."""

    def __init__(self, settings: CloudTaskSettings, *, client: Any = None) -> None:
        super().__init__(settings, client=client)
        self._local: LocalEmulator | None = None
        # Reentrant: an emulator_connected receiver may use this transport (its client, its
        # address) while connect() still holds the lock.
        self._connect_lock = threading.RLock()

    @property
    def persist(self) -> bool:
        return bool(self.settings.emulator["PERSIST"])

    @property
    def shared(self) -> bool:
        """Sends to the project's shared background emulator (PERSIST, no EMULATOR_HOST)."""
        return self.persist and not self.settings.emulator_host

    def connect(self) -> LocalEmulator:
        """The emulator this process sends to: found or started on first call, started anew
        (once) when the background one has stopped since. emulator_connected is sent each time
        a new one is connected (never for CLOUDTASK["EMULATOR_HOST"], which is only named)."""
        local = self._local
        if local is not None and (local.pid is None or _alive(local.pid)):
            return local
        with self._connect_lock:
            local = self._local
            if local is not None and (local.pid is None or _alive(local.pid)):
                return local
            if local is not None:
                self._forget()
            s = self.settings
            if s.emulator_host:
                # Someone else's emulator: nothing to find, start or configure.
                project, location = self.project_location()
                self._local = LocalEmulator(s.emulator_host, project, location, None, None)
                return self._local
            if self.persist:
                local = start_background(s)
            else:
                emu = embedded_emulator(s.emulator, s.project, s.location)
                local = LocalEmulator(
                    emu.address, emu.project, emu.location, emu.certs_url, _dashboard_url(emu)
                )
            self._local = local
            try:
                emulator_connected.send(
                    sender=EmulatorTransport,
                    address=local.address,
                    project=local.project,
                    location=local.location,
                )
            except BaseException:
                # Not connected: the next call connects and sends again, so a receiver's error
                # (a bad QUEUES setting) is raised on every send, not once and then forgotten.
                self._local = None
                raise
            return local

    def _forget(self) -> None:
        """Drop the connection to a background emulator that stopped (the clients hold
        channels to its old address)."""
        self._local = None
        self.close()

    @property
    def emulator(self) -> Emulator:
        """The in-process Emulator (PERSIST False only: the shared one is another process)."""
        s = self.settings
        if self.persist or s.emulator_host:
            raise ConfigurationError(
                "The emulator runs in another process (the shared background one, or "
                'CLOUDTASK["EMULATOR_HOST"]): reach it with its gRPC client, or set '
                'CLOUDTASK["EMULATOR"]["PERSIST"] = False for one inside this process.'
            )
        self.connect()
        return embedded_emulator(s.emulator, s.project, s.location)

    def emulator_host(self) -> str | None:
        if self.settings.emulator_host:
            return self.settings.emulator_host
        return self.connect().address

    def project_location(self) -> tuple[str, str]:
        s = self.settings
        return s.project or "local-project", s.location or "local"

    def oidc_certs_url(self) -> str | None:
        # The emulator signs its OIDC tokens with its own key and serves the certificate. The
        # site may verify a token before it ever sent a task: look the background one up.
        if self.settings.emulator_host:
            return None
        if self.shared:
            found = find_running(state_dir(self.settings.emulator))
            if found is not None:
                return found.certs_url
        local = self._local
        return local.certs_url if local is not None else None

    def dashboard_url(self) -> str | None:
        """The emulator's dashboard page, if it serves one (None with EMULATOR_HOST)."""
        return self.connect().dashboard_url

    def _stopped(self, exc: EnqueueError) -> bool:
        """True if exc says the background emulator is gone (UNAVAILABLE and nothing holds its
        state directory any more, or another one does): the connection is dropped, and the
        caller sends once more, which starts it again."""
        local = self._local
        if (
            local is None
            or local.state_dir is None
            or not isinstance(exc.__cause__, api_exceptions.ServiceUnavailable)
        ):
            return False
        with self._connect_lock:
            if self._local is not local:
                return True  # another thread reconnected meanwhile
            found = find_running(local.state_dir)
            if found is not None and found.address == local.address:
                return False
            self._forget()
            return True

    def enqueue(self, message: TaskMessage) -> EnqueuedTask:
        try:
            return super().enqueue(message)
        except EnqueueError as exc:
            if not self._stopped(exc):
                raise
        return super().enqueue(message)

    async def aenqueue(self, message: TaskMessage) -> EnqueuedTask:
        # Finding, or starting, the emulator blocks: never on the event loop.
        local = self._local
        if local is None or (local.pid is not None and not _alive(local.pid)):
            await asyncio.to_thread(self.emulator_host)
        try:
            return await super().aenqueue(message)
        except EnqueueError as exc:
            if not await asyncio.to_thread(self._stopped, exc):
                raise
        await asyncio.to_thread(self.emulator_host)
        return await super().aenqueue(message)


def _dashboard_url(emu: Emulator) -> str | None:
    try:
        return emu.dashboard_url
    except RuntimeError:  # an emulator made without its dashboard
        return None


#: Most seconds between two calls a serving site makes to keep its emulator up.
KEEP_UP_INTERVAL = 300.0


def keep_up(transport: object, *, stop: threading.Event | None = None) -> None:
    """Find, or start, the shared background emulator if ``transport`` sends to it, and keep it
    up until ``stop`` is set (never, for a serving site: the thread dies with the process).

    The site calls this when it starts serving, so the tasks the emulator holds for it
    (scheduled by a shell that has exited, waiting for a retry while the site restarted) are
    delivered even if nothing sends a task, and its schedules keep firing: a call every quarter
    of IDLE_TIMEOUT keeps the emulator from stopping for idleness while the site runs, and
    starts it again if it was stopped or killed. Failures are logged, not raised: serving the
    site comes first, and the first task sent raises them again.
    """
    if not isinstance(transport, EmulatorTransport) or not transport.shared:
        return
    idle = transport.settings.emulator["IDLE_TIMEOUT"]
    interval = KEEP_UP_INTERVAL if idle is None else min(KEEP_UP_INTERVAL, idle / 4)
    stop = stop if stop is not None else threading.Event()
    pid: int | None = None
    failing = False
    while True:
        try:
            local = transport.connect()
            project, location = local.project, local.location
            # Any call counts as activity for the emulator's IDLE_TIMEOUT.
            transport.client.list_queues(
                parent=f"projects/{project}/locations/{location}",
                timeout=transport.settings.client_timeout,
            )
        except Exception:
            if not failing:
                logger.exception("The shared Cloud Tasks emulator could not be started")
            failing = True
        else:
            if local.pid != pid or failing:
                logger.info("Cloud Tasks emulator at %s (pid %s)", local.address, local.pid)
            pid, failing = local.pid, False
        if stop.wait(interval):
            return


def _keep_up_in_background() -> None:
    # Under a test runner (Django's, pytest-django: both set up mail.outbox) the "site" is the
    # test client or a live server thread, which must not leave an emulator running behind
    # the suite; tests that send tasks to it start it themselves.
    if hasattr(mail, "outbox"):
        return
    # Decided now, started in a thread: starting the emulator takes up to a second, which no
    # request (and no start-up) should wait for.
    transport = get_transport()
    if isinstance(transport, EmulatorTransport) and transport.shared:
        threading.Thread(
            target=keep_up, args=(transport,), name="cloudtask-emulator-keep-up", daemon=True
        ).start()


_FIRST_REQUEST = "cloudtask.transports.emulator.keep_up"


def _on_first_request(**kwargs: Any) -> None:
    request_started.disconnect(dispatch_uid=_FIRST_REQUEST)
    _keep_up_in_background()


def keep_up_while_serving(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Make the process that serves the site keep the shared emulator running (from
    AppConfig.ready()): runserver's serving process (the autoreloader's child, RUN_MAIN=true, or
    the only one with --noreload) at start-up, any other server at its first request."""
    if argv[1:2] == ["runserver"]:
        if environ.get("RUN_MAIN") == "true" or "--noreload" in argv:
            _keep_up_in_background()
        return  # the autoreloader's parent only restarts the child: it serves nothing
    request_started.connect(_on_first_request, dispatch_uid=_FIRST_REQUEST, weak=False)
