"""The emulator's log: one line per event, written by the dispatcher, the scheduler, the state
file and the emulator itself, from many threads, to one stream (stderr, or a daemon's log)."""

from __future__ import annotations

import threading
from typing import TextIO

# One lock for every writer in the process: they share the stream, and lines must not mix.
_LOCK = threading.Lock()


def write_line(log: TextIO | None, line: str) -> None:
    """Write ``line`` to ``log`` (nothing without one). A closed or broken stream is ignored:
    the log must never stop a delivery, a firing or a save."""
    if log is None:
        return
    with _LOCK:
        try:
            log.write(f"{line}\n")
            log.flush()
        except (OSError, ValueError):
            pass
