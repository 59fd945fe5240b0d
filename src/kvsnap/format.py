"""On-disk shapes of repository format version 1 and the encoding of parts.

A record is one JSON line with the fields of a ``wrangler kv bulk put`` entry.
A part is a zstd frame of records sorted by the UTF-8 bytes of their keys. The
manifest names every part with its size and sha256 and is written last. The
full specification is docs/FORMAT.md; this module is its executable form.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import zstandard

from kvsnap.limits import ZSTD_LEVEL

FORMAT_VERSION = 1
REPOSITORY_CONFIG_NAME = "kvsnap.json"


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """One key with its value, metadata and expiration.

    `value` is the UTF-8 text of the stored bytes, or their standard base64
    form when they are not valid UTF-8, in which case `base64` is true.
    `metadata` and `expiration` are left out when the key has none.
    """

    key: str
    value: str
    base64: bool = False
    metadata: Any = msgspec.UNSET
    expiration: int | float | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def from_bytes(
        cls,
        key: str,
        data: bytes,
        *,
        metadata: Any = msgspec.UNSET,
        expiration: int | float | msgspec.UnsetType = msgspec.UNSET,
    ) -> Record:
        """Build a record from raw value bytes, choosing text or base64."""
        try:
            return cls(key, data.decode("utf-8"), False, metadata, expiration)
        except UnicodeDecodeError:
            encoded = base64.b64encode(data).decode("ascii")
            return cls(key, encoded, True, metadata, expiration)

    def value_bytes(self) -> bytes:
        """Return the exact bytes the key held."""
        if self.base64:
            return base64.b64decode(self.value, validate=True)
        return self.value.encode("utf-8")

    def value_size(self) -> int:
        """Return the length of `value_bytes()`, decoding only base64 values."""
        if self.base64:
            return len(self.value_bytes())
        text = self.value
        return len(text) if text.isascii() else len(text.encode("utf-8"))

    @property
    def has_metadata(self) -> bool:
        return self.metadata is not msgspec.UNSET

    @property
    def has_expiration(self) -> bool:
        return self.expiration is not msgspec.UNSET


class PartInfo(msgspec.Struct, frozen=True):
    """One stored part as the manifest describes it."""

    number: int
    path: str  # relative to the repository root
    size: int  # stored (compressed) bytes
    sha256: str  # hex digest of the stored bytes
    records: int
    raw_size: int  # uncompressed JSON-lines bytes
    first_key: str
    last_key: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """The description of one snapshot; its presence makes the snapshot exist.

    `read_started` and `read_finished` bound the read: a KV read is not
    atomic, so each key holds a value it had at some moment in that window.
    """

    format_version: int = FORMAT_VERSION
    id: str
    tool: str = "kvsnap"
    tool_version: str
    account_id: str
    namespace_id: str
    namespace_title: str
    read_started: str  # RFC 3339, UTC
    read_finished: str  # RFC 3339, UTC
    keys: int
    value_bytes: int
    stored_bytes: int
    parts: list[PartInfo]
    hostname: str = ""
    tags: list[str] = []
    skipped_keys: int = 0  # listed, then gone before their value was read


class RepositoryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The contents of kvsnap.json at the repository root."""

    format_version: int = FORMAT_VERSION
    repository_id: str
    created: str
    encryption: str | None = None


# Compressed bytes fed to the decompressor at a time; any size works. At the
# usual 3 to 5 times compression this gives blocks of about 1 MB of records.
_DECOMPRESS_CHUNK_BYTES = 256 * 1024


def json_equal(a: Any, b: Any) -> bool:
    """Compare decoded JSON by value: object key order is ignored, and `true`
    differs from `1`, which Python's ``==`` treats as equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    return type(a) is type(b) and a == b


def key_order(key: str) -> bytes:
    """Return the sort key of a KV key: its UTF-8 bytes, as KV lists them."""
    return key.encode("utf-8")


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(Record)


def encode_record(record: Record) -> bytes:
    """Encode a record as one JSON line, newline included."""
    return _record_encoder.encode(record) + b"\n"


def decode_record(line: bytes) -> Record:
    """Decode one JSON line into a record; raise msgspec.DecodeError if invalid."""
    return _record_decoder.decode(line)


def encode_json(obj: msgspec.Struct) -> bytes:
    """Encode a manifest or repository config as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"


def decode_manifest(data: bytes) -> Manifest:
    return msgspec.json.decode(data, type=Manifest)


def decode_repository_config(data: bytes) -> RepositoryConfig:
    return msgspec.json.decode(data, type=RepositoryConfig)


class PartBuilder:
    """Compress records into one part, tracking what the manifest needs."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        # The frame checksum (XXH64 of the content) lets a reader detect damage
        # even without the manifest's sha256.
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self._writer = compressor.stream_writer(self._buffer, closefd=False)
        self.records = 0
        self.raw_size = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    def add(self, record: Record) -> None:
        """Append a record; raise ValueError unless its key sorts after the last."""
        if self.last_key is not None and key_order(record.key) <= key_order(
            self.last_key
        ):
            raise ValueError(
                f"record keys must be added in strictly ascending byte order:"
                f" {record.key!r} after {self.last_key!r}"
            )
        line = encode_record(record)
        self._writer.write(line)
        self.records += 1
        self.raw_size += len(line)
        if self.first_key is None:
            self.first_key = record.key
        self.last_key = record.key

    def finish(self) -> bytes:
        """Close the zstd frame and return the part's stored bytes."""
        self._writer.close()
        return self._buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_part_records(data: bytes) -> Iterator[Record]:
    """Decompress a stored part and yield its records in order.

    A part is exactly one complete zstd frame. Raises zstandard.ZstdError for a
    damaged, truncated or empty frame and for bytes after the frame, and
    msgspec.DecodeError for a line that is not a valid record.
    """
    for block in iter_part_blocks(data):
        yield from block


def iter_part_blocks(data: bytes) -> Iterator[list[Record]]:
    """Decompress a stored part and yield its records in order, in blocks.

    Raises as `iter_part_records` does. Each block contains the complete
    lines of about one decompressed chunk, decoded in one call, so memory
    keeps one block at a time rather than the whole part. The next chunk is
    decompressed in a worker thread while the caller handles this block
    (zstd releases the GIL).
    """
    pending = bytearray()  # the start of a line that continues in the next chunk
    for output in _decompressed_chunks(data):
        cut = output.rfind(b"\n")
        if cut == -1:
            pending += output
            continue
        if pending:
            pending += memoryview(output)[: cut + 1]
            yield from _decode_block(bytes(pending))
            pending.clear()
        else:
            yield from _decode_block(output, cut + 1)
        pending += memoryview(output)[cut + 1 :]
    if pending:
        yield [decode_record(bytes(pending))]


def _decode_block(data: bytes, end: int | None = None) -> Iterator[list[Record]]:
    """Decode newline-ended lines, one record each, from `data[:end]`.

    Yields one list for the whole block. The block decoder skips blank
    lines and accepts two records on one line. So when it fails, or the
    counts of records and lines differ, each line is decoded alone and
    yielded as a list of one. The bad line then raises msgspec.DecodeError
    after the records before it, which lets the caller number it.
    """
    end = len(data) if end is None else end
    view = memoryview(data)[:end]
    try:
        records = _record_decoder.decode_lines(view)
    except msgspec.DecodeError:
        records = None
    if records is not None and len(records) == data.count(b"\n", 0, end):
        yield records
        return
    for line in bytes(view).split(b"\n")[:-1]:
        yield [decode_record(line)]


def _decompressed_chunks(data: bytes) -> Iterator[bytes]:
    """Yield the decompressed output of a one-frame part, chunk by chunk.

    Raises zstandard.ZstdError for a damaged or truncated frame and for
    bytes after the frame.
    """
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    view = memoryview(data)
    size = len(view)

    def step(offset: int) -> tuple[bytes, bool, bytes]:
        output = decompressor.decompress(
            view[offset : offset + _DECOMPRESS_CHUNK_BYTES]
        )
        return output, decompressor.eof, decompressor.unused_data

    eof = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvsnap-zstd") as pool:
        offset = 0
        running = pool.submit(step, offset) if size else None
        while running is not None:
            output, eof, unused = running.result()
            offset += _DECOMPRESS_CHUNK_BYTES
            if eof:
                if unused or offset < size:
                    raise zstandard.ZstdError("unexpected bytes after the zstd frame")
                running = None
            else:
                running = pool.submit(step, offset) if offset < size else None
            yield output
    if not eof:
        raise zstandard.ZstdError("incomplete zstd frame: the part is truncated")
