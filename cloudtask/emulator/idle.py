"""An emulator that stops itself when nobody needs it (``Emulator(idle_timeout=...)``).

Idle means: no RPC for ``idle_timeout`` seconds and no task held all that time (with a state
file, tasks held for a site that refuses connections do not count: see Emulator._busy). A
background emulator started for a project then goes away on its own once the project stops
using it; its state is saved, and the next process that needs it starts it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

#: How often (seconds) the watcher looks at the tasks held: a finished task notifies nobody.
CHECK_INTERVAL = 1.0


class ActivityInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Notes the time of every RPC, whatever its service or method."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        self.last = time.monotonic()
        return continuation(handler_call_details)


class IdleWatch:
    """Calls ``on_idle`` once, from its own thread, after ``timeout`` idle seconds."""

    def __init__(
        self,
        timeout: float,
        activity: ActivityInterceptor,
        pending: Callable[[], int],
        on_idle: Callable[[], None],
    ) -> None:
        self.timeout = timeout
        self._activity = activity
        self._pending = pending
        self._on_idle = on_idle
        self._cancelled = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cloudtask-emulator-idle", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _run(self) -> None:
        busy = time.monotonic()
        while True:
            now = time.monotonic()
            if self._pending():
                busy = now
            remaining = max(busy, self._activity.last) + self.timeout - now
            if remaining <= 0:
                break
            if self._cancelled.wait(min(remaining, CHECK_INTERVAL)):
                return
        self._on_idle()
