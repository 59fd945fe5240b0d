"""Reading written keys back and comparing them with the records.

After a restore, `read_back` reads every key through the API and compares
its value bytes (sha256), metadata (JSON equality) and expiration with the
record it was written from. Workers KV is eventually consistent, so a read
may return the old state for up to about 60 s after a write. Keys that
mismatch are therefore read again, with backoff, until the window ends, and
only then reported. `read_back` only reads and never writes.

Reads use bulk get (100 keys, text, with metadata and expiration). A key
whose record is binary, or whose bulk value contains U+FFFD (which may stand
for bytes that are not UTF-8), is read again alone as raw bytes. When the API
rejects a bulk get, each key of that batch is read alone, value and metadata.

Batches are read concurrently, at most the client's `concurrency` at once,
and their results are taken in input order. Every request still passes the
client's own request limit and rate limiter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kvsnap import limits
from kvsnap.cloudflare import REPLACEMENT_CHARACTER, KvClient, _BulkEntry, _Rejected
from kvsnap.format import Record, json_equal

log = logging.getLogger(__name__)

# The fields a mismatch can name.
MISSING = "missing"
VALUE = "value"
METADATA = "metadata"
EXPIRATION = "expiration"


@dataclass(frozen=True)
class Mismatch:
    """A key whose stored state still differed from its record at the end.

    `fields` names what differs: "missing" (the key is absent), or any of
    "value", "metadata" and "expiration".
    """

    key: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ReadBackResult:
    """The outcome of one read-back: counts, mismatches and time taken."""

    verified: int
    mismatched: list[Mismatch]
    seconds: float
    rounds: int  # reads of the keys, the first pass included

    @property
    def ok(self) -> bool:
        return not self.mismatched


@dataclass(frozen=True)
class _Expected:
    """The expected state of a key, with a hash in place of the value."""

    key: str
    sha256: bytes
    binary: bool
    metadata: Any  # None when the record has none
    expiration: float | None


@dataclass
class _Observed:
    """The state that one read of a key returned."""

    value: bytes | None = None  # None when the key is absent
    metadata: Any = None
    expiration: float | None = None


async def read_back(
    client: KvClient,
    namespace_id: str,
    records: Iterable[Record],
    *,
    window_seconds: float = limits.READBACK_WINDOW_SECONDS,
    backoff_base: float = limits.READBACK_BACKOFF_BASE_SECONDS,
    backoff_max: float = limits.READBACK_BACKOFF_MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> ReadBackResult:
    """Read the records' keys back and compare them with the records.

    It sends only read requests. `records` are the records as written
    (after any expiration change). They are consumed in batches of 100, and
    only hashes of the keys that differ are kept. The window starts when
    `read_back` is called. Keys that differ are read again after delays
    doubling from `backoff_base` up to `backoff_max`, the last round at the
    end of the window, and whatever still differs then is reported. `clock`
    and `sleep` can be replaced by tests.
    """
    started = clock()
    deadline = started + window_seconds
    expected = (_expect(record) for record in records)
    read, differing = await _check_all(client, namespace_id, expected)
    verified = read - len(differing)

    rounds = 1
    while differing and (remaining := deadline - clock()) > 0:
        delay = min(backoff_max, backoff_base * 2 ** (rounds - 1), remaining)
        log.info(
            "read-back of namespace %s: %d keys differ, reading them again in %.1f s",
            namespace_id,
            len(differing),
            delay,
        )
        await sleep(delay)
        rounds += 1
        _, still = await _check_all(
            client, namespace_id, (item for item, _ in differing)
        )
        verified += len(differing) - len(still)
        differing = still

    seconds = clock() - started
    mismatched = [Mismatch(item.key, fields) for item, fields in differing]
    if mismatched:
        log.warning(
            "read-back of namespace %s: %d keys still differ after %.1f s",
            namespace_id,
            len(mismatched),
            seconds,
        )
    return ReadBackResult(verified, mismatched, seconds, rounds)


async def _check_all(
    client: KvClient, namespace_id: str, expected: Iterable[_Expected]
) -> tuple[int, list[tuple[_Expected, tuple[str, ...]]]]:
    """Check the keys in batches of 100, several batches at once.

    Returns the number of keys read and those that differ, in input order.
    At most `client.concurrency` batches are read at a time, so memory holds
    the expected states of those batches and the keys that differ. When a
    batch fails, the others are cancelled and the error is raised.
    """
    limit = max(1, client.concurrency)
    running: dict[asyncio.Task[list[tuple[_Expected, tuple[str, ...]]]], int] = {}
    found: dict[int, list[tuple[_Expected, tuple[str, ...]]]] = {}
    read = 0

    async def collect() -> None:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            index = running.pop(task)
            found[index] = task.result()

    try:
        for index, batch in enumerate(_batches(expected, limits.BULK_GET_MAX_KEYS)):
            if len(running) >= limit:
                await collect()
            read += len(batch)
            task = asyncio.create_task(_check(client, namespace_id, batch))
            running[task] = index
        while running:
            await collect()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    differing = [item for index in sorted(found) for item in found[index]]
    return read, differing


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _expect(record: Record) -> _Expected:
    expiration = float(record.expiration) if record.has_expiration else None  # type: ignore[arg-type]
    return _Expected(
        key=record.key,
        sha256=hashlib.sha256(record.value_bytes()).digest(),
        binary=record.base64,
        metadata=record.metadata if record.has_metadata else None,
        expiration=expiration,
    )


async def _check(
    client: KvClient, namespace_id: str, expected: list[_Expected]
) -> list[tuple[_Expected, tuple[str, ...]]]:
    """Read up to 100 keys and return those that differ, with the fields."""
    observed = await _read_batch(client, namespace_id, expected)
    differing = []
    for item in expected:
        fields = _compare(item, observed[item.key])
        if fields:
            differing.append((item, fields))
    return differing


async def _read_batch(
    client: KvClient, namespace_id: str, expected: list[_Expected]
) -> dict[str, _Observed]:
    names = [item.key for item in expected]
    try:
        entries = await client.bulk_get_text(namespace_id, names)
    except _Rejected as exc:
        log.debug(
            "bulk get of %d keys rejected (%s), reading each alone", len(names), exc
        )
        return await _read_alone(client, namespace_id, names)

    observed: dict[str, _Observed] = {}
    raw_keys: list[str] = []
    for item in expected:
        entry = entries.get(item.key)
        observed[item.key] = _from_entry(entry)
        if entry is not None and _needs_raw(item, entry):
            raw_keys.append(item.key)
    for key in raw_keys:
        found = await client.get_value(namespace_id, key)
        if found is None:
            observed[key] = _Observed()
        else:
            observed[key].value = found[0]
    return observed


def _from_entry(entry: _BulkEntry | None) -> _Observed:
    if entry is None:
        return _Observed()
    text = entry.value if isinstance(entry.value, str) else ""
    expiration = float(entry.expiration) if entry.expiration is not None else None
    return _Observed(text.encode("utf-8"), entry.metadata, expiration)


def _needs_raw(item: _Expected, entry: _BulkEntry) -> bool:
    if item.binary or not isinstance(entry.value, str):
        return True
    return REPLACEMENT_CHARACTER in entry.value


async def _read_alone(
    client: KvClient, namespace_id: str, names: list[str]
) -> dict[str, _Observed]:
    observed: dict[str, _Observed] = {}
    for key in names:
        found = await client.get_value(namespace_id, key)
        if found is None:
            observed[key] = _Observed()
            continue
        data, expiration_header = found
        metadata = await client.get_metadata(namespace_id, key)
        observed[key] = _Observed(data, metadata, _parse_expiration(expiration_header))
    return observed


def _parse_expiration(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return float(header)
    except ValueError:
        log.warning("ignoring an expiration header that is not a number: %r", header)
        return None


def _compare(item: _Expected, seen: _Observed) -> tuple[str, ...]:
    if seen.value is None:
        return (MISSING,)
    fields = []
    if hashlib.sha256(seen.value).digest() != item.sha256:
        fields.append(VALUE)
    if not json_equal(seen.metadata, item.metadata):
        fields.append(METADATA)
    if not _same_expiration(item.expiration, seen.expiration):
        fields.append(EXPIRATION)
    return tuple(fields)


def _same_expiration(expected: float | None, seen: float | None) -> bool:
    if expected is None or seen is None:
        return expected is None and seen is None
    # KV keeps whole seconds; a record may carry a fraction.
    return abs(expected - seen) < 1.0
