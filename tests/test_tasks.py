"""Cancelling helper tasks while the caller itself may be cancelled."""

from __future__ import annotations

import asyncio

import pytest

from kvsnap.tasks import cancel_and_wait


async def slow_to_stop() -> None:
    """Sleep, and take 0.2 s to clean up once cancelled."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)
        raise


def test_cancel_keeps_caller_cancellation() -> None:
    async def caller() -> None:
        helper = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        await cancel_and_wait(helper)

    async def main() -> None:
        outer = asyncio.create_task(caller())
        await asyncio.sleep(0.05)  # the caller now waits for the helper to stop
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(main())


def test_cancel_returns_task_error() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise OSError("cleanup failed") from None

    async def main() -> BaseException | None:
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        return await cancel_and_wait(task)

    error = asyncio.run(main())

    assert isinstance(error, OSError)
    assert str(error) == "cleanup failed"


def test_cancel_of_cancelled_task_returns_none() -> None:
    async def main() -> BaseException | None:
        task = asyncio.create_task(asyncio.sleep(60))
        await asyncio.sleep(0)
        return await cancel_and_wait(task)

    assert asyncio.run(main()) is None
