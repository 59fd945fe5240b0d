"""A request budget shared by every request of a run, and retry delays.

Cloudflare counts every API request of a token against one budget (1,200
requests per 5 minutes), so all concurrent requests of a run take their slot
from one `RateLimiter`. After a 429 the server names a wait in Retry-After;
`pause_until` makes every request wait for it, not only the one that was
answered 429.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvsnap import limits

# Slots are released this long after the window would allow, because the
# server starts its window when a request arrives, a little after we sent it.
_WINDOW_MARGIN_SECONDS = 0.25
# Waits at least this long are logged, so a long pause does not look like a hang.
_LOGGED_WAIT_SECONDS = 5.0

log = logging.getLogger(__name__)


class RateLimiter:
    """Sliding-window limiter: at most `requests` starts in any `window` seconds."""

    def __init__(
        self,
        requests: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self.requests = requests
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0

    def pause_until(self, deadline: float) -> None:
        """Hold every request until `deadline` (a value of the limiter's clock)."""
        self._paused_until = max(self._paused_until, deadline)

    async def acquire(self) -> None:
        """Wait for a slot in the budget and take it."""
        async with self._lock:
            while True:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self.window:
                    self._starts.popleft()
                wait = self._paused_until - now
                if len(self._starts) >= self.requests:
                    oldest = self._starts[0] + self.window + _WINDOW_MARGIN_SECONDS
                    wait = max(wait, oldest - now)
                if wait <= 0:
                    self._starts.append(now)
                    return
                self.waited_seconds += wait
                if wait >= _LOGGED_WAIT_SECONDS:
                    log.info(
                        "request budget spent: waiting %.0f s before the next request",
                        wait,
                    )
                await self._sleep(wait)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request that failed transiently."""

    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS
    base_delay: float = limits.DEFAULT_BACKOFF_BASE_SECONDS
    max_delay: float = limits.DEFAULT_BACKOFF_MAX_SECONDS
    max_retry_after: float = limits.DEFAULT_MAX_RETRY_AFTER_SECONDS

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Return the delay before attempt `attempt + 1` (attempts count from 1).

        A server's Retry-After is honoured as given, up to `max_retry_after`,
        also above the 60 s that the Cloudflare SDK's own retry accepts.
        Otherwise the delay doubles from `base_delay` up to `max_delay`, with
        jitter (see `backoff_delay`).
        """
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        return backoff_delay(attempt, self.base_delay, self.max_delay)


def backoff_delay(attempt: int, base: float, maximum: float) -> float:
    """Return an exponential delay with jitter after failed attempt `attempt`.

    The ceiling doubles from `base` up to `maximum`, and the delay is drawn
    from its upper half so that concurrent clients do not retry in step.
    """
    ceiling = min(maximum, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Parse a Retry-After header given in seconds; None when absent or invalid.

    Cloudflare sends whole seconds. The HTTP-date form is not used by its API,
    so it counts as absent and the normal backoff applies.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
