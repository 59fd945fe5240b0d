"""Keeping the C heap from holding on to freed memory (glibc only).

Reading parts and sending bulk writes allocate blocks of several MB among
many small long-lived objects. glibc keeps freed blocks in its heaps, and
it gives each thread that allocates (the event loop, the zstd worker,
obstore's runtime) a heap of its own, up to eight per core. So the
resident size grows with every part or batch while the live data stays
the same: bench/resources.py measured a restore of 1,000,000 keys at
199 MiB with about 20 MB of live Python objects.

`limit_arenas` caps the heaps at two when a command starts, and
`release_free_heap` hands free pages back after each part or batch. Both
do nothing under another C library.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

# mallopt parameter number of M_ARENA_MAX in glibc's malloc.h.
_M_ARENA_MAX = -8
ARENAS = 2


@functools.cache
def _libc() -> Any | None:
    try:
        # The symbols of the running process, which include its C library.
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 - glibc has it, other C libraries do not
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> None:
    """Cap the number of glibc heaps; call it before threads start."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_free_heap() -> None:
    """Return the C heap's free pages to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
