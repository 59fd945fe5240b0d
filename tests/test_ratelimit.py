"""The shared request budget and the retry delays, on a simulated clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kvsnap.ratelimit import RateLimiter, RetryPolicy, parse_retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_limiter_spaces_requests_over_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock=clock, sleep=clock.sleep)

    async def take(n: int) -> list[float]:
        starts = []
        for _ in range(n):
            await limiter.acquire()
            starts.append(clock.now)
        return starts

    starts = asyncio.run(take(7))

    assert starts[:3] == [0.0, 0.0, 0.0]
    assert all(start >= 10.0 for start in starts[3:6])
    assert starts[6] >= 20.0
    # No window ever holds more than three starts.
    for start in starts:
        in_window = [s for s in starts if start <= s < start + 10.0]
        assert len(in_window) <= 3


def test_limiter_pause_holds_every_request() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 1.0, clock=clock, sleep=clock.sleep)
    limiter.pause_until(70.0)

    asyncio.run(limiter.acquire())

    assert clock.now == 70.0
    assert limiter.waited_seconds == 70.0


def test_backoff_honours_long_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=600.0)

    assert policy.backoff(1, retry_after=300.0) == 300.0
    assert policy.backoff(1, retry_after=7.0) == 7.0
    assert policy.backoff(1, retry_after=10_000.0) == 600.0


def test_backoff_doubles_with_jitter_and_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)

    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delay = policy.backoff(attempt)
        assert ceiling / 2 <= delay <= ceiling


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-3") is None


def test_limiter_logs_long_waits(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 60.0, clock=clock, sleep=clock.sleep)

    async def take_two() -> None:
        await limiter.acquire()
        await limiter.acquire()

    with caplog.at_level(logging.INFO, logger="kvsnap.ratelimit"):
        asyncio.run(take_two())

    assert "waiting 60 s" in caplog.text
