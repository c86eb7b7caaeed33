"""Command line: ``python -m cloudtask.emulator --port 8123 --queue default``.

Shared by the ``cloudtask_emulator`` management command, which fills the options from settings.
With ``--state-dir DIR`` it is a project's background emulator: its state in DIR/state.json,
DIR locked for its lifetime, its address in DIR/emulator.json (see :mod:`.persist`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import Emulator
from .persist import (
    EXIT_ALREADY_RUNNING,
    AlreadyRunning,
    StateDirLock,
    lock_state_dir,
    state_file,
)

DEFAULT_PORT = 8123


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=None, help=f"gRPC port (default {DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="queue to create at start (short id or full name); repeat for more",
    )
    parser.add_argument(
        "--certs-port",
        type=int,
        default=None,
        help="port of the OIDC certificates URL (default: the gRPC port + 1, or any if that is 0)",
    )
    parser.add_argument("--project", default=None, help="project of short queue ids")
    parser.add_argument("--location", default=None, help="location of short queue ids")
    parser.add_argument(
        "--dedup-window",
        type=float,
        default=None,
        help="seconds a finished or deleted task name stays taken (default 3600)",
    )
    parser.add_argument(
        "--max-task-size", type=int, default=None, help="largest serialized task, bytes (1 MiB)"
    )
    parser.add_argument(
        "--auto-create-queues",
        action="store_true",
        default=None,
        help="create missing queues on CreateTask instead of answering NOT_FOUND",
    )
    parser.add_argument("--quiet", action="store_true", help="no log line per dispatch")
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep queues and tasks in DIR/state.json across restarts; one emulator per DIR "
        "(DIR/emulator.lock), its address in DIR/emulator.json",
    )
    parser.add_argument(
        "--hold-unreachable",
        action="store_true",
        default=None,
        help="when the target refuses connections (site down), hold its tasks without counting "
        "attempts until it answers",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="stop (saving the state) after SECONDS with no call and no task held",
    )


def certs_port(port: int, given: int | None) -> int:
    """A predictable certs port beside a fixed gRPC port, so OIDC_CERTS_URL can be configured."""
    if given is not None:
        return given
    return port + 1 if port else 0


def _dashboard_url(emulator: Emulator) -> str | None:
    try:
        return emulator.dashboard_url
    except RuntimeError:  # made with dashboard=False
        return None


def _set_when_stopped(emulator: Emulator, event: threading.Event) -> None:
    emulator.wait_stopped()
    event.set()


#: Seconds between two looks at the signal flag while serving (how late Ctrl-C may be noticed).
SIGNAL_POLL = 0.1


def serve(
    emulator: Emulator,
    out: TextIO,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    lock: StateDirLock | None = None,
) -> None:
    """Start ``emulator``, print where it listens, and run until SIGINT or SIGTERM (or until it
    stops itself after its idle_timeout).

    With ``state_dir`` (the emulator's state_path must be DIR/state.json) it first takes the
    directory's lock, exiting with status 3 if another emulator holds it, and publishes its
    address in DIR/emulator.json while it runs; it unpublishes it before stopping. ``lock``
    is that lock taken already (by a caller that had to stop another emulator first, without
    a gap for a third one to start): serve() releases it at the end.
    """
    if state_dir is not None:
        expected = state_file(state_dir)
        if emulator.state_path is None or Path(emulator.state_path) != expected:
            raise ValueError(
                f"An emulator serving --state-dir {state_dir} keeps its state in {expected}, "
                f"not {emulator.state_path}: build it with state_path={str(expected)!r}"
            )
        if lock is None:
            try:
                lock = lock_state_dir(state_dir)
            except AlreadyRunning as exc:
                sys.stderr.write(f"{exc}\n")
                raise SystemExit(EXIT_ALREADY_RUNNING) from None
        elif lock.state_dir != Path(state_dir):
            raise ValueError(f"The lock given is of {lock.state_dir}, not of {state_dir}")
    elif lock is not None:
        raise ValueError("A state directory's lock needs its state_dir")
    stop = threading.Event()
    # The handler only flips a flag: setting the Event from a signal handler could deadlock on
    # the Event's own lock, had the signal come while this thread held it inside wait().
    signalled: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, _: signalled.append(number))
    try:
        try:
            emulator.start()
        except OSError as exc:
            raise SystemExit(f"error: {exc}") from None
        try:
            # Read once, now: an idle_timeout may stop the emulator at any time from here on
            # (its addresses are gone then), and the loop below sees that.
            address, certs_url = emulator.address, emulator.certs_url
            dashboard_url = _dashboard_url(emulator)
        except RuntimeError:
            # Stopped already: an idle_timeout shorter than the start-up. Nothing to serve.
            emulator.stop()
            return
        try:
            if lock is not None:
                # Gone before the stop begins: who reads it then starts a new emulator (which
                # waits for this one's lock) instead of sending to one shutting down.
                emulator.before_idle_stop = lock.unpublish
                lock.publish(
                    {
                        "pid": os.getpid(),
                        "address": address,
                        "certs_url": certs_url,
                        "dashboard_url": dashboard_url,
                        "project": emulator.project,
                        "location": emulator.location,
                        "state": str(emulator.state_path),
                        "started": time.time(),
                        # What it was started with, so a process whose settings differ says so.
                        "options": {
                            "dedup_window": emulator.dedup_window,
                            "max_task_size": emulator.max_task_size,
                            "idle_timeout": emulator.idle_timeout,
                        },
                    }
                )
            # An idle_timeout stops the emulator from its own thread: stop serving then too.
            threading.Thread(target=_set_when_stopped, args=(emulator, stop), daemon=True).start()
            out.write(f"Cloud Tasks emulator listening on {address}\n")
            out.write(f"OIDC certificates: {certs_url}\n")
            if dashboard_url is not None:
                out.write(f"Dashboard: {dashboard_url}\n")
            for queue in sorted(emulator.store.queues):
                out.write(f"queue: {queue}\n")
            if emulator.state_path is not None:
                out.write(f"state: {emulator.state_path} ({emulator.pending()} task(s) held)\n")
            out.write(
                "Point cloudtask at it with CLOUDTASK = {"
                f'"TRANSPORT": "cloudtasks", "EMULATOR_HOST": "{address}", '
                f'"PROJECT": "{emulator.project}", "LOCATION": "{emulator.location}", ...}}; '
                "stop with Ctrl-C.\n"
            )
            out.flush()
            while not signalled and not stop.wait(SIGNAL_POLL):
                pass
        finally:
            if lock is not None:
                lock.unpublish()
            emulator.stop()
            out.write("Cloud Tasks emulator stopped\n")
            out.flush()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        emulator.before_idle_stop = None  # the lock's, released below
        if lock is not None:
            lock.release()  # after stop(): the next emulator finds the state saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloudtask.emulator", description="Run a local Cloud Tasks emulator."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    port = DEFAULT_PORT if args.port is None else args.port
    state_dir = os.path.abspath(args.state_dir) if args.state_dir is not None else None
    emulator = Emulator(
        args.host or "127.0.0.1",
        port,
        certs_port=certs_port(port, args.certs_port),
        queues=args.queue,
        project=args.project or "local-project",
        location=args.location or "local",
        auto_create_queues=bool(args.auto_create_queues),
        dedup_window=3600.0 if args.dedup_window is None else args.dedup_window,
        max_task_size=1_048_576 if args.max_task_size is None else args.max_task_size,
        log=None if args.quiet else sys.stderr,
        state_path=state_file(state_dir) if state_dir is not None else None,
        hold_unreachable=bool(args.hold_unreachable),
        idle_timeout=args.idle_timeout,
    )
    serve(emulator, sys.stdout, state_dir=state_dir)
    return 0
