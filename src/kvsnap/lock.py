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
when it was not refreshed for `LOCK_STALE_SECONDS`, when its object cannot
be read, or when it names a process that no longer runs. Only the last kind
is removed on sight, and only when the lock comes from this host, this boot
and this PID namespace (its `scope`): then the process is gone for certain.
Containers can share a host name while their process ids are invisible to
each other, and the scope separates them. Every other stale lock still
blocks, because a clock, a paused process or a network partition may be
misleading; `kvsnap unlock` removes those on purpose.

A holder that finds its own lock object gone (removed by `kvsnap unlock` or
by mistake), or that could not refresh it for so long that others may call
it stale, stops its operation with RepositoryLocked instead of going on
unprotected.
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
from pathlib import Path

import msgspec

from kvsnap.errors import ObjectNotFound, RepositoryError, RepositoryLocked
from kvsnap.format import encode_json
from kvsnap.repository import Repository, format_timestamp, parse_timestamp
from kvsnap.tasks import cancel_and_wait

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
    scope: str = ""  # boot id and PID namespace; "" where they are unknown


@dataclass(frozen=True)
class HeldLock:
    """A lock as found in the repository, with the verdict on its staleness."""

    info: LockInfo
    path: str
    stale_reason: str | None
    removable: bool = False  # its process is gone for certain

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


def process_scope() -> str:
    """Return this boot's id and this PID namespace, or "" off Linux.

    Two processes can compare pids only when both values are equal.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _judge(info: LockInfo, path: str, now: datetime) -> HeldLock:
    """Return the lock with its staleness, and whether it may be removed on sight."""
    same_scope = (
        info.hostname == socket.gethostname()
        and bool(info.scope)
        and info.scope == process_scope()
    )
    if same_scope and not _process_alive(info.pid):
        reason = f"process {info.pid} no longer runs on this host"
        return HeldLock(info, path, reason, removable=True)
    age = now - parse_timestamp(info.refreshed)
    if age > timedelta(seconds=LOCK_STALE_SECONDS):
        reason = f"not refreshed for {int(age.total_seconds() // 60)} minutes"
        return HeldLock(info, path, reason)
    return HeldLock(info, path, None)


def _unreadable(path: str) -> HeldLock:
    """Stand in for a lock object that cannot be decoded.

    It counts as a stale shared lock: it blocks prune, not backups, until
    `kvsnap unlock` removes it, because its holder might still be running.
    """
    lock_id = path.rpartition("/")[2].removesuffix(".json")
    info = LockInfo(
        id=lock_id,
        exclusive=False,
        hostname="unknown host",
        pid=0,
        command="unknown command",
        created="unknown",
        refreshed="unknown",
    )
    return HeldLock(info, path, "its lock object is unreadable")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


async def list_locks(repo: Repository) -> list[HeldLock]:
    """Return every lock in the repository; an unreadable one counts as stale."""
    now = datetime.now(UTC)
    found: list[HeldLock] = []
    for path, _size in await repo.storage.list(LOCKS_DIR):
        try:
            info = msgspec.json.decode(await repo.storage.get(path), type=LockInfo)
            held = _judge(info, path, now)
        except ObjectNotFound:
            continue  # released between the list and the read
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            log.warning("lock object %s is unreadable", repo.storage.describe(path))
            held = _unreadable(path)
        found.append(held)
    return found


class RepositoryLock:
    """One lock taken by this process; use `acquire` rather than the constructor."""

    def __init__(
        self,
        repo: Repository,
        info: LockInfo,
        *,
        refresh_seconds: float = LOCK_REFRESH_SECONDS,
    ) -> None:
        self.repo = repo
        self.info = info
        self.refresh_seconds = refresh_seconds
        # Why the lock no longer protects its holder; None while it does.
        self.lost: str | None = None
        self._refreshed_at = time.monotonic()
        self._refresher: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None

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

    async def _check_and_refresh(self) -> str | None:
        """Refresh the lock; return why it stopped protecting us, or None."""
        try:
            if not await self.repo.storage.exists(self.path):
                return "its lock object was removed by another process"
            await self.refresh()
        except RepositoryError as exc:
            failing = time.monotonic() - self._refreshed_at
            log.warning("could not refresh lock %s: %s", self.info.id, exc.message)
            if failing + self.refresh_seconds >= LOCK_STALE_SECONDS:
                return f"it could not be refreshed for {failing / 60:.0f} minutes"
            return None
        self._refreshed_at = time.monotonic()
        return None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            self.lost = await self._check_and_refresh()
            if self.lost is not None:
                log.error("lost lock %s: %s", self.info.id, self.lost)
                if self._owner is not None:
                    self._owner.cancel()
                return

    async def release(self) -> None:
        if self._refresher is not None:
            error = await cancel_and_wait(self._refresher)
            self._refresher = None
            if error is not None:
                raise error
        await self.repo.storage.delete(self.path)


async def _try_lock(repo: Repository, lock: RepositoryLock) -> HeldLock | None:
    """Write `lock` and return the first conflicting lock, or None if it holds.

    On a conflict, and on any error after the write, our object is deleted
    again, so a failed attempt never leaves a lock behind.
    """
    await lock._write()
    try:
        conflict = await _first_conflict(repo, lock.info)
    except BaseException:
        with contextlib.suppress(RepositoryError):
            await repo.storage.delete(lock.path)
        raise
    if conflict is not None:
        await repo.storage.delete(lock.path)
    return conflict


async def _first_conflict(repo: Repository, mine: LockInfo) -> HeldLock | None:
    for held in await list_locks(repo):
        if held.info.id == mine.id:
            continue
        # An unreadable lock may have been exclusive, so it blocks prune only.
        if not (mine.exclusive or held.info.exclusive):
            continue
        if held.removable:
            log.warning("removing stale lock: %s", held.describe())
            await repo.storage.delete(held.path)
            continue
        return held
    return None


async def acquire(
    repo: Repository,
    *,
    exclusive: bool,
    command: str,
    wait: float = 0.0,
    refresh_seconds: float = LOCK_REFRESH_SECONDS,
) -> RepositoryLock:
    """Take a lock, waiting up to `wait` seconds for conflicting locks to go.

    Raises RepositoryLocked naming the holder when the wait runs out, or at
    once when the conflicting lock is stale: a stale lock does not go by
    itself. The task that calls this is cancelled if the lock is lost later.
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
        scope=process_scope(),
    )
    lock = RepositoryLock(repo, info, refresh_seconds=refresh_seconds)
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        conflict = await _try_lock(repo, lock)
        if conflict is None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or conflict.stale:
            hint = "wait for it to finish, or pass --lock-wait SECONDS"
            if conflict.stale:
                hint = (
                    "if no kvsnap process runs against this repository any more, "
                    "remove the lock with 'kvsnap unlock'"
                )
            raise RepositoryLocked(
                f"repository {repo.url} is locked: {conflict.describe()}", hint=hint
            )
        if not waiting:
            waiting = True
            log.info(
                "waiting up to %.0f s for the repository: %s",
                remaining,
                conflict.describe(),
            )
        pause = random.uniform(LOCK_RETRY_MIN_SECONDS, LOCK_RETRY_MAX_SECONDS)
        await asyncio.sleep(min(pause, remaining))
    lock._owner = asyncio.current_task()
    lock._refresher = asyncio.create_task(lock._refresh_forever())
    log.debug("took %s lock %s", "exclusive" if exclusive else "shared", info.id)
    return lock


@contextlib.asynccontextmanager
async def locked(
    repo: Repository,
    *,
    exclusive: bool,
    command: str,
    wait: float = 0.0,
    refresh_seconds: float = LOCK_REFRESH_SECONDS,
) -> AsyncIterator[RepositoryLock]:
    """Hold a lock for the duration of the block; release it on any exit.

    When the lock is lost while the block runs, the block is cancelled and
    RepositoryLocked is raised in its place.
    """
    lock = await acquire(
        repo,
        exclusive=exclusive,
        command=command,
        wait=wait,
        refresh_seconds=refresh_seconds,
    )
    try:
        yield lock
    except asyncio.CancelledError:
        if lock.lost is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise RepositoryLocked(
            f"stopped '{command}' because its repository lock {lock.info.id} is "
            f"lost: {lock.lost}",
            hint="check that no one ran 'kvsnap unlock' while it ran, then run "
            "it again",
        ) from None
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
