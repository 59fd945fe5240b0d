"""Facts about snapshots that arrive after they are written: verify results, holds.

Manifests never change once written, so facts that arrive later live beside
them under `state/`, one small JSON object per snapshot:

    state/verify/<snapshot id>.json   the last quick and the last full check
    state/holds/<snapshot id>.json    a hold that keeps the snapshot from prune

Verify records are advisory: an unreadable one only means the snapshot is
checked again. Holds are binding for prune, so an unreadable hold object
still protects the snapshot named by its file name.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from kvsnap.errors import ObjectNotFound
from kvsnap.format import encode_json
from kvsnap.limits import STORAGE_CONCURRENCY
from kvsnap.repository import Repository, format_timestamp

log = logging.getLogger(__name__)

STATE_DIR = "state"
VERIFY_DIR = f"{STATE_DIR}/verify"
HOLDS_DIR = f"{STATE_DIR}/holds"

T = TypeVar("T")


class VerifyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of the latest checks of one snapshot.

    `checked` and `ok` describe the latest check of any kind; the
    `read_data_*` fields the latest check that read and hashed every part.
    """

    snapshot_id: str
    namespace_id: str
    checked: str  # RFC 3339, UTC
    ok: bool
    problems: list[str] = []
    read_data_checked: str | None = None
    read_data_ok: bool | None = None


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """A reason to keep a snapshot beyond retention until someone releases it."""

    snapshot_id: str
    namespace_id: str
    created: str  # RFC 3339, UTC
    reason: str
    trigger_snapshot: str | None = None  # the snapshot that looked anomalous
    share: float | None = None  # share of keys changed or deleted


def verify_path(snapshot_id: str) -> str:
    return f"{VERIFY_DIR}/{snapshot_id}.json"


def hold_path(snapshot_id: str) -> str:
    return f"{HOLDS_DIR}/{snapshot_id}.json"


async def record_verify(
    repo: Repository,
    *,
    snapshot_id: str,
    namespace_id: str,
    read_data: bool,
    ok: bool,
    problems: list[str],
) -> VerifyRecord:
    """Store the outcome of a check, keeping the last full read when this was quick."""
    now = format_timestamp(datetime.now(UTC))
    previous = await _read(repo, verify_path(snapshot_id), VerifyRecord)
    record = VerifyRecord(
        snapshot_id=snapshot_id,
        namespace_id=namespace_id,
        checked=now,
        ok=ok,
        problems=problems[:20],
        read_data_checked=now
        if read_data
        else (previous and previous.read_data_checked),
        read_data_ok=ok if read_data else (previous and previous.read_data_ok),
    )
    await repo.storage.put(verify_path(snapshot_id), encode_json(record))
    return record


async def verify_records(repo: Repository) -> dict[str, VerifyRecord]:
    """Return every verify record by snapshot id."""
    paths = [path for path, _size in await repo.storage.list(VERIFY_DIR)]
    records = await _read_all(repo, paths, VerifyRecord)
    return {record.snapshot_id: record for record in records if record is not None}


async def add_hold(repo: Repository, hold: Hold) -> None:
    """Hold a snapshot; holding it again replaces the reason."""
    await repo.storage.put(hold_path(hold.snapshot_id), encode_json(hold))
    log.warning(
        "holding snapshot %s beyond retention: %s",
        hold.snapshot_id,
        hold.reason,
        extra={"namespace": hold.namespace_id, "snapshot": hold.snapshot_id},
    )


async def holds(repo: Repository) -> list[Hold]:
    """Return every hold, oldest first; an unreadable one is named by its file."""
    paths = [path for path, _size in await repo.storage.list(HOLDS_DIR)]
    found = await _read_all(repo, paths, Hold)
    result = []
    for path, hold in zip(paths, found, strict=True):
        if hold is None:
            snapshot_id = path.rpartition("/")[2].removesuffix(".json")
            hold = Hold(
                snapshot_id=snapshot_id,
                namespace_id="",
                created="",
                reason=f"its hold object {path} is unreadable; "
                "release it to let prune remove the snapshot",
            )
        result.append(hold)
    return sorted(result, key=lambda hold: (hold.created, hold.snapshot_id))


async def release_hold(repo: Repository, snapshot_id: str) -> Hold | None:
    """Remove the hold on a snapshot; return it, or None if it was not held."""
    path = hold_path(snapshot_id)
    if not await repo.storage.exists(path):
        return None
    hold = await _read(repo, path, Hold)
    await repo.storage.delete(path)
    return hold or Hold(
        snapshot_id=snapshot_id,
        namespace_id="",
        created="",
        reason="unreadable hold object",
    )


async def forget_snapshot(repo: Repository, snapshot_id: str) -> None:
    """Delete the verify record of a snapshot that prune removed."""
    await repo.storage.delete(verify_path(snapshot_id))


async def _read(repo: Repository, path: str, kind: type[T]) -> T | None:
    try:
        data = await repo.storage.get(path)
    except ObjectNotFound:
        return None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("ignoring unreadable state object %s", repo.storage.describe(path))
        return None


async def _read_all(
    repo: Repository, paths: list[str], kind: type[T]
) -> list[T | None]:
    """Read each path in order; None stands for a missing or unreadable object."""
    gate = asyncio.Semaphore(STORAGE_CONCURRENCY)

    async def one(path: str) -> T | None:
        async with gate:
            return await _read(repo, path, kind)

    return list(await asyncio.gather(*(one(path) for path in paths)))
