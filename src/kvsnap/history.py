"""The history of one key across the snapshots of its namespace.

Each snapshot is searched through its manifest: parts hold disjoint,
consecutive key ranges, so `first_key` and `last_key` name the one part that
can hold the key, and only that part is downloaded and decoded. A snapshot
whose key range misses the key costs no part read at all.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import msgspec

from kvsnap.diff import Change, RecordDigest, compare_records
from kvsnap.errors import ConfigError, SnapshotNotFound
from kvsnap.format import Manifest, PartInfo, Record, key_order
from kvsnap.repository import PRE_RESTORE_TAG, Repository, decode_part

logger = logging.getLogger(__name__)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """The state of a key in one snapshot and how it differs from the one before.

    `sha256`, `size`, `metadata` and `expiration` are left out when the key is
    absent, and `metadata` and `expiration` when the key has none. `change`
    is None for the first snapshot and when nothing changed since the previous.
    """

    snapshot_id: str
    time: str  # the snapshot's read_started
    present: bool
    change: Change | None
    fields: list[str]  # FIELD_* names when `change` is "changed"
    sha256: str | msgspec.UnsetType = msgspec.UNSET
    size: int | msgspec.UnsetType = msgspec.UNSET
    metadata: Any = msgspec.UNSET
    expiration: int | float | msgspec.UnsetType = msgspec.UNSET


class KeyHistory(msgspec.Struct, frozen=True, kw_only=True):
    """Every snapshot's entry for one key, oldest first."""

    key: str
    namespace_id: str
    namespace_title: str
    entries: list[HistoryEntry]
    parts_read: int  # parts downloaded, at most one per snapshot


def find_part(manifest: Manifest, key: str) -> PartInfo | None:
    """Return the one part whose key range contains `key`, or None."""
    target = key_order(key)
    parts = manifest.parts
    index = bisect.bisect_left(parts, target, key=lambda part: key_order(part.last_key))
    if index == len(parts) or key_order(parts[index].first_key) > target:
        return None
    return parts[index]


async def find_record(
    repo: Repository, manifest: Manifest, key: str
) -> tuple[Record | None, bool]:
    """Look a key up in one snapshot; return (record or None, whether a part
    was read). The part is checked in full and raises CorruptPart if bad."""
    part = find_part(manifest, key)
    if part is None:
        return None, False
    data = await repo.read_part(part)
    for record in decode_part(part, data):
        if record.key == key:
            return record, True
    return None, True


async def namespace_snapshots(repo: Repository, namespace: str) -> list[Manifest]:
    """Return every snapshot of one namespace, given by id or title, oldest first.

    A title selects the namespace id that had it, so the snapshots taken under
    an earlier title are included; pre-restore snapshots are left out. Raises
    SnapshotNotFound when no snapshot matches and ConfigError when the title
    belongs to several namespaces.
    """
    # A pre-restore snapshot holds only the keys a restore replaced, so a key
    # missing from it says nothing about the namespace: leave those out.
    every = [m for m in await repo.snapshots() if PRE_RESTORE_TAG not in m.tags]
    ids = {
        m.namespace_id
        for m in every
        if namespace in (m.namespace_id, m.namespace_title)
    }
    if not ids:
        known = sorted({f"{m.namespace_title} ({m.namespace_id})" for m in every})
        raise SnapshotNotFound(
            f"no snapshot of namespace {namespace!r} in {repo.url}",
            hint=f"namespaces with snapshots: {', '.join(known)}" if known else None,
        )
    if len(ids) > 1:
        raise ConfigError(
            f"namespace {namespace!r} is ambiguous: it is the title of"
            f" {len(ids)} namespaces: {', '.join(sorted(ids))}",
            hint="give the namespace id instead",
        )
    [namespace_id] = ids
    return [m for m in every if m.namespace_id == namespace_id]


async def key_history(repo: Repository, namespace: str, key: str) -> KeyHistory:
    """Build the history of `key` across all snapshots of `namespace`.

    Snapshots are read one at a time, so memory contains at most one part.
    """
    manifests = await namespace_snapshots(repo, namespace)
    entries = []
    parts_read = 0
    previous: Record | None = None
    for index, manifest in enumerate(manifests):
        record, part_read = await find_record(repo, manifest, key)
        parts_read += part_read
        found = None if index == 0 else compare_records(previous, record)
        entries.append(
            _entry(
                manifest,
                record,
                change=found.change if found else None,
                fields=found.fields if found else [],
            )
        )
        previous = record

    newest = manifests[-1]
    logger.debug(
        "read %d parts of %d snapshots for one key",
        parts_read,
        len(manifests),
        extra={"namespace": newest.namespace_id},
    )
    return KeyHistory(
        key=key,
        namespace_id=newest.namespace_id,
        namespace_title=newest.namespace_title,
        entries=entries,
        parts_read=parts_read,
    )


def _entry(
    manifest: Manifest,
    record: Record | None,
    *,
    change: Change | None,
    fields: list[str],
) -> HistoryEntry:
    if record is None:
        return HistoryEntry(
            snapshot_id=manifest.id,
            time=manifest.read_started,
            present=False,
            change=change,
            fields=fields,
        )
    digest = RecordDigest.of(record)
    return HistoryEntry(
        snapshot_id=manifest.id,
        time=manifest.read_started,
        present=True,
        change=change,
        fields=fields,
        sha256=digest.sha256,
        size=digest.size,
        metadata=digest.metadata,
        expiration=digest.expiration,
    )
