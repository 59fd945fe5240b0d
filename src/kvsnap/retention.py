"""Retention: decide which snapshots to keep, then remove the others.

`plan_prune` is pure. It groups the snapshots by namespace and applies the
rules of a `Retention` to each group, with every calendar in UTC:

- keep_within D: every snapshot whose read started at most D before the
  newest snapshot of its namespace, or before `now` when that is earlier.
  Like restic's `forget --keep-within`, the window ends at the newest
  snapshot, so a prune host whose clock runs ahead, or a namespace that is
  no longer backed up, still keeps its last D of snapshots;
- keep_last N: the N newest snapshots;
- keep_daily, keep_weekly, keep_monthly, keep_yearly N: the newest snapshot
  of each of the N newest days, ISO weeks, months or years that contain a
  snapshot (days without a snapshot do not use up a slot), as restic's
  `forget --keep-daily` and its siblings count (restic-forget(1)).

Three kinds of snapshot stand apart from the rules:

- Snapshots dated more than `FUTURE_TOLERANCE` after `now` were written by
  a host whose clock ran ahead. They are kept with the reason
  `REASON_FUTURE` and take part in no rule, so they neither take the
  keep_last or calendar slots of real snapshots nor move the keep_within
  window.
- Pre-restore snapshots contain only the keys that a restore replaced, so
  they take no keep_last or calendar slot from full backups. Only
  keep_within, a hold, or being the newest pre-restore snapshot of their
  namespace (`REASON_NEWEST_PRE_RESTORE`, the undo of the latest restore)
  keeps them.
- Imported snapshots (`kvsnap import`) follow the rules like backups, but
  get the "newest verified" protection below only in a namespace without a
  verified backup.

Besides snapshots dated in the future and the newest pre-restore snapshot
of each namespace, two kinds of snapshot are never removed, whatever the
rules:

- per namespace, the newest backup whose latest verify passed (a
  `VerifyRecord` with `ok` and no failed full read) that is neither a
  pre-restore nor an imported snapshot. When the namespace has no such
  backup, the newest verified imported snapshot is kept instead. When no
  backup or import passed verification, the newest backup is kept, or
  without one the newest import.
- held snapshots (anomaly holds and manual holds), until someone releases
  the hold.

`prune` applies a plan to a repository under the exclusive lock: for each
removed snapshot it deletes the manifest first (so the snapshot stops
existing), then its parts, then its verify record. It also deletes orphan
parts, left by runs that never wrote a manifest, once they are older than
`ORPHAN_GRACE`, so the parts of a backup that is still writing survive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kvsnap.errors import SnapshotNotFound
from kvsnap.format import Manifest
from kvsnap.limits import STORAGE_CONCURRENCY
from kvsnap.lock import locked
from kvsnap.policy import Retention, format_duration
from kvsnap.repository import (
    DATA_DIR,
    IMPORTED_TAG,
    PART_SUFFIX,
    PRE_RESTORE_TAG,
    SNAPSHOT_ID_RE,
    SNAPSHOTS_DIR,
    Repository,
    format_timestamp,
    manifest_path_of,
    parse_manifest_path,
    parse_timestamp,
    snapshot_order,
)
from kvsnap.state import VerifyRecord, forget_snapshot, holds, verify_records

log = logging.getLogger(__name__)

# Orphan parts younger than this stay. A backup writes all of its parts
# before its manifest, so a run that started less than a day ago may still
# commit them. Backups also hold a shared lock that keeps prune out, so this
# margin matters for writers without a lock (older kvsnap versions, imports)
# and for a lock that someone broke with `kvsnap unlock`.
ORPHAN_GRACE = timedelta(hours=24)

# Snapshots dated later than `now` plus this were written by a host whose
# clock ran ahead. The margin covers ordinary drift between hosts and the
# seconds between a backup's start and a prune in the same run.
FUTURE_TOLERANCE = timedelta(minutes=5)

REASON_NEWEST_VERIFIED = "newest verified"
REASON_NEWEST_UNVERIFIED = "newest (none verified)"
REASON_NEWEST_PRE_RESTORE = "newest pre-restore"
REASON_FUTURE = "dated in the future (clock skew?)"


@dataclass(frozen=True)
class PrunePlan:
    """The snapshots prune keeps, each with its reasons, and those it removes.

    Both lists are ordered by namespace id, then oldest first.
    """

    keep: list[tuple[Manifest, list[str]]]
    remove: list[Manifest]


def plan_prune(
    manifests: list[Manifest],
    retention: Retention,
    *,
    now: datetime,
    verified: Mapping[str, VerifyRecord],
    held: Collection[str],
) -> PrunePlan:
    """Decide which snapshots to keep and which to remove; see the module doc.

    `verified` maps snapshot ids to their verify records. `held` contains
    the ids of held snapshots; when it is a mapping, its values are the
    hold reasons shown in the plan.
    """
    groups: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        groups.setdefault(manifest.namespace_id, []).append(manifest)

    keep: list[tuple[Manifest, list[str]]] = []
    remove: list[Manifest] = []
    for namespace_id in sorted(groups):
        oldest_first = sorted(groups[namespace_id], key=snapshot_order)
        reasons = _namespace_reasons(
            oldest_first[::-1], retention, now=now, verified=verified, held=held
        )
        for manifest in oldest_first:
            if reasons[manifest.id]:
                keep.append((manifest, reasons[manifest.id]))
            else:
                remove.append(manifest)
    return PrunePlan(keep=keep, remove=remove)


def passed_verify(record: VerifyRecord | None) -> bool:
    """Tell whether a snapshot's latest check passed and no full read failed."""
    return record is not None and record.ok and record.read_data_ok is not False


def _namespace_reasons(
    newest_first: list[Manifest],
    retention: Retention,
    *,
    now: datetime,
    verified: Mapping[str, VerifyRecord],
    held: Collection[str],
) -> dict[str, list[str]]:
    """Return the keep reasons of each snapshot of one namespace (empty: remove)."""
    reasons: dict[str, list[str]] = {manifest.id: [] for manifest in newest_first}
    started = {m.id: parse_timestamp(m.read_started) for m in newest_first}

    # Snapshots from a clock that ran ahead take part in no rule below.
    dated: list[Manifest] = []
    for manifest in newest_first:
        if started[manifest.id] > now + FUTURE_TOLERANCE:
            reasons[manifest.id].append(REASON_FUTURE)
        else:
            dated.append(manifest)
    full = [m for m in dated if PRE_RESTORE_TAG not in m.tags]

    if retention.keep_within is not None and dated:
        label = f"within {format_duration(retention.keep_within)}"
        window_end = min(now, started[dated[0].id])
        for manifest in dated:
            if window_end - started[manifest.id] <= retention.keep_within:
                reasons[manifest.id].append(label)

    for number, manifest in enumerate(full[: retention.keep_last], start=1):
        reasons[manifest.id].append(f"last {number}")

    calendars: list[tuple[str, int, Callable[[datetime], Hashable]]] = [
        ("daily", retention.keep_daily, lambda moment: moment.date()),
        ("weekly", retention.keep_weekly, lambda moment: moment.isocalendar()[:2]),
        ("monthly", retention.keep_monthly, lambda moment: (moment.year, moment.month)),
        ("yearly", retention.keep_yearly, lambda moment: moment.year),
    ]
    for name, count, bucket_of in calendars:
        _keep_per_bucket(full, started, reasons, name, count, bucket_of)

    pre_restores = [m for m in dated if PRE_RESTORE_TAG in m.tags]
    if pre_restores:
        reasons[pre_restores[0].id].append(REASON_NEWEST_PRE_RESTORE)

    protected = _protected(dated, verified)
    if protected is not None:
        manifest, reason = protected
        reasons[manifest.id].append(reason)

    for manifest in newest_first:
        if manifest.id in held:
            reason = held[manifest.id] if isinstance(held, Mapping) else ""
            reasons[manifest.id].append(f"held: {reason}" if reason else "held")
    return reasons


def _keep_per_bucket(
    newest_first: list[Manifest],
    started: dict[str, datetime],
    reasons: dict[str, list[str]],
    name: str,
    count: int,
    bucket_of: Callable[[datetime], Hashable],
) -> None:
    """Keep the newest snapshot of each of the `count` newest buckets."""
    kept = 0
    last_bucket: Hashable = None
    for manifest in newest_first:
        if kept >= count:
            return
        bucket = bucket_of(started[manifest.id].astimezone(UTC))
        if bucket == last_bucket:
            continue
        kept += 1
        last_bucket = bucket
        reasons[manifest.id].append(f"{name} {kept}")


def _protected(
    newest_first: list[Manifest], verified: Mapping[str, VerifyRecord]
) -> tuple[Manifest, str] | None:
    """Choose the one full copy of a namespace that no rule may remove.

    A verified backup comes first, then a verified import, then the newest
    backup or import when none passed. Pre-restore snapshots contain only
    the keys a restore replaced, so they are never chosen.
    """
    backups = []
    imports = []
    for manifest in newest_first:
        if PRE_RESTORE_TAG in manifest.tags:
            continue
        if IMPORTED_TAG in manifest.tags:
            imports.append(manifest)
        else:
            backups.append(manifest)
    for group in (backups, imports):
        for manifest in group:
            if passed_verify(verified.get(manifest.id)):
                return manifest, REASON_NEWEST_VERIFIED
    for group in (backups, imports):
        if group:
            return group[0], REASON_NEWEST_UNVERIFIED
    return None


# Applying a plan.


@dataclass(frozen=True)
class OrphanSnapshot:
    """The parts under data/<namespace>/<day>/<snapshot id>/ of a snapshot
    that has no manifest."""

    folder: str
    snapshot_id: str
    paths: list[str]
    size: int
    last_modified: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "snapshot_id": self.snapshot_id,
            "parts": len(self.paths),
            "bytes": self.size,
            "last_modified": format_timestamp(self.last_modified),
        }


@dataclass
class PruneResult:
    """The outcome of a prune: kept, removed (in a dry run: to remove) and orphans."""

    dry_run: bool
    kept: list[tuple[Manifest, list[str]]] = field(default_factory=list)
    removed: list[Manifest] = field(default_factory=list)
    orphans_removed: list[OrphanSnapshot] = field(default_factory=list)
    orphans_kept: list[OrphanSnapshot] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # manifest paths left alone
    # Temporary files of writes killed mid-way, in a local repository.
    stale_uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Build the `kvsnap prune --json` object."""
        return {
            "type": "prune",
            "dry_run": self.dry_run,
            "kept": [
                _snapshot_dict(manifest) | {"reasons": reasons}
                for manifest, reasons in self.kept
            ],
            "removed": [_snapshot_dict(manifest) for manifest in self.removed],
            "orphans_removed": [orphan.to_dict() for orphan in self.orphans_removed],
            "orphans_kept": [orphan.to_dict() for orphan in self.orphans_kept],
            "unreadable_manifests": self.unreadable,
            "stale_uploads_removed": self.stale_uploads,
            "bytes_freed": self.bytes_freed,
        }


async def prune(
    repo: Repository,
    retention: Retention,
    *,
    dry_run: bool,
    now: datetime | None = None,
    lock_wait: float = 0.0,
    namespace: str | None = None,
    orphan_grace: timedelta = ORPHAN_GRACE,
) -> PruneResult:
    """Remove the snapshots that `retention` does not keep, and old orphan parts.

    Takes the exclusive lock (raises RepositoryLocked when another process
    holds any lock after `lock_wait` seconds). A dry run takes a shared lock
    instead and deletes nothing; its result lists what a real run would
    remove. `now` (default: the current time) dates the plan: keep_within
    counts back from it or from a namespace's newest snapshot, whichever is
    earlier, and snapshots dated after it are kept as clock skew. Orphans
    always age against the current time.
    `namespace` (id or title) limits both steps to one namespace and
    raises SnapshotNotFound when it has no snapshot. Snapshots with an
    unreadable manifest are never removed and their parts are not orphans.
    A store error raises RepositoryError; what was deleted until then stays
    deleted, and the next prune picks up the rest.
    """
    now = now or datetime.now(UTC)
    command = "kvsnap prune --dry-run" if dry_run else "kvsnap prune"
    async with locked(repo, exclusive=not dry_run, command=command, wait=lock_wait):
        manifests, unreadable = await repo.scan_snapshots(namespace)
        if namespace is not None and not manifests and not unreadable:
            raise SnapshotNotFound(
                f"no snapshots of namespace {namespace!r} in {repo.url}",
                hint="list the snapshots with `kvsnap snapshots`",
            )
        held = {hold.snapshot_id: hold.reason for hold in await holds(repo)}
        plan = plan_prune(
            manifests,
            retention,
            now=now,
            verified=await verify_records(repo),
            held=held,
        )
        result = PruneResult(
            dry_run=dry_run,
            kept=plan.keep,
            removed=plan.remove,
            unreadable=[item.path for item in unreadable],
        )
        for manifest, reasons in plan.keep:
            if REASON_FUTURE in reasons:
                log.warning(
                    "keeping snapshot %s out of the retention rules: it started"
                    " at %s, later than now (%s); check the clock of host %s",
                    manifest.id,
                    manifest.read_started,
                    format_timestamp(now),
                    manifest.hostname or "unknown",
                    extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
                )
        for item in unreadable:
            log.warning(
                "leaving snapshot %s alone: its manifest is invalid: %s",
                item.entry.snapshot_id,
                item.reason,
                extra={"snapshot": item.entry.snapshot_id},
            )

        for manifest in plan.remove:
            if not dry_run:
                await _remove_snapshot(repo, manifest)
            result.bytes_freed += manifest.stored_bytes

        namespace_ids = {m.namespace_id for m in manifests}
        namespace_ids |= {item.entry.namespace_id for item in unreadable}
        # Object times come from the store's clock, so orphans are aged
        # against the current time even when `now` is given for the plan.
        current = datetime.now(UTC)
        orphans = await find_orphans(
            repo, sorted(namespace_ids) if namespace is not None else None
        )
        for orphan in orphans:
            if current - orphan.last_modified < orphan_grace:
                result.orphans_kept.append(orphan)
                continue
            if not dry_run:
                await _delete_paths(repo, orphan.paths)
                log.info(
                    "removed orphan snapshot folder %s (%d parts, %d bytes)",
                    orphan.folder,
                    len(orphan.paths),
                    orphan.size,
                    extra={"snapshot": orphan.snapshot_id},
                )
            result.orphans_removed.append(orphan)
            result.bytes_freed += orphan.size
        if not dry_run:
            result.stale_uploads = await repo.storage.remove_stale_uploads(orphan_grace)
            for path in result.stale_uploads:
                log.info("removed the temporary file of an interrupted write: %s", path)
    return result


async def _remove_snapshot(repo: Repository, manifest: Manifest) -> None:
    """Delete the manifest, then the parts, then the verify record."""
    await repo.storage.delete(manifest_path_of(manifest))
    await _delete_paths(repo, [part.path for part in manifest.parts])
    await forget_snapshot(repo, manifest.id)
    log.info(
        "removed snapshot %s of %s from %s (%d parts, %d bytes)",
        manifest.id,
        manifest.namespace_title or manifest.namespace_id,
        manifest.read_started,
        len(manifest.parts),
        manifest.stored_bytes,
        extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
    )


async def _delete_paths(repo: Repository, paths: list[str]) -> None:
    gate = asyncio.Semaphore(STORAGE_CONCURRENCY)

    async def delete(path: str) -> None:
        async with gate:
            await repo.storage.delete(path)

    await asyncio.gather(*(delete(path) for path in paths))


async def find_orphans(
    repo: Repository, namespace_ids: list[str] | None = None
) -> list[OrphanSnapshot]:
    """Find the part folders of snapshots that have no manifest.

    A folder data/<namespace id>/<day>/<snapshot id>/ is an orphan when no
    manifest, readable or not, carries its snapshot id. Objects under data/
    that do not follow that layout are never counted, only logged.
    `namespace_ids` limits the search to those namespaces.
    """
    manifest_ids = set()
    for path, _size in await repo.storage.list(SNAPSHOTS_DIR):
        entry = parse_manifest_path(path)
        if entry is not None:
            manifest_ids.add(entry.snapshot_id)

    prefixes = [f"{DATA_DIR}/{ns}" for ns in namespace_ids or []] or [DATA_DIR]
    folders: dict[str, list[tuple[str, int, datetime]]] = {}
    for prefix in prefixes:
        for path, size, modified in await repo.storage.list_modified(prefix):
            folder = _snapshot_folder(path)
            if folder is None:
                log.warning("ignoring %s: not a part of the repository layout", path)
                continue
            if folder.rsplit("/", 1)[1] not in manifest_ids:
                folders.setdefault(folder, []).append((path, size, modified))

    return [
        OrphanSnapshot(
            folder=folder,
            snapshot_id=folder.rsplit("/", 1)[1],
            paths=[path for path, _size, _modified in objects],
            size=sum(size for _path, size, _modified in objects),
            last_modified=max(modified for _path, _size, modified in objects),
        )
        for folder, objects in sorted(folders.items())
    ]


def _snapshot_folder(path: str) -> str | None:
    """Return data/<namespace>/<day>/<snapshot id> of a part path, or None."""
    segments = path.split("/")
    if (
        len(segments) != 5
        or segments[0] != DATA_DIR
        or not SNAPSHOT_ID_RE.fullmatch(segments[3])
        or not segments[4].endswith(PART_SUFFIX)
    ):
        return None
    return "/".join(segments[:4])


def _snapshot_dict(manifest: Manifest) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "namespace_id": manifest.namespace_id,
        "namespace_title": manifest.namespace_title,
        "time": manifest.read_started,
        "keys": manifest.keys,
        "bytes": manifest.stored_bytes,
        "tags": manifest.tags,
    }
