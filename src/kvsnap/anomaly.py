"""Anomaly hold: keep the last clean snapshot when a namespace changes too much.

A namespace that was wiped or corrupted still backs up without error, and
retention would then age out every snapshot from before the damage. After
each backup, `check_anomaly` compares the new snapshot with the previous
backup of the same namespace. When the keys deleted or changed exceed a
share of the previous snapshot's keys, it puts a hold on the previous
snapshot, so prune keeps it until someone runs `kvsnap hold release`.

The previous backup is the newest older snapshot of the namespace that is
neither a pre-restore nor an imported snapshot and whose latest verify did
not fail. When its parts cannot be read, the next older one is used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kvsnap.diff import changed_fields, merge_by_key
from kvsnap.errors import VerifyError
from kvsnap.format import Manifest, Record
from kvsnap.repository import (
    IMPORTED_TAG,
    PRE_RESTORE_TAG,
    Repository,
    format_timestamp,
    snapshot_order,
)
from kvsnap.retention import passed_verify
from kvsnap.state import Hold, VerifyRecord, add_hold, holds, verify_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anomaly:
    """A new snapshot that deleted or changed more than `threshold` of the keys.

    `share` is (deleted + changed) / previous_keys.
    """

    namespace_id: str
    previous_id: str
    new_id: str
    deleted: int
    changed: int
    added: int
    previous_keys: int
    share: float
    threshold: float

    def describe(self) -> str:
        return (
            f"snapshot {self.new_id} deleted {self.deleted} and changed"
            f" {self.changed} of the {self.previous_keys} keys of snapshot"
            f" {self.previous_id} ({self.share:.1%}, above {self.threshold:.0%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "anomaly", **asdict(self)}


def earlier_backups(
    manifests: list[Manifest],
    new: Manifest,
    verified: Mapping[str, VerifyRecord] | None = None,
) -> list[Manifest]:
    """Return the snapshots that can be `new`'s baseline, newest first.

    These are the snapshots of `new`'s namespace older than `new`, except
    three kinds. Pre-restore snapshots contain only the keys a restore
    replaced. Imported snapshots contain an export file, not what the last
    backup read. Snapshots whose latest verify in `verified` failed may be
    damaged. A snapshot without a verify record counts as good.
    """
    verified = verified or {}
    order = snapshot_order(new)
    earlier = [
        manifest
        for manifest in manifests
        if manifest.namespace_id == new.namespace_id
        and manifest.id != new.id
        and PRE_RESTORE_TAG not in manifest.tags
        and IMPORTED_TAG not in manifest.tags
        and snapshot_order(manifest) < order
        and not _failed_verify(verified.get(manifest.id))
    ]
    return sorted(earlier, key=snapshot_order, reverse=True)


def previous_backup(
    manifests: list[Manifest],
    new: Manifest,
    verified: Mapping[str, VerifyRecord] | None = None,
) -> Manifest | None:
    """Return the newest of `earlier_backups`, or None when there is none."""
    candidates = earlier_backups(manifests, new, verified)
    return candidates[0] if candidates else None


def _failed_verify(record: VerifyRecord | None) -> bool:
    return record is not None and not passed_verify(record)


class _BaselineUnreadable(Exception):
    """A part of the previous backup failed its checks while being compared."""

    def __init__(self, error: VerifyError) -> None:
        super().__init__(str(error))
        self.error = error


async def check_anomaly(
    repo: Repository, new: Manifest, *, share: float
) -> Anomaly | None:
    """Compare `new` with the previous backup; on excess, hold the previous one.

    Returns the Anomaly when deleted plus changed keys exceed `share` of the
    previous snapshot's keys, else None. A pre-restore snapshot, a first
    snapshot and a previous snapshot without keys never count as anomalies.
    When a part of the previous backup is damaged, the next older backup is
    compared instead, and when no earlier backup can be read, the check
    logs a warning and returns None. An existing hold on the previous
    snapshot is kept with its reason. Both snapshots stream part by part,
    so memory contains one part of each. Raises CorruptPart when a part of
    `new` is damaged, and RepositoryError when the store fails.
    """
    if PRE_RESTORE_TAG in new.tags:
        return None
    manifests = await repo.snapshots(new.namespace_id)
    candidates = earlier_backups(manifests, new, await verify_records(repo))
    for previous in candidates:
        if previous.keys == 0:
            return None
        try:
            counts = await _count_changes(repo, previous, new)
        except _BaselineUnreadable as exc:
            log.warning(
                "anomaly check of snapshot %s: cannot compare with snapshot %s,"
                " so trying the next older backup: %s",
                new.id,
                previous.id,
                exc.error,
                extra={"namespace": new.namespace_id, "snapshot": new.id},
            )
            continue
        return await _judge(repo, previous, new, counts, share)
    if candidates:
        log.warning(
            "anomaly check of snapshot %s skipped: no earlier backup of"
            " namespace %s could be read; run `kvsnap verify --read-data`",
            new.id,
            new.namespace_id,
            extra={"namespace": new.namespace_id, "snapshot": new.id},
        )
    return None


@dataclass(frozen=True)
class _Changes:
    deleted: int
    changed: int
    added: int
    previous_keys: int


async def _count_changes(
    repo: Repository, previous: Manifest, new: Manifest
) -> _Changes:
    """Count the keys `new` deleted, changed and added relative to `previous`.

    Raises _BaselineUnreadable when a part of `previous` fails its checks.
    """
    deleted = changed = added = previous_keys = 0
    pairs = merge_by_key(_baseline_records(repo, previous), repo.iter_records(new))
    async for old, current in pairs:
        if old is None:
            added += 1
            continue
        previous_keys += 1
        if current is None:
            deleted += 1
        elif changed_fields(old, current):
            changed += 1
    return _Changes(deleted, changed, added, previous_keys)


async def _baseline_records(
    repo: Repository, previous: Manifest
) -> AsyncIterator[Record]:
    """Yield the records of `previous`, telling its damage apart from `new`'s."""
    try:
        async for record in repo.iter_records(previous):
            yield record
    except VerifyError as exc:
        raise _BaselineUnreadable(exc) from exc


async def _judge(
    repo: Repository,
    previous: Manifest,
    new: Manifest,
    counts: _Changes,
    share: float,
) -> Anomaly | None:
    """Return the Anomaly and hold `previous` when the changes exceed `share`."""
    deleted, changed = counts.deleted, counts.changed
    previous_keys = counts.previous_keys
    measured = (deleted + changed) / previous_keys if previous_keys else 0.0
    log.debug(
        "snapshot %s against %s: %d deleted, %d changed, %d added of %d keys",
        new.id,
        previous.id,
        deleted,
        changed,
        counts.added,
        previous_keys,
        extra={"namespace": new.namespace_id, "snapshot": new.id},
    )
    if measured <= share:
        return None

    anomaly = Anomaly(
        namespace_id=new.namespace_id,
        previous_id=previous.id,
        new_id=new.id,
        deleted=deleted,
        changed=changed,
        added=counts.added,
        previous_keys=previous_keys,
        share=measured,
        threshold=share,
    )
    await _hold_previous(repo, previous, anomaly)
    return anomaly


async def _hold_previous(
    repo: Repository, previous: Manifest, anomaly: Anomaly
) -> None:
    existing = {hold.snapshot_id: hold for hold in await holds(repo)}
    if previous.id in existing:
        log.warning(
            "anomaly: %s; snapshot %s is already held: %s",
            anomaly.describe(),
            previous.id,
            existing[previous.id].reason,
            extra={"namespace": anomaly.namespace_id, "snapshot": anomaly.new_id},
        )
        return
    await add_hold(
        repo,
        Hold(
            snapshot_id=previous.id,
            namespace_id=previous.namespace_id,
            created=format_timestamp(datetime.now(UTC)),
            reason=f"anomaly: {anomaly.describe()}",
            trigger_snapshot=anomaly.new_id,
            share=round(anomaly.share, 4),
        ),
    )
