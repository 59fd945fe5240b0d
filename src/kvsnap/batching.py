"""Cutting a stream of records into bulk-write requests.

A bulk write (``PUT .../bulk``) takes at most 10,000 pairs and 100,000,000
bytes of request body. The size is measured on the exact bytes sent:
`encode_items` turns the item list into the JSON body (after base64 and
JSON escaping, brackets and commas included), and `KvClient.bulk_write`
hands those bytes to the Cloudflare SDK, which sends them unchanged.

Each record maps to one item field for field: a base64 record is sent with
``"base64": true`` and its stored text, never encoded again, and metadata or
expiration that a record lacks stays absent from its item.

A record whose expiration has passed is skipped and counted. The API rejects
an expiration less than 60 s ahead, so a record that expires sooner than
`limits.NEAR_EXPIRY_SECONDS` is skipped too, or moved to that point, as
`NearExpiry` chooses. An invalid record raises `InvalidRecord` naming its key.
"""

from __future__ import annotations

import binascii
import enum
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from kvsnap import limits
from kvsnap.errors import InvalidRecord
from kvsnap.format import Record

log = logging.getLogger(__name__)

ExpirationClass = Literal["ok", "expired", "expiring"]

# "[" and "]" around the items; one "," between two items.
_BRACKETS_BYTES = 2
_SEPARATOR_BYTES = 1
_EMPTY_STRING = b'""'


class NearExpiry(enum.Enum):
    """Policy for a record that expires too soon for the API to accept it."""

    SKIP = "skip"  # leave it out and count it (the default)
    EXTEND = "extend"  # write it with the earliest expiration that is safe


@dataclass
class BatchCounts:
    """Records seen by `iter_batches`, filled in as batches are produced."""

    records: int = 0
    written: int = 0  # placed in a batch
    expired: int = 0
    expiring_skipped: int = 0
    expiring_extended: int = 0


@dataclass(frozen=True)
class WriteBatch:
    """The records of one bulk-write request and the exact size of its body."""

    records: list[Record]
    body_bytes: int

    def __len__(self) -> int:
        return len(self.records)


def classify_expiration(record: Record, now: float) -> ExpirationClass:
    """Return whether a record's expiration is "ok", "expired" or "expiring".

    "expired" means the expiration is at or before `now` (epoch seconds).
    "expiring" means it is less than `limits.NEAR_EXPIRY_SECONDS` ahead. The
    API rejects expirations less than 60 s ahead, and the extra margin covers
    the time a batch may wait before it reaches the API.
    """
    if not record.has_expiration:
        return "ok"
    expiration = float(record.expiration)  # type: ignore[arg-type]
    if expiration <= now:
        return "expired"
    if expiration < now + limits.NEAR_EXPIRY_SECONDS:
        return "expiring"
    return "ok"


def validate_record(record: Record, now: float) -> str | None:
    """Return why Workers KV would reject the record, or None when it is valid.

    Checks the key (not empty, not ``.`` or ``..``, at most 512 UTF-8 bytes),
    the decoded value (at most 26,214,400 bytes), the metadata (at most 1,024
    bytes of compact JSON) and the expiration (a finite number). An expired
    or expiring record is not invalid: `classify_expiration` at the same
    `now` decides what happens to it.
    """
    reason = _key_problem(record.key)
    if reason is None:
        reason = _value_problem(record)
    if reason is None:
        reason = _metadata_problem(record)
    if reason is None and record.has_expiration:
        expiration = record.expiration
        if not isinstance(expiration, int | float) or not math.isfinite(expiration):
            reason = f"expiration {expiration!r} is not a finite number"
        elif expiration <= 0:
            reason = f"expiration {expiration!r} is not a positive epoch time"
    return reason


def _key_problem(key: str) -> str | None:
    if key == "":
        return "the key is empty"
    if key in limits.RESERVED_KEYS:
        return f"the key {key!r} is reserved"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the key is not valid UTF-8 text"
    if size > limits.MAX_KEY_BYTES:
        return (
            f"the key is {size} UTF-8 bytes, over the limit of {limits.MAX_KEY_BYTES}"
        )
    return None


def _value_problem(record: Record) -> str | None:
    try:
        size = len(record.value_bytes())
    except (binascii.Error, ValueError) as exc:
        # UnicodeEncodeError (a lone surrogate) is a ValueError too.
        kind = "base64" if record.base64 else "UTF-8 text"
        return f"the value is not valid {kind}: {exc}"
    if size > limits.MAX_VALUE_BYTES:
        return (
            f"the value is {size:,} bytes, over the limit of "
            f"{limits.MAX_VALUE_BYTES:,} bytes"
        )
    return None


def _metadata_problem(record: Record) -> str | None:
    if not record.has_metadata:
        return None
    try:
        size = len(msgspec.json.encode(record.metadata))
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        return f"the metadata cannot be encoded as JSON: {exc}"
    if size > limits.MAX_METADATA_BYTES:
        return (
            f"the metadata is {size:,} bytes of JSON, over the limit of "
            f"{limits.MAX_METADATA_BYTES:,} bytes"
        )
    return None


def record_item(record: Record) -> dict[str, Any]:
    """Return the bulk-write item of a record: its fields, absent ones left out."""
    item: dict[str, Any] = {"key": record.key, "value": record.value}
    if record.base64:
        item["base64"] = True
    if record.has_metadata:
        item["metadata"] = record.metadata
    if record.has_expiration:
        item["expiration"] = record.expiration
    return item


def encode_items(items: Any) -> bytes:
    """Encode items (or one item, or any JSON value) as a bulk-write body.

    msgspec writes compact JSON with non-ASCII characters kept as UTF-8 and
    control characters, quotes and backslashes escaped, straight into one
    bytes object. The SDK's own encoder (``json.dumps``, then UTF-8) keeps a
    str and the bytes at once, which at 100 MB bodies cost a restore
    several times the body in memory.
    """
    return msgspec.json.encode(items)


def body_size(records: Sequence[Record]) -> int:
    """Return the size in bytes of the bulk-write body that carries `records`."""
    if not records:
        return _BRACKETS_BYTES
    sizes = sum(item_size(record) for record in records)
    return _BRACKETS_BYTES + sizes + _SEPARATOR_BYTES * (len(records) - 1)


def item_size(record: Record) -> int:
    """Return the size of the record's item as `encode_items` writes it.

    The value, which may be 35 MB of base64, is measured without encoding
    it whenever JSON leaves it as it is. The record must have passed
    `validate_record`, because valid base64 is taken to need no escaping.
    """
    shell = record_item(record)
    shell["value"] = ""
    if record.base64:
        value_size = len(record.value) + len(_EMPTY_STRING)
    else:
        value_size = _string_size(record.value)
    return len(encode_items(shell)) - len(_EMPTY_STRING) + value_size


def _string_size(text: str) -> int:
    """Return the size of `text` as a JSON string, quotes included."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + len(_EMPTY_STRING)
    return len(encode_items(text))


def iter_batches(
    records: Iterable[Record],
    *,
    now: float,
    near_expiry: NearExpiry = NearExpiry.SKIP,
    counts: BatchCounts | None = None,
    max_pairs: int = limits.BULK_WRITE_MAX_PAIRS,
    max_bytes: int = limits.BULK_WRITE_MAX_BYTES,
) -> Iterator[WriteBatch]:
    """Split records into bulk-write batches, lazily and in order.

    Records are pulled from `records` only until the next batch is full, so
    at most one batch is held at a time. Expired records, and expiring ones
    under `NearExpiry.SKIP`, are left out and counted in `counts`. A record
    that `validate_record` rejects, or whose item alone exceeds `max_bytes`,
    raises `InvalidRecord` naming its key. Batches produced before it have
    been yielded already.

    NOTE: expirations are judged at `now`. A batch sent more than
    `limits.EXPIRATION_MARGIN_SECONDS` later, for example after a 5-minute
    429 lockout, may carry an expiration that the API then rejects, and the
    API rejects the whole request with it.
    """
    counts = counts if counts is not None else BatchCounts()
    batch: list[Record] = []
    size = _BRACKETS_BYTES
    for record in records:
        counts.records += 1
        prepared = _prepare(record, now, near_expiry, counts)
        if prepared is None:
            continue
        size_of_item = item_size(prepared)
        if _BRACKETS_BYTES + size_of_item > max_bytes:
            # TODO: write such a record with a single-key PUT, which takes the
            # raw value with no JSON escaping.
            raise InvalidRecord(
                record.key,
                f"its bulk-write item is {size_of_item:,} bytes after base64 and "
                f"JSON escaping, over the request limit of {max_bytes:,} bytes",
            )
        added = size_of_item + (_SEPARATOR_BYTES if batch else 0)
        if batch and (len(batch) >= max_pairs or size + added > max_bytes):
            yield WriteBatch(batch, size)
            batch, size = [], _BRACKETS_BYTES
            added = size_of_item
        batch.append(prepared)
        size += added
        counts.written += 1
    if batch:
        yield WriteBatch(batch, size)


def _prepare(
    record: Record, now: float, near_expiry: NearExpiry, counts: BatchCounts
) -> Record | None:
    """Validate a record and apply the expiration policy; None means skip it."""
    reason = validate_record(record, now)
    if reason is not None:
        raise InvalidRecord(record.key, reason)
    state = classify_expiration(record, now)
    if state == "expired":
        counts.expired += 1
        log.debug("skipping key %r: its expiration has passed", record.key)
        return None
    if state == "expiring" and near_expiry is NearExpiry.SKIP:
        counts.expiring_skipped += 1
        log.debug("skipping key %r: it expires too soon to write", record.key)
        return None
    if state == "expiring":
        counts.expiring_extended += 1
        extended = math.ceil(now) + limits.NEAR_EXPIRY_SECONDS
        return msgspec.structs.replace(record, expiration=extended)
    return record


def iter_key_chunks(
    keys: Iterable[str], size: int = limits.BULK_DELETE_MAX_KEYS
) -> Iterator[list[str]]:
    """Yield lists of at most `size` keys, lazily and in order."""
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
