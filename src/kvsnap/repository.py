"""The repository: layout in object storage, snapshot commit, listing, selectors.

Layout (format version 1, specified in docs/FORMAT.md)::

    kvsnap.json
    snapshots/<namespace id>/<YYYY-MM-DD>T<HHMMSS>Z-<snapshot id>.json
    data/<namespace id>/<YYYY-MM-DD>/<snapshot id>/<part number, 6 digits>.jsonl.zst

Times in object names are the UTC start of the read. A snapshot exists once its
manifest exists; the manifest is written last, create-only, and never
overwritten. Parts of a run that never committed are orphans.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import zstandard

from kvsnap import __version__
from kvsnap.errors import (
    ConfigError,
    CorruptPart,
    KvsnapError,
    ObjectExists,
    ObjectNotFound,
    RepositoryError,
    RepositoryNotFound,
    SnapshotNotFound,
)
from kvsnap.format import (
    FORMAT_VERSION,
    REPOSITORY_CONFIG_NAME,
    Manifest,
    PartBuilder,
    PartInfo,
    Record,
    RepositoryConfig,
    decode_manifest,
    decode_repository_config,
    encode_json,
    iter_part_blocks,
    key_order,
    sha256_hex,
)
from kvsnap.heap import release_free_heap
from kvsnap.limits import STORAGE_CONCURRENCY
from kvsnap.storage import RetryPolicy, Storage, check_object_path
from kvsnap.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"
DATA_DIR = "data"
PART_SUFFIX = ".jsonl.zst"
SNAPSHOT_ID_BYTES = 8  # 16 hex characters
MIN_SELECTOR_PREFIX = 4  # hex characters of an id prefix
LATEST = "latest"

SNAPSHOT_ID_RE = re.compile(r"[0-9a-f]{16}")
NAMESPACE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX_RE = re.compile(r"[0-9a-f]{4,16}")
_MANIFEST_NAME_RE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{6})Z-(?P<id>[0-9a-f]{16})\.json"
)


# Tag of the snapshots that a restore writes of the live keys it replaces.
PRE_RESTORE_TAG = "pre-restore"
# Tag of the snapshots that `kvsnap import` made from an export file.
IMPORTED_TAG = "imported"


def new_snapshot_id() -> str:
    return secrets.token_hex(SNAPSHOT_ID_BYTES)


def check_namespace_id(namespace_id: str) -> None:
    """Raise ConfigError unless the id is safe to use as an object-name segment."""
    if not NAMESPACE_ID_RE.fullmatch(namespace_id):
        raise ConfigError(
            f"invalid namespace id {namespace_id!r}: expected 1-64 letters, digits,"
            " '_' or '-' (Cloudflare namespace ids are 32 hex characters)"
        )


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds, ending in Z."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp as written by `format_timestamp`."""
    return datetime.fromisoformat(text).astimezone(UTC)


def manifest_path(namespace_id: str, read_started: datetime, snapshot_id: str) -> str:
    started = read_started.astimezone(UTC)
    name = f"{started:%Y-%m-%d}T{started:%H%M%S}Z-{snapshot_id}.json"
    return f"{SNAPSHOTS_DIR}/{namespace_id}/{name}"


def snapshot_folder(namespace_id: str, read_started: datetime, snapshot_id: str) -> str:
    """Return the folder data/<namespace id>/<UTC day>/<snapshot id> of the parts."""
    day = f"{read_started.astimezone(UTC):%Y-%m-%d}"
    return f"{DATA_DIR}/{namespace_id}/{day}/{snapshot_id}"


def part_path(
    namespace_id: str, read_started: datetime, snapshot_id: str, number: int
) -> str:
    folder = snapshot_folder(namespace_id, read_started, snapshot_id)
    return f"{folder}/{number:06d}{PART_SUFFIX}"


def manifest_path_of(manifest: Manifest) -> str:
    """Return where a manifest is stored, from its own fields."""
    started = parse_timestamp(manifest.read_started)
    return manifest_path(manifest.namespace_id, started, manifest.id)


@dataclass(frozen=True)
class ManifestEntry:
    """A manifest object found by listing, before its contents are read."""

    path: str
    namespace_id: str
    snapshot_id: str
    started: str  # the read start in the name, as 2025-03-01T02:00:05Z


@dataclass(frozen=True)
class UnreadableManifest:
    """A listed manifest that is not valid JSON, or whose fields are invalid or
    contradict its name. Listing skips it and verify reports it."""

    entry: ManifestEntry
    reason: str

    @property
    def path(self) -> str:
        return self.entry.path


def parse_manifest_path(path: str) -> ManifestEntry | None:
    """Parse a path under snapshots/; return None if it is not a manifest name."""
    segments = path.split("/")
    if len(segments) != 3 or segments[0] != SNAPSHOTS_DIR:
        return None
    match = _MANIFEST_NAME_RE.fullmatch(segments[2])
    if match is None or not NAMESPACE_ID_RE.fullmatch(segments[1]):
        return None
    time = match["time"]
    started = f"{match['date']}T{time[:2]}:{time[2:4]}:{time[4:]}Z"
    return ManifestEntry(path, segments[1], match["id"], started)


def decode_part(
    part: PartInfo, data: bytes, previous_key: str | None = None
) -> list[Record]:
    """Decode a part's stored bytes and check them against the manifest entry.

    Checks that every line is a record, that keys ascend strictly in UTF-8
    byte order (starting after `previous_key`, the last key of the previous
    part), and the record count and first and last keys. Raises CorruptPart
    naming the part and the first problem found. Size and sha256 are checked
    by `Repository.read_part`. `check_part` does the same checks without
    keeping the records.
    """
    return [
        record
        for block in iter_checked_blocks(part, data, previous_key)
        for record in block
    ]


@dataclass(frozen=True)
class PartTotals:
    """Record count and value bytes of a part that passed `check_part`."""

    records: int
    value_bytes: int


def check_part(
    part: PartInfo, data: bytes, previous_key: str | None = None
) -> PartTotals:
    """Check a part as `decode_part` does, keeping one block of records at a time.

    Raises CorruptPart, and also when a base64 value is not valid base64.
    """
    records = value_bytes = 0
    for block in iter_checked_blocks(part, data, previous_key):
        for record in block:
            records += 1
            try:
                value_bytes += record.value_size()
            except (binascii.Error, ValueError) as exc:
                raise CorruptPart(
                    part.path,
                    f"record {records} key {record.key!r} has an invalid value: {exc}",
                ) from exc
    return PartTotals(records, value_bytes)


def iter_checked_blocks(
    part: PartInfo, data: bytes, previous_key: str | None = None
) -> Iterator[list[Record]]:
    """Yield a part's records in blocks, checking them as `decode_part` does.

    The count and the last key can only be checked at the end, so a
    CorruptPart may come after some blocks were yielded. Callers that must
    not act on a bad part check it whole first (`check_part`).
    """
    count = 0
    first: str | None = None
    # Python orders str by code point, which is the UTF-8 byte order.
    last = previous_key
    try:
        for block in iter_part_blocks(data):
            for record in block:
                key = record.key
                if last is not None and key <= last:
                    previous = (
                        "the previous key" if count else "the previous part's key"
                    )
                    raise CorruptPart(
                        part.path,
                        f"record {count + 1} key {key!r} does not sort"
                        f" after {previous} {last!r}",
                    )
                if count == 0:
                    first = key
                count += 1
                last = key
            yield block
    except zstandard.ZstdError as exc:
        raise CorruptPart(part.path, f"invalid zstd data: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise CorruptPart(
            part.path, f"record {count + 1} is not a valid record: {exc}"
        ) from exc

    if count != part.records:
        raise CorruptPart(part.path, f"{count} records, expected {part.records}")
    if count and first != part.first_key:
        raise CorruptPart(
            part.path, f"first key {first!r}, expected {part.first_key!r}"
        )
    if count and last != part.last_key:
        raise CorruptPart(part.path, f"last key {last!r}, expected {part.last_key!r}")


class Repository:
    """A kvsnap repository in object storage.

    Open one with `open`, `init` or `open_or_init`. Reading methods never
    change the store. `url` is the display form of the location, with no
    secret in it.
    """

    def __init__(self, storage: Storage, config: RepositoryConfig) -> None:
        self.storage = storage
        self.config = config
        self.url = storage.url
        self._reported_unreadable: set[str] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        account_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Repository:
        """Open an existing repository; raise RepositoryNotFound if there is none."""
        storage = Storage.from_url(url, account_id=account_id, retry=retry)
        return await cls._load(storage)

    @classmethod
    async def init(
        cls,
        url: str,
        *,
        account_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Repository:
        """Create a repository; raise RepositoryError if one already exists."""
        storage = Storage.from_url(url, account_id=account_id, retry=retry)
        exists_error = RepositoryError(
            f"a kvsnap repository already exists at {storage.url}",
            hint="use it as it is: kvsnap never overwrites a repository",
        )
        if await storage.exists(REPOSITORY_CONFIG_NAME):
            raise exists_error
        if await storage.list(limit=1):
            logger.warning(
                "%s already contains objects; creating the repository beside them",
                storage.url,
            )
        try:
            return await cls._create(storage)
        except ObjectExists as exc:
            raise exists_error from exc

    @classmethod
    async def open_or_init(
        cls,
        url: str,
        *,
        account_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Repository:
        """Open the repository, or create one if the location is empty.

        A location that contains other objects but no kvsnap.json is not taken
        over, so that raises RepositoryError.
        """
        storage = Storage.from_url(url, account_id=account_id, retry=retry)
        if await storage.exists(REPOSITORY_CONFIG_NAME):
            return await cls._load(storage)
        if await storage.list(limit=1):
            raise RepositoryError(
                f"{storage.url} contains objects but no {REPOSITORY_CONFIG_NAME},"
                " so it is not a kvsnap repository",
                hint="back up into an empty location or a new prefix, or run"
                " `kvsnap init` there to create a repository beside those objects",
            )
        try:
            return await cls._create(storage)
        except ObjectExists:
            # Another run created it between our check and our write.
            return await cls._load(storage)

    @classmethod
    async def _load(cls, storage: Storage) -> Repository:
        try:
            data = await storage.get(REPOSITORY_CONFIG_NAME)
        except ObjectNotFound as exc:
            raise RepositoryNotFound(
                f"no kvsnap repository at {storage.url}:"
                f" {REPOSITORY_CONFIG_NAME} not found",
                hint="run `kvsnap init` to create one, or back up into it",
            ) from exc
        try:
            config = decode_repository_config(data)
        except msgspec.DecodeError as exc:
            raise RepositoryError(
                f"{storage.describe(REPOSITORY_CONFIG_NAME)} is not a valid"
                f" repository configuration: {exc}"
            ) from exc
        if config.format_version > FORMAT_VERSION:
            raise RepositoryError(
                f"{storage.url} uses repository format {config.format_version};"
                f" this kvsnap reads format {FORMAT_VERSION} and older",
                hint="upgrade kvsnap",
            )
        return cls(storage, config)

    @classmethod
    async def _create(cls, storage: Storage) -> Repository:
        config = RepositoryConfig(
            repository_id=secrets.token_hex(16),
            created=format_timestamp(datetime.now(UTC)),
        )
        await storage.put(REPOSITORY_CONFIG_NAME, encode_json(config), create_only=True)
        logger.info("created repository %s", storage.url)
        return cls(storage, config)

    def start_snapshot(
        self, *, namespace_id: str, read_started: datetime
    ) -> SnapshotWriter:
        """Begin a snapshot of a namespace whose read started at `read_started`."""
        check_namespace_id(namespace_id)
        if read_started.tzinfo is None:
            raise ValueError("read_started must be timezone-aware")
        return SnapshotWriter(self, namespace_id, read_started, new_snapshot_id())

    async def snapshots(self, namespace: str | None = None) -> list[Manifest]:
        """Return the manifests, oldest first (by read start, then id).

        `namespace` keeps those whose namespace id or title equals it. An
        unreadable manifest is skipped with a warning, logged once per
        Repository object.
        """
        manifests, unreadable = await self.scan_snapshots(namespace)
        for item in unreadable:
            if item.path in self._reported_unreadable:
                continue
            self._reported_unreadable.add(item.path)
            logger.warning(
                "skipping manifest %s: it is invalid: %s",
                self.storage.describe(item.path),
                item.reason,
                extra={"snapshot": item.entry.snapshot_id},
            )
        return manifests

    async def scan_snapshots(
        self, namespace: str | None = None
    ) -> tuple[list[Manifest], list[UnreadableManifest]]:
        """Return the manifests, oldest first, and the unreadable ones by path.

        `namespace` keeps the manifests whose namespace id or title equals it,
        and the unreadable ones whose object name has that namespace id.
        """
        # NOTE: this reads every manifest, one GET each, STORAGE_CONCURRENCY at
        # a time; a repository with many thousands of snapshots lists slowly.
        loaded = await self._load_manifests(await self._manifest_entries())
        manifests = [item for item in loaded if isinstance(item, Manifest)]
        unreadable = [item for item in loaded if isinstance(item, UnreadableManifest)]
        if namespace is not None:
            manifests = [
                manifest
                for manifest in manifests
                if namespace in (manifest.namespace_id, manifest.namespace_title)
            ]
            unreadable = [
                item for item in unreadable if item.entry.namespace_id == namespace
            ]
        manifests.sort(key=snapshot_order)
        unreadable.sort(key=lambda item: item.path)
        return manifests, unreadable

    async def resolve(self, selector: str) -> Manifest:
        """Find the snapshot that a selector names.

        Selectors: a snapshot id, a unique prefix of at least 4 hex characters,
        `latest` (the newest snapshot, when the repository contains one namespace)
        or `latest@NAMESPACE` (namespace id or title). Raises SnapshotNotFound
        when nothing or more than one snapshot matches, listing candidates,
        ConfigError for a malformed selector, and RepositoryError when the
        snapshot's manifest is unreadable. `latest` skips unreadable manifests.
        """
        found = await self.resolve_any(selector)
        if isinstance(found, UnreadableManifest):
            raise RepositoryError(
                f"manifest {self.storage.describe(found.path)} is invalid:"
                f" {found.reason}",
                hint=f"`kvsnap verify {found.entry.snapshot_id}` reports it",
            )
        return found

    async def resolve_any(self, selector: str) -> Manifest | UnreadableManifest:
        """Find the snapshot that a selector names, as `resolve` does, but
        return an unreadable manifest that an id or prefix names."""
        text = selector.strip()
        if text == LATEST:
            return await self._resolve_latest(None)
        if text.startswith(LATEST + "@"):
            namespace = text[len(LATEST) + 1 :]
            if not namespace:
                raise ConfigError(
                    f"invalid snapshot selector {selector!r}: name a namespace"
                    " after the @, as in latest@my-namespace"
                )
            return await self._resolve_latest(namespace)
        return await self._resolve_prefix(selector, text.lower())

    async def _resolve_latest(self, namespace: str | None) -> Manifest:
        # "latest" means the latest backup. A restore saves the live keys it
        # replaces as a pre-restore snapshot, which holds only those keys, so
        # those never count; imports count only when nothing else exists.
        every = await self.snapshots(namespace)
        manifests = [m for m in every if PRE_RESTORE_TAG not in m.tags]
        backups = [m for m in manifests if IMPORTED_TAG not in m.tags]
        manifests = backups or manifests
        if every and not manifests:
            raise SnapshotNotFound(
                f"only pre-restore snapshots match {namespace or 'latest'!r}",
                hint="name a pre-restore snapshot by its id to restore from it",
            )
        if not manifests:
            if namespace is None:
                raise SnapshotNotFound(f"no snapshots in {self.url}")
            known = _describe_namespaces(await self.snapshots())
            raise SnapshotNotFound(
                f"no snapshot of namespace {namespace!r} in {self.url}",
                hint=f"namespaces with snapshots: {known}" if known else None,
            )
        namespace_ids = {manifest.namespace_id for manifest in manifests}
        if len(namespace_ids) > 1:
            selector = LATEST if namespace is None else f"{LATEST}@{namespace}"
            every = manifests if namespace is None else await self.snapshots()
            choices = capped_list(_latest_selectors(every, namespace_ids))
            raise SnapshotNotFound(
                f"{selector} is ambiguous: {self.url} contains snapshots of"
                f" {len(namespace_ids)} namespaces:"
                f" {_describe_namespaces(manifests)}",
                hint=f"use one of {choices}",
            )
        return manifests[-1]

    async def _resolve_prefix(
        self, selector: str, prefix: str
    ) -> Manifest | UnreadableManifest:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(
                f"invalid snapshot selector {selector!r}: use a snapshot id or a"
                f" unique prefix of at least {MIN_SELECTOR_PREFIX} hex characters,"
                f" {LATEST}, or {LATEST}@NAMESPACE"
            )
        entries = [
            entry
            for entry in await self._manifest_entries()
            if entry.snapshot_id.startswith(prefix)
        ]
        if not entries:
            raise SnapshotNotFound(
                f"no snapshot {selector!r} in {self.url}",
                hint="list the snapshots with `kvsnap snapshots`",
            )
        if len(entries) > 1:
            loaded = await self._load_manifests(entries)
            manifests = [item for item in loaded if isinstance(item, Manifest)]
            candidates = [
                _describe_snapshot(item)
                for item in sorted(manifests, key=snapshot_order)
            ] + [
                f"{item.entry.snapshot_id} (invalid manifest)"
                for item in loaded
                if isinstance(item, UnreadableManifest)
            ]
            raise SnapshotNotFound(
                f"snapshot prefix {selector!r} is ambiguous: it matches"
                f" {', '.join(candidates)}",
                hint="give more characters of the id",
            )
        return await self._load_manifest(entries[0])

    async def read_part(self, part: PartInfo) -> bytes:
        """Fetch a part's bytes; raise CorruptPart unless size and sha256 match."""
        try:
            data = await self.storage.get(part.path)
        except ObjectNotFound as exc:
            raise CorruptPart(part.path, "missing") from exc
        problems = []
        if len(data) != part.size:
            problems.append(f"size is {len(data)} bytes, expected {part.size}")
        digest = sha256_hex(data)
        if digest != part.sha256:
            problems.append(f"sha256 is {digest}, expected {part.sha256}")
        if problems:
            raise CorruptPart(part.path, "; ".join(problems))
        return data

    async def iter_records(self, manifest: Manifest) -> AsyncIterator[Record]:
        """Yield the snapshot's records in key order, one part at a time.

        Each part is fetched, checked (size, sha256, every record, count, first
        and last key, key order within and across parts) and only then decoded
        again to yield its records, so no record of a bad part is yielded. The
        next part is fetched while this one is checked, so memory contains two
        stored parts and one block of records. Raises CorruptPart for the first
        bad part; records of earlier parts have been yielded by then.
        """
        previous_key: str | None = None
        async for part, reading in self.prefetch_parts(manifest.parts):
            data = await reading
            await asyncio.to_thread(check_part, part, data, previous_key)
            for block in iter_checked_blocks(part, data, previous_key):
                for record in block:
                    yield record
            del data
            release_free_heap()
            previous_key = part.last_key

    async def prefetch_parts(
        self, parts: Sequence[PartInfo]
    ) -> AsyncIterator[tuple[PartInfo, asyncio.Task[bytes]]]:
        """Yield each part with the task that reads it (`read_part`).

        The next part's read starts as a part is yielded, so a download runs
        while the caller checks the part before it, and memory then contains
        two stored parts. Reads still running when the caller stops are
        cancelled.
        """
        upcoming = asyncio.create_task(self.read_part(parts[0])) if parts else None
        current: asyncio.Task[bytes] | None = None
        try:
            for index, part in enumerate(parts):
                assert upcoming is not None
                current, upcoming = upcoming, None
                if index + 1 < len(parts):
                    upcoming = asyncio.create_task(self.read_part(parts[index + 1]))
                yield part, current
        finally:
            for task in (current, upcoming):
                if task is None:
                    continue
                # A read's error was raised to the caller, or is not needed.
                error = await cancel_and_wait(task)
                if error is not None and not isinstance(error, KvsnapError):
                    raise error

    async def _manifest_entries(self) -> list[ManifestEntry]:
        entries = []
        for path, _size in await self.storage.list(SNAPSHOTS_DIR):
            entry = parse_manifest_path(path)
            if entry is None:
                logger.warning("ignoring %s: not a manifest name", path)
                continue
            entries.append(entry)
        return entries

    async def _load_manifests(
        self, entries: Iterable[ManifestEntry]
    ) -> list[Manifest | UnreadableManifest]:
        limit = asyncio.Semaphore(STORAGE_CONCURRENCY)

        async def load(entry: ManifestEntry) -> Manifest | UnreadableManifest:
            async with limit:
                return await self._load_manifest(entry)

        return list(await asyncio.gather(*(load(entry) for entry in entries)))

    async def _load_manifest(
        self, entry: ManifestEntry
    ) -> Manifest | UnreadableManifest:
        """Read and check a manifest. Errors of the store are raised."""
        data = await self.storage.get(entry.path)
        try:
            manifest = decode_manifest(data)
        except msgspec.DecodeError as exc:
            return UnreadableManifest(entry, str(exc))
        problem = _manifest_problem(manifest, entry)
        if problem:
            return UnreadableManifest(entry, problem)
        return manifest


def _manifest_problem(manifest: Manifest, entry: ManifestEntry) -> str | None:
    """Return what is wrong with a decoded manifest, or None."""
    if manifest.format_version > FORMAT_VERSION:
        return (
            f"format version {manifest.format_version} is newer than this"
            f" kvsnap reads ({FORMAT_VERSION}); upgrade kvsnap"
        )
    if manifest.id != entry.snapshot_id or manifest.namespace_id != entry.namespace_id:
        return (
            f"it describes snapshot {manifest.id} of namespace"
            f" {manifest.namespace_id}, but its name says otherwise"
        )
    try:
        started = parse_timestamp(manifest.read_started)
        parse_timestamp(manifest.read_finished)
    except ValueError as exc:
        return f"invalid timestamp: {exc}"
    # Prune deletes the objects that a manifest names, so a manifest may name
    # only itself and the parts in its own snapshot folder.
    expected_path = manifest_path(manifest.namespace_id, started, manifest.id)
    if entry.path != expected_path:
        return (
            f"its name does not match its read start {manifest.read_started}"
            f" (expected {expected_path})"
        )
    folder = snapshot_folder(manifest.namespace_id, started, manifest.id)
    for expected_number, part in enumerate(manifest.parts, start=1):
        if part.number != expected_number:
            return f"part {part.number} is listed where part {expected_number} belongs"
        try:
            check_object_path(part.path)
        except ValueError:
            return f"part {part.number} has an invalid path {part.path!r}"
        name = part.path.removeprefix(folder + "/")
        if name == part.path or "/" in name:
            return (
                f"part {part.number} path {part.path!r} is outside the snapshot's"
                f" folder {folder}/"
            )
    return None


def snapshot_order(manifest: Manifest) -> tuple[datetime, str]:
    """Sort key of manifests: read start, then id."""
    return parse_timestamp(manifest.read_started), manifest.id


def _describe_snapshot(manifest: Manifest) -> str:
    return (
        f"{manifest.id} ({manifest.namespace_title or manifest.namespace_id},"
        f" {manifest.read_started})"
    )


def _latest_selectors(manifests: list[Manifest], namespace_ids: set[str]) -> list[str]:
    """Return a latest@ selector for each of `namespace_ids`, sorted.

    A namespace is named by its newest title, or by its id when it has no
    title or when that title also matches another namespace in `manifests`,
    as its title or its id, because `latest@NAME` matches both.
    """
    newest_title: dict[str, str] = {}
    name_owners: dict[str, set[str]] = {}
    for manifest in sorted(manifests, key=snapshot_order):
        newest_title[manifest.namespace_id] = manifest.namespace_title
        for name in (manifest.namespace_title, manifest.namespace_id):
            name_owners.setdefault(name, set()).add(manifest.namespace_id)
    selectors = []
    for namespace_id in namespace_ids:
        title = newest_title.get(namespace_id, "")
        unique = bool(title) and name_owners[title] == {namespace_id}
        selectors.append(f"{LATEST}@{title if unique else namespace_id}")
    return sorted(selectors)


def _describe_namespaces(manifests: Iterable[Manifest]) -> str:
    titles: dict[str, str] = {}
    for manifest in manifests:
        titles[manifest.namespace_id] = manifest.namespace_title
    return capped_list(
        f"{title} ({namespace_id})" if title else namespace_id
        for namespace_id, title in sorted(titles.items())
    )


def capped_list(items: Iterable[str], limit: int = 10) -> str:
    """Join items with commas, naming at most `limit` and counting the rest."""
    listed = list(items)
    shown = ", ".join(listed[:limit])
    more = len(listed) - limit
    return f"{shown} and {more} more" if more > 0 else shown


class SnapshotWriter:
    """Writes one snapshot: parts first, then the manifest that makes it exist.

    Part numbers start at 1 and follow the order of `write_part` calls. A run
    that fails never calls `commit`, which leaves its parts as orphans.
    """

    def __init__(
        self,
        repository: Repository,
        namespace_id: str,
        read_started: datetime,
        snapshot_id: str,
    ) -> None:
        self.repository = repository
        self.id = snapshot_id
        self.namespace_id = namespace_id
        self.read_started = read_started
        self.manifest_path = manifest_path(namespace_id, read_started, snapshot_id)
        self._parts: dict[int, PartInfo] = {}
        self._next_number = 1
        self._last_key: str | None = None
        self._committed = False

    async def write_part(self, builder: PartBuilder) -> PartInfo:
        """Finish the builder's frame, upload it (retried) and return its PartInfo.

        Raises RepositoryError when the upload fails after retries, and
        ValueError for an empty builder or keys that do not ascend across parts.
        """
        if self._committed:
            raise RuntimeError(f"snapshot {self.id} is already committed")
        if (
            builder.records == 0
            or builder.first_key is None
            or builder.last_key is None
        ):
            raise ValueError("a part needs at least one record")
        if self._last_key is not None and key_order(builder.first_key) <= key_order(
            self._last_key
        ):
            raise ValueError(
                f"part keys must ascend: {builder.first_key!r} after {self._last_key!r}"
            )
        number = self._next_number
        self._next_number += 1
        self._last_key = builder.last_key

        data = builder.finish()
        path = part_path(self.namespace_id, self.read_started, self.id, number)
        part = PartInfo(
            number=number,
            path=path,
            size=len(data),
            sha256=sha256_hex(data),
            records=builder.records,
            raw_size=builder.raw_size,
            first_key=builder.first_key,
            last_key=builder.last_key,
        )
        await self.repository.storage.put(path, data)
        self._parts[number] = part
        logger.debug(
            "wrote part %s (%d records, %d bytes)",
            path,
            part.records,
            part.size,
            extra={"snapshot": self.id, "namespace": self.namespace_id},
        )
        return part

    async def commit(
        self,
        *,
        account_id: str,
        namespace_title: str,
        read_finished: datetime,
        keys: int,
        value_bytes: int,
        skipped_keys: int = 0,
        tags: Iterable[str] = (),
    ) -> Manifest:
        """Write the manifest, create-only, after every part; return it.

        Raises RepositoryError if a part was never written or the manifest
        path is taken, and ValueError if `keys` differs from the records in
        the parts.
        """
        if self._committed:
            raise RuntimeError(f"snapshot {self.id} is already committed")
        missing = [n for n in range(1, self._next_number) if n not in self._parts]
        if missing:
            raise RepositoryError(
                f"snapshot {self.id} cannot be committed: parts"
                f" {', '.join(map(str, missing))} were not written"
            )
        parts = [self._parts[number] for number in sorted(self._parts)]
        stored_records = sum(part.records for part in parts)
        if keys != stored_records:
            raise ValueError(
                f"keys is {keys} but the parts hold {stored_records} records"
            )
        await self._check_stored(parts)

        manifest = Manifest(
            id=self.id,
            tool_version=__version__,
            account_id=account_id,
            namespace_id=self.namespace_id,
            namespace_title=namespace_title,
            read_started=format_timestamp(self.read_started),
            read_finished=format_timestamp(read_finished),
            keys=keys,
            value_bytes=value_bytes,
            stored_bytes=sum(part.size for part in parts),
            parts=parts,
            hostname=socket.gethostname(),
            tags=list(tags),
            skipped_keys=skipped_keys,
        )
        await self.repository.storage.put(
            self.manifest_path, encode_json(manifest), create_only=True
        )
        self._committed = True
        logger.debug(
            "committed snapshot %s (%d keys in %d parts)",
            self.id,
            keys,
            len(parts),
            extra={"snapshot": self.id, "namespace": self.namespace_id},
        )
        return manifest

    async def _check_stored(self, parts: list[PartInfo]) -> None:
        """Raise RepositoryError unless every part is stored with its size.

        This is the quick verify, done before the manifest exists, so that a
        part lost or cut short by the store never becomes part of a snapshot.
        """
        for part in parts:
            size = await self.repository.storage.head(part.path)
            if size != part.size:
                found = "missing" if size is None else f"{size} bytes"
                raise RepositoryError(
                    f"snapshot {self.id} not committed: part {part.path} should "
                    f"hold {part.size} bytes but is {found} in the store"
                )
