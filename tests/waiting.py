"""Waiting on state that has no event to wait on (rows in a database, the emulator's delivery
records, another process's progress): poll, with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(
    probe: Callable[[], Any], timeout: float = 15.0, what: str = "", interval: float = 0.02
) -> Any:
    """probe()'s first truthy value, polled until timeout; AssertionError naming what (or the
    probe) when it never comes."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or probe}")
        time.sleep(interval)
