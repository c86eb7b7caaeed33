"""Per-queue policies: retry/backoff (RetryConfig) and dispatch rate (RateLimits).

Defaults are the ones Google documents for a queue created without the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Google's queue defaults.
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF = 0.1
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_MAX_DOUBLINGS = 16
DEFAULT_MAX_DISPATCHES_PER_SECOND = 500.0
DEFAULT_MAX_CONCURRENT_DISPATCHES = 1000
# Google's caps on what a queue may ask for.
MAX_DISPATCHES_PER_SECOND = 500.0
MAX_CONCURRENT_DISPATCHES = 5000


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # counts the first attempt; -1 is unlimited
    max_retry_duration: float = 0.0  # seconds from the first attempt; 0 is unlimited
    min_backoff: float = DEFAULT_MIN_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_doublings: int = DEFAULT_MAX_DOUBLINGS

    def backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed attempts (1 or more).

        The interval starts at min_backoff and doubles max_doublings times; after that it
        grows by the last doubled interval each time; never above max_backoff. Google's example
        (10 s, 300 s, 3 doublings) gives 10, 20, 40, 80, 160, 240, 300, 300.
        """
        index = max(0, failures - 1)
        if index <= self.max_doublings:
            delay = self.min_backoff * (2.0**index)
        else:
            step = self.min_backoff * (2.0**self.max_doublings)
            delay = step * (index - self.max_doublings + 1)
        return min(delay, self.max_backoff)

    def exhausted(self, attempts: int, since_first_attempt: float) -> bool:
        """True when no further attempt may be made: both limits are reached."""
        attempts_reached = self.max_attempts != -1 and attempts >= self.max_attempts
        duration_reached = (
            self.max_retry_duration <= 0 or since_first_attempt >= self.max_retry_duration
        )
        return attempts_reached and duration_reached


def default_burst(rate: float) -> int:
    """Burst size Google picks for a rate (100 for the default 500/s)."""
    return max(1, math.ceil(rate / 5))


class TokenBucket:
    """max_dispatches_per_second with max_burst_size, on the emulator's clock."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def reconfigure(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, float(burst))

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = max(self._last, now)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        self._refill(now)
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) / self.rate
