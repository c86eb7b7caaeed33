"""Command line: ``python -m cloudtask.emulator --port 8123 --queue default``.

Shared by the ``cloudtask_emulator`` management command, which fills the options from settings.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from . import Emulator

DEFAULT_PORT = 8123


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


def certs_port(port: int, given: int | None) -> int:
    """A predictable certs port beside a fixed gRPC port, so OIDC_CERTS_URL can be configured."""
    if given is not None:
        return given
    return port + 1 if port else 0


def serve(emulator: Emulator, out: TextIO) -> None:
    """Start ``emulator``, print where it listens, and run until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            emulator.start()
        except OSError as exc:
            raise SystemExit(f"error: {exc}") from None
        try:
            out.write(f"Cloud Tasks emulator listening on {emulator.address}\n")
            out.write(f"OIDC certificates: {emulator.certs_url}\n")
            for queue in sorted(emulator.store.queues):
                out.write(f"queue: {queue}\n")
            out.write(
                "Point cloudtask at it with CLOUDTASK = {"
                f'"TRANSPORT": "cloudtasks", "EMULATOR_HOST": "{emulator.address}", '
                f'"PROJECT": "{emulator.project}", "LOCATION": "{emulator.location}", ...}}; '
                "stop with Ctrl-C.\n"
            )
            out.flush()
            stop.wait()
        finally:
            emulator.stop()
            out.write("Cloud Tasks emulator stopped\n")
            out.flush()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloudtask.emulator", description="Run a local Cloud Tasks emulator."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    port = DEFAULT_PORT if args.port is None else args.port
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
    )
    serve(emulator, sys.stdout)
    return 0
