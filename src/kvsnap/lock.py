"""Repository locks, so that prune never deletes what a backup is writing.

Object stores have no lock primitive, so a lock is an object under `locks/`
that names its holder. Backups, restores, verifies and drills take a shared
lock; prune takes an exclusive one. Taking a lock works in three steps:

1. write our own lock object;
2. list `locks/` and look for a lock that conflicts (any lock against an
   exclusive one, an exclusive lock against a shared one);
3. on a conflict, delete our object again and wait or fail.

Two processes that race for conflicting locks both see each other in step 2
and both back off, so neither goes on believing it has the repository. The
waiting side retries after a random pause, so one of them wins soon.

A holder rewrites its object every `LOCK_REFRESH_SECONDS`. A lock is stale
when it was not refreshed for `LOCK_STALE_SECONDS`, or when it names this
host and a process id that no longer runs. Stale locks of this host are
removed on sight (the process is gone for certain). Stale locks of other
hosts still block, because a clock or a network partition may be wrong;
`kvsnap unlock` removes them on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from kvsnap.errors import ObjectNotFound, RepositoryError, RepositoryLocked
from kvsnap.format import encode_json
from kvsnap.repository import Repository, format_timestamp, parse_timestamp

log = logging.getLogger(__name__)

LOCKS_DIR = "locks"
# restic uses the same pair: refresh every 5 minutes, stale after 30.
LOCK_REFRESH_SECONDS = 300.0
LOCK_STALE_SECONDS = 1800.0
# Pause between tries while waiting for a conflicting lock to go.
LOCK_RETRY_MIN_SECONDS = 0.5
LOCK_RETRY_MAX_SECONDS = 5.0


class LockInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The contents of one object under locks/."""

    id: str
    exclusive: bool
    hostname: str
    pid: int
    command: str
    created: str  # RFC 3339, UTC
    refreshed: str  # RFC 3339, UTC


@dataclass(frozen=True)
class HeldLock:
    """A lock as found in the repository, with the verdict on its staleness."""

    info: LockInfo
    path: str
    stale_reason: str | None

    @property
    def stale(self) -> bool:
        return self.stale_reason is not None

    def describe(self) -> str:
        kind = "exclusive" if self.info.exclusive else "shared"
        text = (
            f"{kind} lock {self.info.id} held by '{self.info.command}' "
            f"(pid {self.info.pid} on {self.info.hostname}, since {self.info.created})"
        )
        return f"{text}, stale: {self.stale_reason}" if self.stale else text


def lock_path(lock_id: str) -> str:
    return f"{LOCKS_DIR}/{lock_id}.json"


def _stale_reason(info: LockInfo, now: datetime) -> str | None:
    age = now - parse_timestamp(info.refreshed)
    if age > timedelta(seconds=LOCK_STALE_SECONDS):
        return f"not refreshed for {int(age.total_seconds() // 60)} minutes"
    if info.hostname == socket.gethostname() and not _process_alive(info.pid):
        return f"process {info.pid} no longer runs on this host"
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


async def list_locks(repo: Repository) -> list[HeldLock]:
    """Return every lock in the repository; unreadable lock objects are skipped."""
    now = datetime.now(UTC)
    found: list[HeldLock] = []
    for path, _size in await repo.storage.list(LOCKS_DIR):
        try:
            info = msgspec.json.decode(await repo.storage.get(path), type=LockInfo)
        except ObjectNotFound:
            continue  # released between the list and the read
        except (msgspec.DecodeError, ValueError):
            log.warning("ignoring unreadable lock object %s", path)
            continue
        found.append(HeldLock(info, path, _stale_reason(info, now)))
    return found


class RepositoryLock:
    """One lock taken by this process; use `acquire` rather than the constructor."""

    def __init__(self, repo: Repository, info: LockInfo) -> None:
        self.repo = repo
        self.info = info
        self._refresher: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return lock_path(self.info.id)

    async def _write(self) -> None:
        await self.repo.storage.put(self.path, encode_json(self.info))

    async def refresh(self) -> None:
        """Rewrite the lock object with the current time as its refresh time."""
        now = format_timestamp(datetime.now(UTC))
        self.info = msgspec.structs.replace(self.info, refreshed=now)
        await self._write()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LOCK_REFRESH_SECONDS)
            try:
                await self.refresh()
            except RepositoryError as exc:
                log.warning("could not refresh lock %s: %s", self.info.id, exc.message)

    async def release(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.repo.storage.delete(self.path)


async def _try_lock(repo: Repository, lock: RepositoryLock) -> HeldLock | None:
    """Write `lock` and return the first conflicting lock, or None if it holds."""
    await lock._write()
    for held in await list_locks(repo):
        if held.info.id == lock.info.id:
            continue
        if not (lock.info.exclusive or held.info.exclusive):
            continue
        if held.stale and held.info.hostname == socket.gethostname():
            log.warning("removing stale lock: %s", held.describe())
            await repo.storage.delete(held.path)
            continue
        await repo.storage.delete(lock.path)
        return held
    return None


async def acquire(
    repo: Repository, *, exclusive: bool, command: str, wait: float = 0.0
) -> RepositoryLock:
    """Take a lock, waiting up to `wait` seconds for conflicting locks to go.

    Raises RepositoryLocked naming the holder when the wait runs out.
    """
    now = format_timestamp(datetime.now(UTC))
    info = LockInfo(
        id=secrets.token_hex(8),
        exclusive=exclusive,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        command=command,
        created=now,
        refreshed=now,
    )
    lock = RepositoryLock(repo, info)
    deadline = time.monotonic() + wait
    while True:
        conflict = await _try_lock(repo, lock)
        if conflict is None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            hint = "wait for it to finish, or pass --lock-wait SECONDS"
            if conflict.stale:
                hint = (
                    "if no kvsnap process runs against this repository any more, "
                    "remove the lock with 'kvsnap unlock'"
                )
            raise RepositoryLocked(
                f"repository {repo.url} is locked: {conflict.describe()}", hint=hint
            )
        pause = random.uniform(LOCK_RETRY_MIN_SECONDS, LOCK_RETRY_MAX_SECONDS)
        await asyncio.sleep(min(pause, remaining))
    lock._refresher = asyncio.create_task(lock._refresh_forever())
    log.debug("took %s lock %s", "exclusive" if exclusive else "shared", info.id)
    return lock


@contextlib.asynccontextmanager
async def locked(
    repo: Repository, *, exclusive: bool, command: str, wait: float = 0.0
) -> AsyncIterator[RepositoryLock]:
    """Hold a lock for the duration of the block; release it on any exit."""
    lock = await acquire(repo, exclusive=exclusive, command=command, wait=wait)
    try:
        yield lock
    finally:
        await lock.release()


async def remove_locks(repo: Repository, *, everything: bool) -> list[HeldLock]:
    """Delete the stale locks (or all of them) and return what was deleted."""
    removed = []
    for held in await list_locks(repo):
        if everything or held.stale:
            await repo.storage.delete(held.path)
            removed.append(held)
    return removed
