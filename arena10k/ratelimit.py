"""One limiter per (provider, key, model): requests and tokens per minute, and adaptive concurrency.

Concurrency follows AIMD, as TCP does: a 429 halves the number of calls allowed in flight and pauses
new calls for the server's Retry-After; every success grows the allowance again by about one call per
window, up to the configured maximum. Calls therefore run as fast as the provider's limit allows,
without a user having to know that limit.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class RateLimiter:
    def __init__(self, max_concurrency: int, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None, clock=time.monotonic, sleep=time.sleep):
        self.max_concurrency = max_concurrency
        self.concurrency = float(max_concurrency)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._in_flight = 0
        self._paused_until = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (start time, tokens) of calls in the last minute
        self._condition = threading.Condition()
        self._clock, self._sleep = clock, sleep
        self.throttled_count = 0
        # The endpoint's health, shared by every call to it: an outage is failures with no success among them.
        self._last_success = clock()
        self._failing_since: float | None = None

    def acquire(self, tokens: int = 0) -> None:
        """Blocks until a call of about `tokens` tokens may start."""
        while True:
            with self._condition:
                wait = self._wait_seconds(tokens)
                if wait <= 0:
                    self._in_flight += 1
                    self._recent.append((self._clock(), tokens))
                    return
                if wait == float("inf"):
                    self._condition.wait()
                    continue
            self._sleep(min(wait, 1.0))

    def _wait_seconds(self, tokens: int) -> float:
        now = self._clock()
        while self._recent and now - self._recent[0][0] >= 60:
            self._recent.popleft()
        waits = [self._paused_until - now]
        if self._in_flight >= max(1, int(self.concurrency)):
            return float("inf")  # a release wakes us
        if self.requests_per_minute and len(self._recent) >= self.requests_per_minute:
            waits.append(60 - (now - self._recent[0][0]))
        if self.tokens_per_minute and self._recent:
            used = sum(t for _, t in self._recent)
            if used + tokens > self.tokens_per_minute:
                waits.append(60 - (now - self._recent[0][0]))
        return max(waits)

    def record_outcome(self, succeeded: bool) -> None:
        """A call's outcome for the endpoint's health (429s are limits, not outages, and are not recorded)."""
        with self._condition:
            now = self._clock()
            if succeeded:
                self._last_success, self._failing_since = now, None
            elif self._failing_since is None:
                self._failing_since = now

    def seconds_down(self, since: float | None = None) -> float:
        """How long calls have failed with no success in between (0 when the last outcome was a success); with
        `since`, 0 also when a call succeeded after that time."""
        with self._condition:
            if self._failing_since is None or (since is not None and self._last_success > since):
                return 0.0
            return self._clock() - self._failing_since

    def now(self) -> float:
        return self._clock()

    def release(self, *, throttled: bool = False, retry_after: float | None = None) -> None:
        with self._condition:
            self._in_flight -= 1
            if throttled:
                self.throttled_count += 1
                self.concurrency = max(1.0, self.concurrency / 2)
                self._paused_until = max(self._paused_until, self._clock() + (retry_after or 1.0))
            else:
                self.concurrency = min(self.max_concurrency, self.concurrency + 1 / self.concurrency)
            self._condition.notify_all()
