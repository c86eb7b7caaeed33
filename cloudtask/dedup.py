"""Cloud Tasks' named-task dedup: a task id stays taken for a window after it was used.

No Django here: the emulator (which runs without Django) and the in-process transports share this
one implementation, so every local path refuses a reused task id the same way.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RecentNames:
    """Task names that stay taken for ``window`` seconds of ``clock`` after use."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        # Names are appended in expiry order: drop the expired ones from the front.
        while self._expiry:
            oldest = next(iter(self._expiry.values()))
            if oldest > now:
                break
            self._expiry.popitem(last=False)

    def is_taken(self, name: str) -> bool:
        with self._lock:
            now = self.clock()
            self._prune(now)
            expiry = self._expiry.get(name)
            return expiry is not None and expiry > now

    def take(self, name: str) -> None:
        """Mark name used now; it is taken until the window has passed."""
        with self._lock:
            self._expiry[name] = self.clock() + self.window
            self._expiry.move_to_end(name)

    def claim(self, name: str) -> bool:
        """Take name if it is free; False if it was taken."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            expiry = self._expiry.get(name)
            if expiry is not None and expiry > now:
                return False
            self._expiry[name] = now + self.window
            self._expiry.move_to_end(name)
            return True

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()
