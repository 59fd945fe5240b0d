"""Verify snapshots: every part present and intact, and the manifest consistent.

A quick check (the default) requests each part's size from the store. With
``read_data`` every part is downloaded and checked in full: size, sha256,
the zstd frame, every record, record count, first and last key, strict key
order within and across parts, and the manifest's key and value byte totals.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec

from kvsnap.errors import (
    CorruptPart,
    RepositoryError,
    SnapshotNotFound,
    VerifyError,
)
from kvsnap.format import Manifest, PartInfo
from kvsnap.heap import release_free_heap
from kvsnap.limits import STORAGE_CONCURRENCY
from kvsnap.repository import (
    LATEST,
    Repository,
    UnreadableManifest,
    check_part,
    manifest_path_of,
)
from kvsnap.state import record_verify

logger = logging.getLogger(__name__)


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a snapshot: the object it concerns and what is wrong."""

    path: str  # a part, or the manifest for totals that do not add up
    message: str


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of verifying one snapshot."""

    snapshot_id: str
    namespace_id: str
    namespace_title: str
    read_started: str
    read_data: bool
    ok: bool
    parts_checked: int
    records_checked: int
    bytes_read: int  # part bytes downloaded; 0 without read_data
    problems: list[Problem]


async def verify_snapshot(
    repo: Repository, manifest: Manifest, *, read_data: bool
) -> VerifyResult:
    """Check one snapshot and return the problems found instead of raising them.

    Errors of the store itself (a failed request after retries) are raised as
    RepositoryError, because they say nothing about the snapshot.
    """
    if read_data:
        scan = await _read_parts(repo, manifest)
    else:
        scan = _PartScan(await _check_sizes(repo, manifest.parts))
    problems = scan.problems + manifest_problems(manifest)
    if read_data and not scan.problems:
        totals = totals_problems(
            manifest, records=scan.records, value_bytes=scan.value_bytes
        )
        # A keys total that contradicts the part list is already in `problems`.
        problems += [problem for problem in totals if problem not in problems]

    result = VerifyResult(
        snapshot_id=manifest.id,
        namespace_id=manifest.namespace_id,
        namespace_title=manifest.namespace_title,
        read_started=manifest.read_started,
        read_data=read_data,
        ok=not problems,
        parts_checked=len(manifest.parts),
        records_checked=scan.records,
        bytes_read=scan.bytes_read,
        problems=problems,
    )
    logger.debug(
        "verified snapshot %s: %s",
        manifest.id,
        "ok" if result.ok else f"{len(problems)} problems",
        extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
    )
    return result


def manifest_problems(manifest: Manifest) -> list[Problem]:
    """Check the manifest's totals against its own part list, without reading parts."""
    path = manifest_path_of(manifest)
    problems = []
    part_records = sum(part.records for part in manifest.parts)
    if part_records != manifest.keys:
        problems.append(
            Problem(
                path,
                f"keys is {manifest.keys} but the parts hold {part_records} records",
            )
        )
    part_bytes = sum(part.size for part in manifest.parts)
    if part_bytes != manifest.stored_bytes:
        problems.append(
            Problem(
                path,
                f"stored_bytes is {manifest.stored_bytes} but the parts add up to"
                f" {part_bytes}",
            )
        )
    return problems


def totals_problems(
    manifest: Manifest, *, records: int, value_bytes: int
) -> list[Problem]:
    """Compare the records and value bytes read from every part with the
    manifest's `keys` and `value_bytes`."""
    path = manifest_path_of(manifest)
    problems = []
    if records != manifest.keys:
        problems.append(
            Problem(
                path, f"keys is {manifest.keys} but the parts hold {records} records"
            )
        )
    if value_bytes != manifest.value_bytes:
        problems.append(
            Problem(
                path,
                f"value_bytes is {manifest.value_bytes} but the values add up"
                f" to {value_bytes}",
            )
        )
    return problems


def raise_for_problems(manifest: Manifest, problems: list[Problem]) -> None:
    """Raise VerifyError naming each problem of one snapshot, if there is any."""
    if not problems:
        return
    details = "; ".join(f"{problem.path}: {problem.message}" for problem in problems)
    raise VerifyError(
        f"snapshot {manifest.id} failed verification: {details}",
        hint=f"`kvsnap verify --read-data {manifest.id}` checks every part",
    )


def unreadable_result(item: UnreadableManifest, *, read_data: bool) -> VerifyResult:
    """Return the failed result of a snapshot whose manifest cannot be used."""
    return VerifyResult(
        snapshot_id=item.entry.snapshot_id,
        namespace_id=item.entry.namespace_id,
        namespace_title="",
        read_started=item.entry.started,
        read_data=read_data,
        ok=False,
        parts_checked=0,
        records_checked=0,
        bytes_read=0,
        problems=[Problem(item.path, f"invalid manifest: {item.reason}")],
    )


async def _check_sizes(repo: Repository, parts: list[PartInfo]) -> list[Problem]:
    limit = asyncio.Semaphore(STORAGE_CONCURRENCY)

    async def check(part: PartInfo) -> Problem | None:
        async with limit:
            size = await repo.storage.head(part.path)
        if size is None:
            return Problem(part.path, "missing")
        if size != part.size:
            return Problem(part.path, f"size is {size} bytes, expected {part.size}")
        return None

    found = await asyncio.gather(*(check(part) for part in parts))
    return [problem for problem in found if problem is not None]


@dataclass
class _PartScan:
    problems: list[Problem]
    records: int = 0
    bytes_read: int = 0
    value_bytes: int = 0


async def _read_parts(repo: Repository, manifest: Manifest) -> _PartScan:
    """Download and check every part, fetching the next while one is checked.

    Memory holds two stored parts and one block of decoded records. The
    check runs in a worker thread, which leaves the event loop free to
    finish the next download.
    """
    scan = _PartScan([])
    previous_key: str | None = None
    async for part, reading in repo.prefetch_parts(manifest.parts):
        try:
            data = await reading
            scan.bytes_read += len(data)
            totals = await asyncio.to_thread(check_part, part, data, previous_key)
        except CorruptPart as exc:
            scan.problems.append(Problem(part.path, exc.problem))
        else:
            scan.records += totals.records
            scan.value_bytes += totals.value_bytes
        data = b""  # not kept while the next part downloads
        release_free_heap()
        # The manifest's last key replaces the one of a part that could not
        # be read.
        previous_key = part.last_key
    return scan


async def verify_repository(
    repo: Repository,
    selector: str | None = None,
    *,
    namespace: str | None = None,
    read_data: bool = False,
    record: bool = False,
) -> list[VerifyResult]:
    """Verify the selected snapshot, or every snapshot (of `namespace`, if given).

    With `record`, each outcome is stored under state/verify/ for `status`
    and `prune`; a failure to store it is logged, not raised.

    With both a selector and a namespace, ``latest`` means the namespace's
    latest snapshot, and any other selector must name a snapshot of it. A
    manifest that cannot be read is a failed result, listed after the others,
    when no selector is given or an id or prefix names it. ``latest`` skips it.
    """
    unreadable: list[UnreadableManifest] = []
    if selector is None:
        manifests, unreadable = await repo.scan_snapshots(namespace)
    elif namespace is not None and selector.strip() == LATEST:
        manifests = [await repo.resolve(f"{LATEST}@{namespace}")]
    else:
        found = await repo.resolve_any(selector)
        if isinstance(found, UnreadableManifest):
            # NOTE: the namespace is not checked here, because the title of an
            # unreadable manifest is unknown.
            manifests, unreadable = [], [found]
        else:
            _check_namespace(found, namespace)
            manifests = [found]

    results = []
    for manifest in manifests:
        result = await verify_snapshot(repo, manifest, read_data=read_data)
        if record:
            await save_result(repo, result)
        results.append(result)
    for item in unreadable:
        logger.debug(
            "manifest %s is invalid: %s",
            item.path,
            item.reason,
            extra={"snapshot": item.entry.snapshot_id},
        )
        results.append(unreadable_result(item, read_data=read_data))
    return results


async def save_result(repo: Repository, result: VerifyResult) -> None:
    """Store a verify outcome for status and prune; log instead of failing."""
    try:
        await record_verify(
            repo,
            snapshot_id=result.snapshot_id,
            namespace_id=result.namespace_id,
            read_data=result.read_data,
            ok=result.ok,
            problems=[f"{p.path}: {p.message}" for p in result.problems],
        )
    except RepositoryError as exc:
        logger.warning(
            "could not record the verify result of %s: %s",
            result.snapshot_id,
            exc.message,
            extra={"snapshot": result.snapshot_id},
        )


def _check_namespace(manifest: Manifest, namespace: str | None) -> None:
    if namespace is not None and namespace not in (
        manifest.namespace_id,
        manifest.namespace_title,
    ):
        raise SnapshotNotFound(
            f"snapshot {manifest.id} belongs to namespace"
            f" {manifest.namespace_title} ({manifest.namespace_id}),"
            f" not {namespace}"
        )


def raise_for_failures(results: list[VerifyResult]) -> None:
    """Raise VerifyError naming each bad part if any snapshot failed."""
    failed = [result for result in results if not result.ok]
    if not failed:
        return
    lines = [
        f"{result.snapshot_id}: {problem.path}: {problem.message}"
        for result in failed
        for problem in result.problems
    ]
    raise VerifyError(
        f"{len(failed)} of {len(results)} snapshots failed verification:\n"
        + "\n".join(lines)
    )
