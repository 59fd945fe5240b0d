"""Compare two key-sorted record streams: snapshots or a live namespace.

`diff_records` merges two streams sorted by the UTF-8 bytes of their keys,
holding one record of each side at a time, so memory does not grow with the
namespace. It yields a `KeyDiff` for every key that was added, removed or
changed and fills a `DiffCounts` as it goes. Values compare by their exact
bytes, metadata by JSON equality and expiration by number, and a field that
one side has and the other lacks counts as changed. Values themselves never
appear in a result, only their size and sha256.

`format_key` and `parse_keys_file` define the keys file that
``kvsnap diff --keys-only`` writes: one key per line, raw when the key is
printable, else a JSON string (see `format_key` for the exact rule).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from kvsnap.cloudflare import KvClient, ReadStats
from kvsnap.errors import ConfigError
from kvsnap.format import Manifest, Record, json_equal, key_order
from kvsnap.repository import Repository

LIVE_PREFIX = "live:"

# Names of the fields a changed key can differ in, in output order.
FIELD_VALUE = "value"
FIELD_METADATA = "metadata"
FIELD_EXPIRATION = "expiration"

Change = Literal["added", "removed", "changed"]


class RecordDigest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One side of a key: size and sha256 of the value, metadata, expiration.

    `metadata` and `expiration` are left out when the key has none.
    """

    sha256: str
    size: int
    metadata: Any = msgspec.UNSET
    expiration: int | float | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def of(cls, record: Record) -> RecordDigest:
        value = record.value_bytes()
        return cls(
            sha256=hashlib.sha256(value).hexdigest(),
            size=len(value),
            metadata=record.metadata,
            expiration=record.expiration,
        )


class KeyDiff(msgspec.Struct, frozen=True, kw_only=True):
    """One key that differs: `a` is None when added, `b` is None when removed."""

    type: Literal["key"] = "key"
    key: str
    change: Change
    fields: list[str]  # FIELD_* names, empty unless `change` is "changed"
    a: RecordDigest | None
    b: RecordDigest | None


@dataclass
class DiffCounts:
    """Counts of one comparison, filled in while `diff_records` runs."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    keys_a: int = 0
    keys_b: int = 0

    @property
    def differences(self) -> int:
        return self.added + self.removed + self.changed

    def summary(self) -> dict[str, Any]:
        """Return the final ``--json`` line of `kvsnap diff`."""
        return {
            "type": "summary",
            "identical": self.differences == 0,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "keys_a": self.keys_a,
            "keys_b": self.keys_b,
        }


# Comparing records.


def changed_fields(a: Record, b: Record) -> list[str]:
    """Return the FIELD_* names in which two records of one key differ."""
    fields = []
    same_text = a.base64 == b.base64 and a.value == b.value
    if not same_text and a.value_bytes() != b.value_bytes():
        fields.append(FIELD_VALUE)
    if a.has_metadata != b.has_metadata or not json_equal(a.metadata, b.metadata):
        fields.append(FIELD_METADATA)
    if a.has_expiration != b.has_expiration or a.expiration != b.expiration:
        fields.append(FIELD_EXPIRATION)
    return fields


def compare_records(a: Record | None, b: Record | None) -> KeyDiff | None:
    """Compare two versions of one key, None meaning absent; None if equal."""
    if a is None and b is None:
        return None
    if a is None:
        assert b is not None
        return KeyDiff(
            key=b.key, change="added", fields=[], a=None, b=RecordDigest.of(b)
        )
    if b is None:
        return KeyDiff(
            key=a.key, change="removed", fields=[], a=RecordDigest.of(a), b=None
        )
    fields = changed_fields(a, b)
    if not fields:
        return None
    return KeyDiff(
        key=a.key,
        change="changed",
        fields=fields,
        a=RecordDigest.of(a),
        b=RecordDigest.of(b),
    )


# Merging two streams.


async def filter_prefix(
    records: AsyncIterator[Record], prefix: str | None, side: str
) -> AsyncIterator[Record]:
    """Yield the records whose key starts with `prefix`, checking key order.

    Keys with a prefix are contiguous in byte order, so reading stops at the
    first key after them. Raises ValueError when a key does not sort strictly
    after the one before it, because the merge would then be wrong.
    """
    prefix_bytes = key_order(prefix) if prefix else b""
    previous: bytes | None = None
    try:
        async for record in records:
            order = key_order(record.key)
            if previous is not None and order <= previous:
                raise ValueError(
                    f"side {side} is not sorted by key bytes: {record.key!r} came"
                    f" after {previous.decode('utf-8', 'replace')!r}"
                )
            previous = order
            if order.startswith(prefix_bytes):
                yield record
            elif order > prefix_bytes:
                return
    finally:
        # Closing a live stream stops its background reads at once.
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


async def _next(records: AsyncIterator[Record]) -> Record | None:
    return await anext(records, None)


async def merge_by_key(
    a: AsyncIterator[Record], b: AsyncIterator[Record]
) -> AsyncIterator[tuple[Record | None, Record | None]]:
    """Yield (record of a, record of b) per key, None for the side lacking it.

    Both streams must be sorted strictly by `key_order`; the pairs come out in
    that order. Only one record of each side is held at a time.
    """
    record_a, record_b = await _next(a), await _next(b)
    while record_a is not None or record_b is not None:
        if record_b is None or (
            record_a is not None and key_order(record_a.key) < key_order(record_b.key)
        ):
            pair = (record_a, None)
        elif record_a is None or key_order(record_b.key) < key_order(record_a.key):
            pair = (None, record_b)
        else:
            pair = (record_a, record_b)
        if pair[0] is not None:
            record_a = await _next(a)
        if pair[1] is not None:
            record_b = await _next(b)
        yield pair


async def diff_records(
    a: AsyncIterator[Record],
    b: AsyncIterator[Record],
    counts: DiffCounts,
    *,
    prefix: str | None = None,
) -> AsyncIterator[KeyDiff]:
    """Yield the keys that differ between two streams sorted by key bytes.

    "added" means only `b` has the key, "removed" only `a`. Both streams must
    be sorted strictly by `key_order`; ValueError is raised otherwise.
    `counts` is complete once the iteration ends.
    """
    left = filter_prefix(a, prefix, "A")
    right = filter_prefix(b, prefix, "B")
    try:
        async for older, newer in merge_by_key(left, right):
            counts.keys_a += older is not None
            counts.keys_b += newer is not None
            found = compare_records(older, newer)
            if found is None:
                counts.unchanged += 1
                continue
            if found.change == "added":
                counts.added += 1
            elif found.change == "removed":
                counts.removed += 1
            else:
                counts.changed += 1
            yield found
    finally:
        await left.aclose()
        await right.aclose()


# The two sides of `kvsnap diff`.


@dataclass(frozen=True)
class Side:
    """One argument of `kvsnap diff`: a snapshot selector or a live namespace."""

    text: str
    live_namespace: str | None  # set for live:NAMESPACE

    @property
    def is_live(self) -> bool:
        return self.live_namespace is not None


def parse_side(text: str) -> Side:
    """Parse `live:NAMESPACE` or a snapshot selector; raise ConfigError if empty."""
    if text.startswith(LIVE_PREFIX):
        namespace = text[len(LIVE_PREFIX) :]
        if not namespace:
            raise ConfigError(
                f"invalid side {text!r}: name a namespace after live:,"
                " as in live:my-namespace"
            )
        return Side(text, namespace)
    if not text.strip():
        raise ConfigError(
            "invalid side '': give a snapshot id, latest, latest@NAMESPACE"
            " or live:NAMESPACE"
        )
    return Side(text, None)


@dataclass
class OpenedSide:
    """A side resolved to a record stream, with a description for people."""

    description: str
    records: AsyncIterator[Record]
    manifest: Manifest | None = None  # None for a live namespace


async def open_side(
    side: Side,
    *,
    repository: Repository | None,
    client: KvClient | None,
    prefix: str | None = None,
) -> OpenedSide:
    """Resolve a side to its records; nothing is read until iteration starts.

    A snapshot needs `repository` and a live namespace needs `client`.
    Raises SnapshotNotFound or NamespaceNotFound when the side names nothing.
    """
    if side.live_namespace is not None:
        if client is None:
            raise ValueError("a live side needs a KvClient")
        [namespace] = await client.resolve_namespaces([side.live_namespace])
        records = client.read_records(namespace.id, ReadStats(), prefix=prefix)
        return OpenedSide(f"live namespace {namespace.title} ({namespace.id})", records)
    if repository is None:
        raise ValueError("a snapshot side needs a Repository")
    manifest = await repository.resolve(side.text)
    trimmed = manifest_for_prefix(manifest, prefix)
    description = (
        f"snapshot {manifest.id} of {manifest.namespace_title or manifest.namespace_id}"
        f" ({manifest.read_started})"
    )
    return OpenedSide(description, repository.iter_records(trimmed), manifest)


def manifest_for_prefix(manifest: Manifest, prefix: str | None) -> Manifest:
    """Return the manifest with only the parts that can hold keys with `prefix`."""
    if not prefix:
        return manifest
    prefix_bytes = key_order(prefix)
    parts = [
        part
        for part in manifest.parts
        if key_order(part.last_key) >= prefix_bytes
        and (
            key_order(part.first_key) <= prefix_bytes
            or key_order(part.first_key).startswith(prefix_bytes)
        )
    ]
    return msgspec.structs.replace(manifest, parts=parts)


# The keys file.


def format_key(key: str) -> str:
    """Format a key for one line of a keys file and for terminal output.

    The key is written raw when every character is printable, it has no
    leading or trailing space and it does not start with ``"`` or ``{``.
    Otherwise it is written as a JSON string in which every non-printable
    character (control characters, line separators, bidirectional marks) is
    a ``\\u`` escape, so the line cannot move the cursor or change colours.
    """
    raw = (
        key != ""
        and key.isprintable()
        and key == key.strip(" ")
        and not key.startswith(('"', "{"))
    )
    return key if raw else quote_key(key)


def quote_key(key: str) -> str:
    """Return the key as a JSON string with only printable characters in it."""
    return (
        '"' + escape_nonprintable(key.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    )


def escape_nonprintable(text: str) -> str:
    """Replace each non-printable character with its JSON ``\\u`` escape."""
    return "".join(
        char if char.isprintable() else _escape_code_point(ord(char)) for char in text
    )


# The short escapes of JSON, easier to read than their \u forms.
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


def _escape_code_point(code: int) -> str:
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON requires
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def parse_keys_file(path: str | Path) -> list[str]:
    """Read the keys of a file that `kvsnap diff` wrote, in file order.

    Accepts the output of ``--keys-only`` and of ``--json``, line by line:

    - a line that starts with ``"`` is one key as a JSON string;
    - a line that starts with ``{`` is a ``--json`` line: its ``key`` is
      taken when ``type`` is ``"key"``, and the summary line is skipped;
    - an empty line is skipped (KV keys are never empty);
    - any other line is one key, as written.

    The line ends at ``\\n``, and a ``\\r`` before it is dropped, because
    `format_key` quotes any key containing one. Raises ConfigError naming the
    file and line when the file cannot be read or a line is invalid.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc.strerror}") from exc
    return list(parse_keys_lines(data.split(b"\n"), source=str(path)))


def parse_keys_lines(lines: Iterable[bytes], *, source: str) -> Iterator[str]:
    """Yield the keys of keys-file lines, as `parse_keys_file` describes."""
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix(b"\r")
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        if not line:
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source} line {number} is not valid UTF-8: {exc.reason}"
            ) from exc
        key = _parse_key_line(text, f"{source} line {number}")
        if key is not None:
            yield key


def _parse_key_line(text: str, where: str) -> str | None:
    if not text.startswith(('"', "{")):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc.msg}") from exc
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, dict):
        if parsed.get("type") == "summary":
            return None
        key = parsed.get("key")
        if parsed.get("type") in ("key", None) and isinstance(key, str):
            return key
    raise ConfigError(
        f"{where} is neither a key nor a line of `kvsnap diff --json`",
        hint="write one key per line, or a JSON string for keys with special"
        " characters",
    )
