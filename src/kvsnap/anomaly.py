"""Anomaly hold: keep the last clean snapshot when a namespace changes too much.

A namespace that was wiped or corrupted still backs up without error, and
retention would then age out every snapshot from before the damage. After
each backup, `check_anomaly` compares the new snapshot with the previous
backup of the same namespace. When the keys deleted or changed exceed a
share of the previous snapshot's keys, it puts a hold on the previous
snapshot, so prune keeps it until someone runs `kvsnap hold release`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kvsnap.diff import changed_fields, merge_by_key
from kvsnap.format import Manifest
from kvsnap.repository import (
    PRE_RESTORE_TAG,
    Repository,
    format_timestamp,
    snapshot_order,
)
from kvsnap.state import Hold, add_hold, holds

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


def previous_backup(manifests: list[Manifest], new: Manifest) -> Manifest | None:
    """Return the newest snapshot of `new`'s namespace older than `new`.

    Pre-restore snapshots contain only the keys a restore replaced, so they
    are skipped.
    """
    order = snapshot_order(new)
    earlier = [
        manifest
        for manifest in manifests
        if manifest.namespace_id == new.namespace_id
        and manifest.id != new.id
        and PRE_RESTORE_TAG not in manifest.tags
        and snapshot_order(manifest) < order
    ]
    return max(earlier, key=snapshot_order, default=None)


async def check_anomaly(
    repo: Repository, new: Manifest, *, share: float
) -> Anomaly | None:
    """Compare `new` with the previous backup; on excess, hold the previous one.

    Returns the Anomaly when deleted plus changed keys exceed `share` of the
    previous snapshot's keys, else None. A pre-restore snapshot, a first
    snapshot and a previous snapshot without keys never count as anomalies.
    An existing hold on the previous snapshot is kept with its reason.
    Both snapshots stream part by part, so memory contains one part of each.
    Raises CorruptPart when a part of either snapshot is damaged.
    """
    if PRE_RESTORE_TAG in new.tags:
        return None
    previous = previous_backup(await repo.snapshots(new.namespace_id), new)
    if previous is None or previous.keys == 0:
        return None

    deleted = changed = added = previous_keys = 0
    pairs = merge_by_key(repo.iter_records(previous), repo.iter_records(new))
    async for old, current in pairs:
        if old is None:
            added += 1
            continue
        previous_keys += 1
        if current is None:
            deleted += 1
        elif changed_fields(old, current):
            changed += 1

    measured = (deleted + changed) / previous_keys if previous_keys else 0.0
    log.debug(
        "snapshot %s against %s: %d deleted, %d changed, %d added of %d keys",
        new.id,
        previous.id,
        deleted,
        changed,
        added,
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
        added=added,
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
