"""A sliding-window request budget, like Cloudflare's 1,200 per 5 minutes.

The emulator keeps one window for the whole server (Cloudflare's budget is
per user or token; the emulator usually serves one token), and every request
under /client/v4 draws from it, authenticated or not. A request that
finds the budget spent is refused and does not use up a slot; its
``Retry-After`` is the whole seconds, rounded up, until the oldest request in
the window leaves it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    def __init__(
        self,
        requests: int,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests < 1 or seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and seconds > 0")
        self.requests = requests
        self.seconds = seconds
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """Take a slot and return None, or return the seconds to wait."""
        with self._lock:
            now = self._clock()
            while self._times and self._times[0] <= now - self.seconds:
                self._times.popleft()
            if len(self._times) < self.requests:
                self._times.append(now)
                return None
            wait = self._times[0] + self.seconds - now
            return max(1, math.ceil(wait))

    def reset(self) -> None:
        with self._lock:
            self._times.clear()
