"""The emulator's state on disk, and the files of a background emulator's state directory.

``Emulator(state_path=...)`` keeps its queues, tasks and named-task tombstones in one JSON file:
loaded at start, written after every change (at most every :data:`SAVE_INTERVAL` seconds, by a
background thread, atomically) and once more at stop. A background emulator
(``python -m cloudtask.emulator --state-dir DIR``) owns a directory:

* ``state.json``: that state file;
* ``emulator.lock``: ``flock``-ed for the process's lifetime, so one emulator serves a directory;
* ``emulator.json``: where it listens, written once it does, removed as it begins to stop;
* ``emulator.log``: its log (the process that spawns it redirects stderr there);
* ``.gitignore``: ``*``, written when the directory is made (owner-only, as its files are).

:func:`read_running`, :func:`stop_running` and :func:`daemon_command` are what a spawner (the
Django transport, ``manage.py cloudtask_emulator``) needs; no Django here either.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from google.cloud import tasks_v2

from .log import write_line
from .scheduler import Scheduler
from .state import AttemptRecord, Store, TaskRecord

__all__ = [
    "EXIT_ALREADY_RUNNING",
    "FORMAT_VERSION",
    "INFO_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "SAVE_INTERVAL",
    "STATE_FILE",
    "AlreadyRunning",
    "StateDirLock",
    "StateFile",
    "daemon_command",
    "lock_state_dir",
    "locked",
    "make_state_dir",
    "read_running",
    "state_file",
    "stop_running",
]

#: Bumped when the state file's layout changes; a file of another version is set aside.
FORMAT_VERSION = 1
FORMAT_NAME = "cloudtask-emulator-state"
#: Changes are written at most this often (seconds): a killed emulator loses at most this much
#: (more with a state so big that a write takes longer than SAVE_INTERVAL / SAVE_DUTY).
SAVE_INTERVAL = 0.2
#: The writer waits this many times as long as its last write took before the next one.
SAVE_DUTY = 4.0

STATE_FILE = "state.json"
LOCK_FILE = "emulator.lock"
INFO_FILE = "emulator.json"
LOG_FILE = "emulator.log"
#: Exit status of ``python -m cloudtask.emulator --state-dir DIR`` when DIR is taken.
EXIT_ALREADY_RUNNING = 3
#: Modes of the state directory and its files: they hold task bodies, for their owner only.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: Written into a state directory when it is made: ``.cloudtask/`` beside ``db.sqlite3`` is
#: usually inside the project's repository, and its files must not be committed.
GITIGNORE = "# Made by cloudtask: the local emulator's state, never committed.\n*\n"
#: Attempts, and seconds between them, at taking a state directory's lock: a reader's probe
#: (read_running) holds it for a moment, which must not look like a running emulator.
LOCK_ATTEMPTS = 10
LOCK_RETRY_DELAY = 0.01


class CorruptState(ValueError):
    """The state file exists but cannot be read back."""


# -- the state file ------------------------------------------------------------------------------


def _attempt(record: AttemptRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "schedule_time": record.schedule_time,
        "dispatch_time": record.dispatch_time,
        "response_time": record.response_time,
        "http_status": record.http_status,
        "error": record.error,
    }


def _read_attempt(data: dict[str, Any] | None) -> AttemptRecord | None:
    if data is None:
        return None
    return AttemptRecord(
        schedule_time=float(data["schedule_time"]),
        dispatch_time=float(data["dispatch_time"]),
        response_time=_optional_float(data["response_time"]),
        http_status=_optional_int(data["http_status"]),
        error=_optional_str(data["error"]),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _task(task: TaskRecord) -> dict[str, Any]:
    if task.encoded_pb is None:
        task.encoded_pb = base64.b64encode(task.pb.SerializeToString()).decode("ascii")
    return {
        "name": task.name,
        # The task as created (http_request, create_time, dispatch_deadline, retry_config), as
        # a serialized google.cloud.tasks.v2.Task: everything needed to deliver it as before.
        "task": task.encoded_pb,
        "schedule_time": task.schedule_time,
        "dispatch_count": task.dispatch_count,
        "response_count": task.response_count,
        "execution_count": task.execution_count,
        "first_attempt": _attempt(task.first_attempt),
        "last_attempt": _attempt(task.last_attempt),
        "first_attempt_time": task.first_attempt_time,
        "previous_response": task.previous_response,
        "retry_reason": task.retry_reason,
    }


def snapshot(store: Store) -> tuple[int, dict[str, Any]]:
    """The store as the state file's JSON object, and the revision it shows (under the lock:
    only copies, so RPCs and deliveries wait as little as possible)."""
    with store.cond:
        queues = []
        for queue in store.queues.values():
            queues.append(
                {
                    # Config and paused state, as GetQueue answers it (readable JSON).
                    "queue": json.loads(tasks_v2.Queue.to_json(queue.to_proto(), indent=None)),
                    "purge_time": queue.purge_time,
                    "tasks": [_task(task) for task in queue.tasks.values()],
                }
            )
        data = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "saved": store.clock.now(),
            "queues": queues,
            "deleted_queues": dict(store.deleted_queues),
            # Names finished or deleted recently, with the time each was taken.
            "tombstones": store.tombstones.taken(),
        }
        return store.revision, data


def restore(store: Store, data: Any) -> None:
    """Fill an empty ``store`` from a state file's JSON object (CorruptState if it is not one)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CorruptState("not a cloudtask emulator state file")
    if data.get("version") != FORMAT_VERSION:
        raise CorruptState(
            f"format version {data.get('version')!r}, this emulator reads {FORMAT_VERSION}"
        )
    with store.cond:
        for saved in data["queues"]:
            queue = store.restore_queue(
                tasks_v2.Queue.from_json(json.dumps(saved["queue"])),
                _optional_float(saved["purge_time"]),
            )
            for item in saved["tasks"]:
                pb = tasks_v2.Task.pb(tasks_v2.Task())
                pb.ParseFromString(base64.b64decode(item["task"], validate=True))
                if pb.name != item["name"] or not pb.name.startswith(queue.name + "/tasks/"):
                    raise CorruptState(f"task {item['name']!r} is not in queue {queue.name!r}")
                # Due at its schedule time: one that passed while nothing ran goes out at once.
                task = store.restore_task(queue, pb, float(item["schedule_time"]))
                task.encoded_pb = item["task"]
                task.dispatch_count = int(item["dispatch_count"])
                task.response_count = int(item["response_count"])
                task.execution_count = int(item["execution_count"])
                task.first_attempt = _read_attempt(item["first_attempt"])
                task.last_attempt = _read_attempt(item["last_attempt"])
                task.first_attempt_time = _optional_float(item["first_attempt_time"])
                task.previous_response = _optional_int(item["previous_response"])
                task.retry_reason = _optional_str(item["retry_reason"])
        store.deleted_queues.update(
            {str(name): float(when) for name, when in data["deleted_queues"].items()}
        )
        store.tombstones.restore(
            {str(name): float(when) for name, when in data["tombstones"].items()}
        )
        store.revision = 0  # what the file holds


def _reset(store: Store) -> None:
    with store.cond:
        store.queues.clear()
        store.deleted_queues.clear()
        store.tombstones.clear()


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader, or a crash, sees the old or the new file,
    never half of one."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        # Owner-only: the state holds task bodies (personal data, tokens) of the project.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class StateFile:
    """One emulator's state file: loads it at start, then keeps it up to date.

    :meth:`start` hooks the store: every change wakes a writer thread, which writes at most
    every :data:`SAVE_INTERVAL` seconds. Snapshots are taken under the store's lock; the JSON
    encoding and the file I/O happen outside it.
    """

    def __init__(
        self,
        store: Store,
        path: str | os.PathLike[str],
        log: TextIO | None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.store = store
        self.path = Path(path)
        self.log = log
        #: The Cloud Scheduler jobs, saved beside the queues (None without the scheduler).
        self.scheduler = scheduler
        #: The jobs the file held: restored into the scheduler by the emulator, and written
        #: back unchanged when there is no scheduler (its package is not installed here).
        self.jobs: list[dict[str, Any]] = []
        # Bumped by the scheduler's changes, which do not move the store's revision.
        self._jobs_revision = 0
        self._dirty = threading.Event()
        self._closing = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time, in revision order
        self._saved_revision: tuple[int, int] = (-1, -1)
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Fill the (empty) store from the file. A missing file leaves it empty; an unreadable
        one too, after renaming it aside (``state.json.corrupt-<timestamp>``) with a log line."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            restore(self.store, data)
            jobs = data.get("jobs", [])
            if not isinstance(jobs, list):
                raise CorruptState("jobs is not a list")
            self.jobs = jobs
        except Exception as exc:  # whatever is wrong with it, the file cannot be used
            _reset(self.store)
            stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            os.replace(self.path, aside)
            self._write(
                f"[cloudtask emulator] state file {self.path} is unreadable "
                f"({exc.__class__.__name__}: {exc}); moved it to {aside} and started empty"
            )
        else:
            self._saved_revision = (self.store.revision, 0)

    def start(self) -> None:
        self.path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        self._closing.clear()
        with self.store.cond:
            self.store.on_change = self._dirty.set
        if self.scheduler is not None:
            self.scheduler.on_change = self._jobs_changed
        self._thread = threading.Thread(
            target=self._run, name="cloudtask-emulator-state", daemon=True
        )
        self._thread.start()
        self._dirty.set()  # queues created at start, a load to normalize: write them once

    def stop(self) -> None:
        """Stop the writer and write the final state."""
        with self.store.cond:
            self.store.on_change = None
        if self.scheduler is not None:
            self.scheduler.on_change = None
        self._closing.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.save(force=True)

    def save(self, *, force: bool = False) -> None:
        """Write the state now (unless nothing changed since the last write and not ``force``)."""
        with self._write_lock:
            jobs_revision = self._jobs_revision
            store_revision, data = snapshot(self.store)
            revision = (store_revision, jobs_revision)
            if revision == self._saved_revision and not force:
                return
            # Taken outside the store's lock: the scheduler has a lock of its own.
            data["jobs"] = self.scheduler.snapshot() if self.scheduler is not None else self.jobs
            write_atomically(self.path, json.dumps(data, separators=(",", ":")))
            self._saved_revision = revision

    def _jobs_changed(self) -> None:
        self._jobs_revision += 1
        self._dirty.set()

    def _run(self) -> None:
        next_write = 0.0
        failing = False
        while True:
            self._dirty.wait()
            # Coalesce: the changes that come before the next write is allowed share it.
            if self._closing.wait(max(0.0, next_write - time.monotonic())):
                return  # stop() writes the final state
            self._dirty.clear()
            # stop() sets _closing, then _dirty: if it did both since the look above, the clear
            # just wiped its wake-up, and the wait above would never end (stop() joins this
            # thread, and no change sets _dirty any more). Its _closing is seen here instead.
            if self._closing.is_set():
                return
            started = time.monotonic()
            try:
                self.save()
            except Exception as exc:
                # A full disk, or a bug in a snapshot: the writer must outlive it (a dead one
                # would stop saving, silently). Said once, then tried again later.
                if not failing:
                    self._write(
                        f"[cloudtask emulator] cannot write {self.path}: "
                        f"{exc.__class__.__name__}: {exc}"
                    )
                failing = True
                self._dirty.set()
            else:
                if failing:
                    self._write(f"[cloudtask emulator] wrote {self.path} again")
                failing = False
            finished = time.monotonic()
            # A big state (thousands of tasks) takes a while to encode and write: space the
            # writes so that they take at most a fifth of the time, and delivery keeps going.
            next_write = finished + max(SAVE_INTERVAL, SAVE_DUTY * (finished - started))

    def _write(self, line: str) -> None:
        write_line(self.log, line)


# -- a background emulator's state directory ----------------------------------------------------


class AlreadyRunning(Exception):
    """Another emulator holds the state directory."""

    def __init__(self, state_dir: Path, address: str | None, pid: int | None) -> None:
        self.state_dir = state_dir
        self.address = address
        self.pid = pid
        super().__init__(
            f"a cloudtask emulator already runs for {state_dir} at "
            f"{address or 'an address not published yet'} (pid {pid or 'unknown'})"
        )


def make_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """``state_dir``, made if missing: owner-only, with a ``.gitignore`` that ignores it all."""
    directory = Path(state_dir)
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        return directory  # the user's own directory, or one made before: left as it is
    # Only the process that made it writes this, so two starting at once never race on it.
    (directory / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    return directory


def locked(state_dir: str | os.PathLike[str]) -> bool:
    """True if a process (an emulator, or one resetting its state) holds ``state_dir``."""
    return _probe_lock(Path(state_dir))


def _probe_lock(state_dir: Path) -> bool:
    """True if some process holds the directory's lock (taken and released at once otherwise)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock taken here
    return False


def _read_info(state_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((state_dir / INFO_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_running(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``emulator.json`` of the emulator serving ``state_dir``, or None if none does.

    A file left by an emulator that was killed gives None: its pid must be alive and the
    directory's lock held. Keys: ``pid``, ``address`` (host:port), ``certs_url``,
    ``dashboard_url`` (or None), ``project``, ``location``, ``state`` (the state file's path),
    ``started`` (seconds since the epoch).
    """
    directory = Path(state_dir)
    info = _read_info(directory)
    if info is None or not _pid_alive(info["pid"]) or not _probe_lock(directory):
        return None
    return info


def stop_running(state_dir: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """Stop the emulator serving ``state_dir`` (SIGTERM: it saves its state and exits).

    Returns True once it has released the directory, False if none was running; raises
    TimeoutError if it still holds the directory after ``timeout`` seconds.
    """
    directory = Path(state_dir)
    info = read_running(directory)
    if info is None:
        return False
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    # Another process: no event to wait on, so poll its lock (released when it has exited).
    while _probe_lock(directory):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"The cloudtask emulator (pid {pid}) for {directory} did not stop within "
                f"{timeout:g} s of SIGTERM; stop it with `kill -9 {pid}` (its state file keeps "
                "all but the last changes)."
            )
        time.sleep(0.02)
    return True


def state_file(state_dir: str | os.PathLike[str]) -> Path:
    """The state file of the emulator serving ``state_dir``."""
    return Path(state_dir) / STATE_FILE


class StateDirLock:
    """The exclusive lock of a state directory, held by the emulator that serves it."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    def publish(self, info: dict[str, Any]) -> None:
        """Write ``emulator.json`` (once listening)."""
        write_atomically(self.state_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")

    def unpublish(self) -> None:
        """Remove ``emulator.json`` if it is still ours: done before the emulator stops, so no
        process sends to a server that is shutting down (they start a new one, which waits
        for this lock)."""
        info = _read_info(self.state_dir)
        if info is not None and info["pid"] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / INFO_FILE).unlink()

    def release(self) -> None:
        """Remove ``emulator.json`` if it is still ours, then release the lock."""
        if self._fd is None:
            return
        self.unpublish()
        os.close(self._fd)
        self._fd = None


#: How long a second emulator waits for the running one to publish its address, for its message.
_PUBLISH_WAIT = 5.0


def lock_state_dir(state_dir: str | os.PathLike[str]) -> StateDirLock:
    """Take ``state_dir`` (created if missing) for this process; AlreadyRunning if taken."""
    directory = make_state_dir(state_dir)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    for attempt in range(LOCK_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < LOCK_ATTEMPTS:
                # Maybe only a reader's probe (read_running): it lets go at once.
                time.sleep(LOCK_RETRY_DELAY)
                continue
            os.close(fd)
            raise _already_running(directory) from None
        break
    # The lock file names its holder, so a second emulator can say who, even before the first
    # one publishes its address. The file stays: removing a lock file races with its takers.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return StateDirLock(directory, fd)


def _already_running(directory: Path) -> AlreadyRunning:
    try:
        pid: int | None = int((directory / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    deadline = time.monotonic() + _PUBLISH_WAIT
    while True:
        info = _read_info(directory)
        if info is not None and (pid is None or info["pid"] == pid):
            return AlreadyRunning(directory, str(info.get("address")), info["pid"])
        if time.monotonic() > deadline or not _probe_lock(directory):
            return AlreadyRunning(directory, None, pid)
        time.sleep(0.05)  # the holder is starting: its address comes in a moment


def daemon_command(
    state_dir: str | os.PathLike[str],
    *,
    host: str,
    port: int,
    project: str,
    location: str,
    queues: Iterable[str],
    dedup_window: float,
    max_task_size: int,
    idle_timeout: float | None,
    hold_unreachable: bool = True,
    quiet: bool = False,
    auto_create_queues: bool = True,
) -> list[str]:
    """The argv of a background emulator serving ``state_dir`` (``sys.executable -m
    cloudtask.emulator --state-dir ...``). It creates missing queues on first use, as the
    in-process emulator does, unless ``auto_create_queues`` is False."""
    argv = [
        sys.executable,
        "-m",
        "cloudtask.emulator",
        "--state-dir",
        os.fspath(state_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--project",
        project,
        "--location",
        location,
        "--dedup-window",
        repr(float(dedup_window)),
        "--max-task-size",
        str(int(max_task_size)),
    ]
    for queue in queues:
        argv += ["--queue", queue]
    if idle_timeout is not None:
        argv += ["--idle-timeout", repr(float(idle_timeout))]
    if hold_unreachable:
        argv.append("--hold-unreachable")
    if auto_create_queues:
        argv.append("--auto-create-queues")
    if quiet:
        argv.append("--quiet")
    return argv
