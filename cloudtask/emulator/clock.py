"""Clocks the emulator schedules by.

Scheduling (schedule_time, backoff, rate limits, dedup windows) reads time from a clock object,
so tests can replace wall time with a :class:`ManualClock` and check a backoff sequence of
minutes without waiting for it. HTTP timeouts (dispatch deadlines) always use real time: they
bound a real socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    """Seconds since the epoch, plus a way to learn when time jumps."""

    def now(self) -> float:
        raise NotImplementedError

    def wait_timeout(self, delay: float) -> float | None:
        """Real seconds to sleep so that ``delay`` clock seconds pass; None means until woken."""
        raise NotImplementedError

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the clock moves by other means than passing time."""

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        pass


class SystemClock(Clock):
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def wait_timeout(self, delay: float) -> float | None:
        return max(0.0, delay)


class ManualClock(Clock):
    """A clock that only moves when told to, for deterministic tests.

    ``advance()`` and ``set()`` wake the emulator's scheduler, so work that became due is
    dispatched at once (over real HTTP).
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def wait_timeout(self, delay: float) -> float | None:
        # Time passes only through advance()/set(), which notify subscribers.
        return None

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError(f"ManualClock cannot go backwards (advance({seconds!r}))")
        with self._lock:
            self._now += seconds
            now = self._now
        self._notify()
        return now

    def set(self, when: float) -> None:
        """Jump to ``when`` (seconds since the epoch)."""
        with self._lock:
            self._now = float(when)
        self._notify()

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def _notify(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()
