"""The restore workflow: validate, plan, save the live state, write, read back.

A restore never writes what its plan did not show. `make_plan` merges the
selected snapshot records with the live namespace in one pass over two
key-sorted streams and spools its decisions to files: the records to write,
the keys to delete, and the live records about to change. `apply_plan` then
works from those files only, so the writes are exactly the plan even when
the namespace changes in between.

Safety rules, in order:

- The snapshot is checked before anything is written: every part present
  with its size, then every part read and its sha256 checked while planning.
- Keys whose value, metadata and expiration already match are not written,
  which makes a restore interrupted half-way converge when run again.
- Live keys that differ are overwritten only with `Conflict.OVERWRITE`;
  live keys absent from the snapshot are deleted only with `exact`.
- Before the first overwrite or delete, the live records about to change are
  saved as a snapshot tagged `pre-restore`, so a restore can be undone.
- The read-back only reads. KV is eventually consistent, so it retries for a
  window before it reports a mismatch, and never writes again.
"""

from __future__ import annotations

import enum
import fnmatch
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kvsnap import limits, spool
from kvsnap.batching import (
    BatchCounts,
    NearExpiry,
    classify_expiration,
    iter_batches,
    iter_key_chunks,
    validate_record,
)
from kvsnap.cloudflare import KvClient, ReadStats, resolve_namespace
from kvsnap.diff import changed_fields, merge_by_key, parse_keys_file
from kvsnap.errors import (
    ConfigError,
    KvsnapError,
    NamespaceNotFound,
    PlanRefused,
    RestoreIncomplete,
    SnapshotNotFound,
    VerifyError,
)
from kvsnap.format import Manifest, PartBuilder, Record, decode_record, encode_record
from kvsnap.heap import release_free_heap
from kvsnap.progress import Reporter
from kvsnap.readback import Mismatch, read_back
from kvsnap.repository import (
    PRE_RESTORE_TAG,
    Repository,
    parse_timestamp,
)
from kvsnap.verify import verify_snapshot

log = logging.getLogger(__name__)

# Keys of each plan action kept for display; the counts are always complete.
EXAMPLE_KEYS = 10


class Conflict(enum.Enum):
    """Policy for a live key whose value differs from the snapshot."""

    ERROR = "error"  # refuse the whole plan, naming the flag to add
    SKIP_EXISTING = "skip-existing"  # leave live keys as they are
    OVERWRITE = "overwrite"  # write the snapshot's record over them


@dataclass(frozen=True)
class Selection:
    """Set of snapshot keys a restore takes, all of them when nothing is set."""

    keys: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        keys: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        globs: Iterable[str] = (),
        keys_files: Iterable[Path] = (),
    ) -> Selection:
        """Combine --key, --prefix, --glob and --keys-from into one selection.

        A keys file without a key raises ConfigError: an empty selection
        means every key, which an empty file never means.
        """
        chosen = set(keys)
        for path in keys_files:
            listed = parse_keys_file(path)
            if not listed:
                raise ConfigError(
                    f"keys file {path} lists no key, so nothing would be selected",
                    hint="check the file; to restore every key, leave out --keys-from",
                )
            chosen.update(listed)
        return cls(frozenset(chosen), tuple(prefixes), tuple(globs))

    @property
    def everything(self) -> bool:
        return not (self.keys or self.prefixes or self.globs)

    @property
    def list_prefix(self) -> str | None:
        """Return the one prefix that bounds every selected key, if there is one.

        The live namespace is then listed from that prefix only.
        """
        if len(self.prefixes) == 1 and not (self.keys or self.globs):
            return self.prefixes[0]
        return None

    def matches(self, key: str) -> bool:
        if self.everything or key in self.keys:
            return True
        if any(key.startswith(prefix) for prefix in self.prefixes):
            return True
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.globs)


@dataclass(frozen=True)
class Target:
    """The account and namespace a restore writes to, resolved before writing."""

    account_id: str
    namespace_id: str | None  # None until a namespace to create is created
    title: str
    create: bool = False


@dataclass
class PlanCounts:
    """How many selected keys fall under each action of a plan."""

    create: int = 0
    overwrite: int = 0
    unchanged: int = 0
    skip_existing: int = 0
    live_only: int = 0
    delete: int = 0
    expired: int = 0
    expiring: int = 0  # skipped, or written with an extended expiration
    invalid: int = 0

    @property
    def writes(self) -> int:
        return self.create + self.overwrite


@dataclass
class Plan:
    """Decisions of a restore, counted here and spooled to `folder`."""

    manifest: Manifest
    target: Target
    conflict: Conflict
    exact: bool
    near_expiry: NearExpiry
    counts: PlanCounts = field(default_factory=PlanCounts)
    examples: dict[str, list[str]] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    folder: Path = Path()
    seconds: float = 0.0
    named_keys: int = 0  # keys named by --key or --keys-from
    found_keys: int = 0  # of those, the keys the snapshot has

    @property
    def writes_path(self) -> Path:
        return self.folder / "writes.jsonl"

    @property
    def deletes_path(self) -> Path:
        return self.folder / "deletes.jsonl"

    @property
    def prior_path(self) -> Path:
        return self.folder / "prior.jsonl"

    @property
    def changes_anything(self) -> bool:
        """Tell whether applying the plan writes, deletes or creates a namespace.

        A plan that only creates its target still has to be applied, so that
        restoring an empty snapshot with --create leaves an empty namespace.
        """
        return bool(self.counts.writes or self.counts.delete or self.target.create)

    def note(self, action: str, key: str) -> None:
        examples = self.examples.setdefault(action, [])
        if len(examples) < EXAMPLE_KEYS:
            examples.append(key)

    def check(self, *, max_writes: int | None, max_deletes: int | None) -> None:
        """Raise PlanRefused when the plan breaks the conflict mode or a cap."""
        counts = self.counts
        if self.invalid:
            key, reason = self.invalid[0]
            raise PlanRefused(
                f"the snapshot holds {len(self.invalid)} invalid records, first "
                f"{key!r}: {reason}; nothing was written",
                hint="restore the other keys with --key, --prefix or --glob",
            )
        if self.conflict is Conflict.ERROR and counts.overwrite:
            shown = ", ".join(repr(k) for k in self.examples.get("overwrite", []))
            raise PlanRefused(
                f"{counts.overwrite} live keys differ from the snapshot ({shown}); "
                "nothing was written",
                hint="add --conflict overwrite to replace them, or --conflict "
                "skip-existing to keep them",
            )
        if max_writes is not None and counts.writes > max_writes:
            raise PlanRefused(
                f"the plan writes {counts.writes} keys, over --max-writes {max_writes}"
            )
        if max_deletes is not None and counts.delete > max_deletes:
            raise PlanRefused(
                f"the plan deletes {counts.delete} keys, "
                f"over --max-deletes {max_deletes}"
            )


@dataclass
class RestoreResult:
    """The outcome of a restore, with the time of each phase for drills."""

    plan: Plan
    dry_run: bool
    written: int = 0
    deleted: int = 0
    write_requests: int = 0
    verified: int = 0
    mismatched: list[Mismatch] = field(default_factory=list)
    pre_restore_snapshot: str | None = None
    created_namespace: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    refused: PlanRefused | None = None  # why a dry run's plan would be refused

    @property
    def ok(self) -> bool:
        return not self.mismatched


# Choosing the snapshot and the target.


async def resolve_snapshot(
    repo: Repository, selector: str, as_of: str | None
) -> Manifest:
    """Resolve SNAPSHOT, or with --as-of the newest snapshot at or before it."""
    if as_of is None:
        return await repo.resolve(selector)
    try:
        moment = parse_timestamp(as_of)
    except ValueError as exc:
        raise ConfigError(
            f"invalid --as-of {as_of!r}: expected a UTC time "
            "such as 2026-12-01T00:00:00Z"
        ) from exc
    namespace = selector.partition("@")[2] if selector.startswith("latest") else ""
    if not selector.startswith("latest"):
        raise ConfigError(f"--as-of needs latest or latest@NAMESPACE, not {selector!r}")
    candidates = [
        m
        for m in await repo.snapshots(namespace or None)
        if parse_timestamp(m.read_started) <= moment and PRE_RESTORE_TAG not in m.tags
    ]
    if not candidates:
        raise SnapshotNotFound(f"no snapshot of {selector!r} at or before {as_of}")
    if len({m.namespace_id for m in candidates}) > 1:
        raise ConfigError(
            "--as-of with plain latest matches several namespaces",
            hint="write latest@NAMESPACE",
        )
    return candidates[-1]


async def resolve_target(
    client: KvClient, manifest: Manifest, to: str | None, *, create: bool
) -> Target:
    """Find the namespace to write to: --to, else the snapshot's own namespace.

    With `create`, a namespace that does not exist is planned for creation,
    titled as `to` or as the snapshot's namespace.
    """
    available = await client.list_namespaces()
    wanted = to or manifest.namespace_id
    try:
        found = resolve_namespace(wanted, available)
    except NamespaceNotFound:
        if not create:
            raise NamespaceNotFound(
                f"namespace {wanted!r} not found in account {client.account_id}",
                hint="add --create to create it (titled as the snapshot's namespace "
                "unless --to names a title)",
            ) from None
        title = to if to and to != manifest.namespace_id else manifest.namespace_title
        if any(ns.title == title for ns in available):
            raise ConfigError(
                f"a namespace titled {title!r} exists already",
                hint=f"restore into it with --to {title!r}, without --create",
            ) from None
        return Target(client.account_id, None, title, create=True)
    return Target(client.account_id, found.id, found.title)


# Planning.


async def _selected(
    records: AsyncIterator[Record], selection: Selection
) -> AsyncIterator[Record]:
    async for record in records:
        if selection.matches(record.key):
            yield record


async def _nothing() -> AsyncIterator[Record]:
    return
    yield  # pragma: no cover  (makes this an async generator)


async def make_plan(
    client: KvClient,
    repo: Repository,
    manifest: Manifest,
    target: Target,
    *,
    selection: Selection,
    conflict: Conflict,
    exact: bool,
    near_expiry: NearExpiry,
    folder: Path,
    now: float | None = None,
) -> Plan:
    """Compare the selected records with the live namespace and spool the plan.

    Reads every part of the snapshot (each checked against its sha256) and
    the live namespace once. Makes no write request.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    plan = Plan(manifest, target, conflict, exact, near_expiry, folder=folder)
    plan.named_keys = len(selection.keys)
    snapshot = _selected(repo.iter_records(manifest), selection)
    live = (
        _selected(
            client.read_records(
                target.namespace_id, ReadStats(), prefix=selection.list_prefix
            ),
            selection,
        )
        if target.namespace_id
        else _nothing()
    )
    with (
        plan.writes_path.open("wb") as writes,
        plan.deletes_path.open("wb") as deletes,
        plan.prior_path.open("wb") as prior,
    ):
        async for record, current in merge_by_key(snapshot, live):
            if record is not None and record.key in selection.keys:
                plan.found_keys += 1
            action = _decide(plan, record, current, now)
            plan.note(action, (record or current).key)  # type: ignore[union-attr]
            if action in ("create", "overwrite"):
                writes.write(encode_record(record))  # type: ignore[arg-type]
            if action == "delete":
                deletes.write(encode_record(current))  # type: ignore[arg-type]
            if action in ("overwrite", "delete"):
                prior.write(encode_record(current))  # type: ignore[arg-type]
    plan.seconds = time.monotonic() - started
    release_free_heap()
    return plan


def _decide(
    plan: Plan, record: Record | None, current: Record | None, now: float
) -> str:
    """Return the action for one key and count it in the plan."""
    counts = plan.counts
    if record is None:
        if plan.exact:
            counts.delete += 1
            return "delete"
        counts.live_only += 1
        return "live-only"

    reason = validate_record(record, now)
    if reason is not None:
        counts.invalid += 1
        plan.invalid.append((record.key, reason))
        return "invalid"
    state = classify_expiration(record, now)
    if state == "expired":
        counts.expired += 1
        return "expired"
    if state == "expiring":
        counts.expiring += 1
        if plan.near_expiry is NearExpiry.SKIP:
            return "expiring"

    if current is None:
        counts.create += 1
        return "create"
    if not changed_fields(record, current):
        counts.unchanged += 1
        return "unchanged"
    if plan.conflict is Conflict.SKIP_EXISTING:
        counts.skip_existing += 1
        return "skip-existing"
    counts.overwrite += 1
    return "overwrite"


# Applying.


def _read_spool(path: Path) -> Iterator[Record]:
    with path.open("rb") as spool:
        for line in spool:
            yield decode_record(line)


async def save_prior(repo: Repository, plan: Plan, namespace_id: str) -> str | None:
    """Save the live records about to change as a `pre-restore` snapshot."""
    if plan.prior_path.stat().st_size == 0:
        return None
    writer = repo.start_snapshot(
        namespace_id=namespace_id, read_started=datetime.now(UTC)
    )
    builder = PartBuilder()
    keys = value_bytes = 0
    for record in _read_spool(plan.prior_path):
        builder.add(record)
        keys += 1
        value_bytes += len(record.value_bytes())
        if builder.raw_size >= limits.DEFAULT_PART_BYTES:
            await writer.write_part(builder)
            builder = PartBuilder()
    if builder.records:
        await writer.write_part(builder)
    manifest = await writer.commit(
        account_id=plan.target.account_id,
        namespace_title=plan.target.title,
        read_finished=datetime.now(UTC),
        keys=keys,
        value_bytes=value_bytes,
        tags=[PRE_RESTORE_TAG, f"restore-of:{plan.manifest.id}"],
    )
    log.info("saved %d live keys as pre-restore snapshot %s", keys, manifest.id)
    return manifest.id


async def apply_plan(
    client: KvClient,
    repo: Repository,
    plan: Plan,
    *,
    readback_window: float = limits.READBACK_WINDOW_SECONDS,
    reporter: Reporter | None = None,
) -> RestoreResult:
    """Create the target if planned, save the prior state, write, delete, read back."""
    reporter = reporter or Reporter()
    result = RestoreResult(plan, dry_run=False)
    requests_before = client.write_requests

    namespace_id = plan.target.namespace_id
    if namespace_id is None:
        created = await client.create_namespace(plan.target.title)
        namespace_id = created.id
        result.created_namespace = created.id
        log.info("created namespace %s (%s)", created.title, created.id)

    started = time.monotonic()
    result.pre_restore_snapshot = await save_prior(repo, plan, namespace_id)
    result.phases["pre_restore"] = time.monotonic() - started

    started = time.monotonic()
    written = plan.folder / "written.jsonl"
    progress = _Progress()
    try:
        await _write_and_delete(client, plan, namespace_id, written, progress, reporter)
    except KvsnapError as exc:
        raise _incomplete(plan, result, progress, exc) from exc
    finally:
        result.written = progress.written
        result.deleted = progress.deleted
    result.phases["write"] = time.monotonic() - started
    result.write_requests = client.write_requests - requests_before

    started = time.monotonic()
    # NOTE: the read-back checks the written keys; keys deleted by --exact
    # are not read again to confirm that they are gone.
    try:
        checked = await read_back(
            client, namespace_id, _read_spool(written), window_seconds=readback_window
        )
    except KvsnapError as exc:
        raise _incomplete(plan, result, progress, exc) from exc
    result.verified = checked.verified
    result.mismatched = checked.mismatched
    result.phases["read_back"] = time.monotonic() - started
    return result


@dataclass
class _Progress:
    """Keys a restore has written and deleted, and those of the request in flight.

    A request that failed for good may still have been stored (its answer can
    be lost after the server stored it), so its keys count as uncertain.
    """

    written: int = 0
    deleted: int = 0
    writing: int = 0
    deleting: int = 0


async def _write_and_delete(
    client: KvClient,
    plan: Plan,
    namespace_id: str,
    written: Path,
    progress: _Progress,
    reporter: Reporter,
) -> None:
    """Write the planned records, then delete the planned keys, counting each."""
    counts = BatchCounts()
    reporter.start(f"writing {plan.target.title}", total=plan.counts.writes)
    with written.open("wb") as out:
        batches = iter_batches(
            _read_spool(plan.writes_path),
            now=time.time(),
            near_expiry=plan.near_expiry,
            counts=counts,
        )
        for batch in batches:
            progress.writing = len(batch)
            await client.bulk_write(namespace_id, batch.records)
            progress.writing = 0
            progress.written += len(batch)
            reporter.advance(len(batch))
            log.info(
                "wrote %d keys (%d bytes) to namespace %s",
                len(batch),
                batch.body_bytes,
                namespace_id,
            )
            for record in batch.records:
                out.write(encode_record(record))
            del batch
            release_free_heap()
    reporter.finish()
    deletes = (record.key for record in _read_spool(plan.deletes_path))
    for chunk in iter_key_chunks(deletes):
        progress.deleting = len(chunk)
        await client.bulk_delete(namespace_id, chunk)
        progress.deleting = 0
        progress.deleted += len(chunk)


def _incomplete(
    plan: Plan, result: RestoreResult, progress: _Progress, cause: KvsnapError
) -> RestoreIncomplete:
    """Describe a restore that failed after writing began: what it changed.

    Writes go in the plan's key order, then deletes, so the counts tell
    which keys were changed: the first `written` planned writes, maybe the
    next `writing`, and likewise for deletes.
    """
    wrote = f"wrote {progress.written} of {plan.counts.writes} planned keys"
    if progress.writing:
        wrote += f" and up to {progress.writing} more"
    deleted = f"deleted {progress.deleted} of {plan.counts.delete} planned keys"
    if progress.deleting:
        deleted += f" and up to {progress.deleting} more"
    step = "during the read-back" if "write" in result.phases else "while writing"
    target = result.created_namespace or plan.target.namespace_id
    message = (
        f"restore of snapshot {plan.manifest.id} into namespace {target} stopped "
        f"{step}, after it {wrote} and {deleted}: {cause.message}"
    )
    hint = "running the same restore again writes only the keys that still differ"
    if result.pre_restore_snapshot:
        hint += (
            f"; the pre-restore snapshot {result.pre_restore_snapshot} holds the "
            "previous state of every key the plan changes"
        )
    return RestoreIncomplete(message, cause, hint=hint)


async def validate(repo: Repository, manifest: Manifest) -> None:
    """Raise VerifyError unless every part is present with its recorded size."""
    checked = await verify_snapshot(repo, manifest, read_data=False)
    if not checked.ok:
        problems = "; ".join(f"{p.path}: {p.message}" for p in checked.problems)
        raise VerifyError(
            f"snapshot {manifest.id} failed validation, nothing was written: {problems}"
        )


def new_plan_folder() -> tempfile.TemporaryDirectory[str]:
    """Return a private temporary folder for a plan's spool files.

    Folders that killed restores left behind are removed first (see
    `kvsnap.spool`).
    """
    return spool.new_folder()
