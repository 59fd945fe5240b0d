"""Stopping helper tasks without losing the caller's own cancellation.

The usual `task.cancel()` then `await task` inside a suppress of
CancelledError also suppresses a CancelledError aimed at the caller (Ctrl-C
reaches an asyncio program as a cancellation of its main task), when it
arrives while the caller waits. `cancel_and_wait` waits with
`asyncio.wait`, which lets the caller's cancellation through.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> BaseException | None:
    """Cancel `task`, wait until it ends, and return its exception, if any.

    A task that ended by the cancellation returns None. CancelledError
    raised here is always the caller's own.
    """
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    # A task that had ended already is read at once, with no await, so that
    # a generator's clean-up marks its error as retrieved even during the
    # event loop's shutdown.
    if task.cancelled():
        return None
    return task.exception()
