"""The import workflow: turn an existing export file into a snapshot.

Three shapes of file are accepted, detected from the content or forced:

- ``array``: the JSON array that ``wrangler kv bulk put`` loads, one object
  per key with ``key``, ``value`` and optionally ``base64``, ``metadata``,
  ``expiration`` and ``expiration_ttl`` (what `kvsnap export` writes);
- ``object``: a JSON object of key to string value;
- ``lines``: JSON lines, one object of the ``array`` form per line.

A field that is JSON ``null`` counts as absent. ``expiration_ttl`` is
relative to the moment the file was written, which a snapshot cannot
record, so it becomes an absolute ``expiration`` of snapshot time plus TTL.

Every entry is checked as Workers KV would check it (`validate_record`),
plus the shape of its fields. A key that appears in more than one entry is
invalid in every entry, because nothing in the file shows which one is
current. `plan_import` reports invalid entries without writing anything, and
`write_snapshot` writes the valid records as a snapshot tagged ``imported``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from kvsnap import limits
from kvsnap.batching import validate_record
from kvsnap.cloudflare import KvClient, Namespace, resolve_namespace
from kvsnap.errors import ConfigError
from kvsnap.format import Manifest, PartBuilder, Record, key_order
from kvsnap.repository import IMPORTED_TAG, Repository, check_namespace_id

log = logging.getLogger(__name__)

SOURCE_TAG_PREFIX = "source:"
# Account id recorded when none is configured; `kvsnap restore` then needs
# --account to say where the records go.
UNKNOWN_ACCOUNT = "unknown"

ENTRY_FIELDS = ("key", "value", "base64", "metadata", "expiration", "expiration_ttl")
# A bare namespace id as Cloudflare issues them: 32 hexadecimal characters.
_CLOUDFLARE_ID_LENGTH = 32
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class ExportFormat(enum.Enum):
    """The shape of an export file."""

    ARRAY = "array"
    OBJECT = "object"
    LINES = "lines"

    @property
    def description(self) -> str:
        return {
            ExportFormat.ARRAY: "a wrangler kv bulk put array",
            ExportFormat.OBJECT: "a JSON object of key to string value",
            ExportFormat.LINES: "JSON lines of wrangler entries",
        }[self]


@dataclass(frozen=True)
class InvalidEntry:
    """An entry of the file that cannot become a record, and why."""

    position: str  # "entry 3" (array or object, from 1) or "line 3"
    key: str | None  # None when the entry has no string key
    reason: str

    @property
    def label(self) -> str:
        if self.key is None:
            return self.position
        return f"{self.key!r} ({self.position})"


@dataclass
class ImportPlan:
    """The records an export file yields, sorted by key, and what was rejected."""

    source: Path
    format: ExportFormat
    detected: bool  # False when --format chose the shape
    snapshot_time: datetime
    entries: int = 0
    records: list[Record] = field(default_factory=list)
    invalid: list[InvalidEntry] = field(default_factory=list)
    ttl_converted: int = 0

    @property
    def value_bytes(self) -> int:
        return sum(len(record.value_bytes()) for record in self.records)


class _Object(dict[str, Any]):
    """A decoded JSON object that keeps its pairs in file order, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs
        counts = Counter(name for name, _ in pairs)
        self.duplicates = [name for name, count in counts.items() if count > 1]


class _EntryError(Exception):
    """An entry's fields do not form a record; the message is the reason."""


# Reading the file.


def parse_import_time(text: str) -> datetime:
    """Parse --time: an ISO 8601 date or time, taken as UTC when it has no offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(
            f"invalid --time {text!r}: expected an ISO 8601 time such as "
            "2024-05-01T02:00:00Z or a date such as 2024-05-01"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def file_time(path: Path) -> datetime:
    """Return the modification time of `path`, the default snapshot time."""
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _decode_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_Object)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _looks_like_entry(document: dict[str, Any]) -> bool:
    """Return whether an object is one wrangler entry, not a key-to-value map."""
    return (
        isinstance(document.get("key"), str)
        and "value" in document
        and set(document) <= set(ENTRY_FIELDS)
    )


def read_export(
    path: Path, forced: ExportFormat | None
) -> tuple[ExportFormat, list[tuple[str, Any]]]:
    """Read an export file whole and return its shape and its (position, entry) pairs.

    An object entry is returned as (key, value) pairs. Raises ConfigError for
    a file that is not UTF-8 or matches none of the shapes (or not the forced
    one). A line of a JSON-lines file that is not valid JSON comes back as an
    entry holding the parse error, so that it is reported with the others.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if not text.strip():
        raise ConfigError(f"{path} is empty", hint=_SHAPES_HINT)

    if forced is ExportFormat.LINES:
        return ExportFormat.LINES, _read_lines(text)
    try:
        document = _decode_json(text)
    except json.JSONDecodeError as exc:
        if forced is not None:
            raise ConfigError(
                f"{path} is not valid JSON ({exc}), so it cannot be read as "
                f"{forced.description}",
                hint=_SHAPES_HINT,
            ) from exc
        return _detect_lines(path, text, exc)
    return _document_entries(path, document, forced)


_SHAPES_HINT = (
    "kvsnap import reads a wrangler kv bulk put array, a JSON object of key to "
    "string value, or JSON lines of wrangler entries; --format picks one"
)


def _document_entries(
    path: Path, document: Any, forced: ExportFormat | None
) -> tuple[ExportFormat, list[tuple[str, Any]]]:
    if isinstance(document, list) and forced in (None, ExportFormat.ARRAY):
        entries = [(f"entry {n}", item) for n, item in enumerate(document, start=1)]
        return ExportFormat.ARRAY, entries
    if isinstance(document, dict) and forced is None and _looks_like_entry(document):
        # One wrangler entry alone is a JSON-lines file of one line.
        return ExportFormat.LINES, [("line 1", document)]
    if isinstance(document, _Object) and forced in (None, ExportFormat.OBJECT):
        # Every pair, repeated keys included, so that they are reported.
        pairs = [(f"entry {n}", pair) for n, pair in enumerate(document.pairs, start=1)]
        return ExportFormat.OBJECT, pairs
    expected = forced.description if forced else "an array or an object"
    raise ConfigError(
        f"{path} is a JSON {_json_type(document)}, not {expected}",
        hint=_SHAPES_HINT,
    )


def _detect_lines(
    path: Path, text: str, error: json.JSONDecodeError
) -> tuple[ExportFormat, list[tuple[str, Any]]]:
    """Read a file that is not one JSON document as JSON lines, if it is that."""
    entries = _read_lines(text)
    position, first = entries[0]
    if not isinstance(first, _Object):
        problem = "is not JSON" if isinstance(first, _BadLine) else "is not an object"
        raise ConfigError(
            f"{path} matches none of the accepted shapes: it is not one JSON "
            f"document ({error}), and its {position} {problem}",
            hint=_SHAPES_HINT,
        )
    return ExportFormat.LINES, entries


class _BadLine:
    """A line of a JSON-lines file that is not valid JSON."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read_lines(text: str) -> list[tuple[str, Any]]:
    entries: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = _decode_json(line)
        except json.JSONDecodeError as exc:
            entry = _BadLine(f"the line is not valid JSON: {exc}")
        entries.append((f"line {number}", entry))
    return entries


# Turning entries into records.


def _optional(fields: dict[str, Any], name: str) -> Any:
    value = fields.get(name)
    return msgspec.UNSET if value is None else value


def _number(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _EntryError(f"{name} is a JSON {_json_type(value)}, expected a number")
    if not math.isfinite(value) or value <= 0:
        raise _EntryError(f"{name} {value!r} is not a positive number")
    return value


def _entry_record(entry: Any, base_time: int) -> tuple[Record, bool]:
    """Return the record of a wrangler entry and whether its TTL was converted."""
    if isinstance(entry, _BadLine):
        raise _EntryError(entry.reason)
    if not isinstance(entry, dict):
        raise _EntryError(f"the entry is a JSON {_json_type(entry)}, not an object")
    if isinstance(entry, _Object) and entry.duplicates:
        raise _EntryError(f"field {entry.duplicates[0]!r} appears more than once")
    unknown = sorted(set(entry) - set(ENTRY_FIELDS))
    if unknown:
        raise _EntryError(
            f"unknown field {unknown[0]!r}; an entry has {', '.join(ENTRY_FIELDS)}"
        )
    key, value = entry.get("key"), entry.get("value")
    if not isinstance(key, str):
        raise _EntryError(f"key is a JSON {_json_type(key)}, expected a string")
    if not isinstance(value, str):
        raise _EntryError(f"value is a JSON {_json_type(value)}, expected a string")
    is_base64 = _optional(entry, "base64")
    if is_base64 is not msgspec.UNSET and not isinstance(is_base64, bool):
        raise _EntryError(f"base64 is a JSON {_json_type(is_base64)}, not a boolean")

    expiration = _optional(entry, "expiration")
    ttl = _optional(entry, "expiration_ttl")
    if expiration is not msgspec.UNSET and ttl is not msgspec.UNSET:
        raise _EntryError("the entry has both expiration and expiration_ttl")
    if expiration is not msgspec.UNSET:
        expiration = _number(expiration, "expiration")
    converted = ttl is not msgspec.UNSET
    if converted:
        expiration = base_time + _number(ttl, "expiration_ttl")

    metadata = _optional(entry, "metadata")
    if is_base64 is True:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _EntryError(f"the value is not valid base64: {exc}") from exc
        # A value that is UTF-8 text is stored as text, as FORMAT.md requires.
        record = Record.from_bytes(key, data, metadata=metadata, expiration=expiration)
    else:
        record = Record(key, value, False, metadata, expiration)
    return record, converted


def _pair_record(pair: tuple[str, Any]) -> Record:
    key, value = pair
    if not isinstance(value, str):
        raise _EntryError(f"value is a JSON {_json_type(value)}, expected a string")
    return Record(key, value)


def _entry_key(export_format: ExportFormat, entry: Any) -> str | None:
    if export_format is ExportFormat.OBJECT:
        return entry[0]  # type: ignore[no-any-return]
    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
        return entry["key"]  # type: ignore[no-any-return]
    return None


def plan_import(
    path: Path, *, forced: ExportFormat | None, snapshot_time: datetime
) -> ImportPlan:
    """Read an export file and sort its valid records by key, writing nothing.

    NOTE: the file is read whole and every record is kept in memory until the
    snapshot is written, so memory grows with the file. The shapes are JSON
    documents that must be parsed whole anyway, and records must be sorted by
    key before the first part is written.
    """
    export_format, entries = read_export(path, forced)
    plan = ImportPlan(path, export_format, forced is None, snapshot_time)
    plan.entries = len(entries)
    base_time = math.floor(snapshot_time.timestamp())
    now = snapshot_time.timestamp()

    positions: defaultdict[str, list[str]] = defaultdict(list)
    for position, entry in entries:
        key = _entry_key(export_format, entry)
        if key is not None:
            positions[key].append(position)

    for position, entry in entries:
        key = _entry_key(export_format, entry)
        if key is not None and len(positions[key]) > 1:
            where = ", ".join(positions[key])
            reason = f"the key appears more than once ({where})"
            plan.invalid.append(InvalidEntry(position, key, reason))
            continue
        try:
            if export_format is ExportFormat.OBJECT:
                record, converted = _pair_record(entry), False
            else:
                record, converted = _entry_record(entry, base_time)
        except _EntryError as exc:
            plan.invalid.append(InvalidEntry(position, key, str(exc)))
            continue
        reason = validate_record(record, now)
        if reason is not None:
            plan.invalid.append(InvalidEntry(position, key, reason))
            continue
        plan.records.append(record)
        plan.ttl_converted += converted

    plan.records.sort(key=lambda record: key_order(record.key))
    return plan


# Naming the namespace and writing the snapshot.


def namespace_id_of(name: str) -> str | None:
    """Return the id that --namespace names (`id:ID` or 32 hex digits), else None."""
    kind, _, value = name.partition(":")
    if kind == "id" and value:
        check_namespace_id(value)
        if len(value) != _CLOUDFLARE_ID_LENGTH or not set(value) <= _HEX_DIGITS:
            raise ConfigError(
                f"invalid namespace id {value!r}: expected 32 hexadecimal characters",
                hint="copy the id from kvsnap snapshots or the Cloudflare dashboard",
            )
        return value
    if len(name) == _CLOUDFLARE_ID_LENGTH and set(name) <= _HEX_DIGITS:
        return name
    return None


async def lookup_namespace(client: KvClient, name: str) -> Namespace:
    """Find a namespace by title (or `title:TITLE`) in the client's account."""
    return resolve_namespace(name, await client.list_namespaces())


async def write_snapshot(
    repo: Repository,
    plan: ImportPlan,
    *,
    account_id: str,
    namespace: Namespace,
    part_bytes: int = limits.DEFAULT_PART_BYTES,
) -> Manifest:
    """Write the plan's records as a snapshot read at the plan's snapshot time.

    The manifest records `account_id`, the namespace, the snapshot time as
    both ends of the read window, and the tags ``imported`` and
    ``source:<file name>``. A failure leaves orphan parts and no snapshot.
    """
    writer = repo.start_snapshot(
        namespace_id=namespace.id, read_started=plan.snapshot_time
    )
    builder = PartBuilder()
    for record in plan.records:
        builder.add(record)
        if builder.raw_size >= part_bytes:
            await writer.write_part(builder)
            builder = PartBuilder()
    if builder.records:
        await writer.write_part(builder)
    manifest = await writer.commit(
        account_id=account_id,
        namespace_title=namespace.title,
        read_finished=plan.snapshot_time,
        keys=len(plan.records),
        value_bytes=plan.value_bytes,
        tags=[IMPORTED_TAG, SOURCE_TAG_PREFIX + plan.source.name],
    )
    log.info(
        "imported %d records from %s as snapshot %s",
        manifest.keys,
        plan.source.name,
        manifest.id,
        extra={"namespace": namespace.id, "snapshot": manifest.id},
    )
    return manifest
