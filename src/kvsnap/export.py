"""Export a snapshot as one JSON array that `wrangler kv bulk put` accepts.

Each element has exactly a record's fields: ``key``, ``value``, ``base64``
only when true, ``metadata`` and ``expiration`` only when present. Values are
copied as stored and never parsed, so the text "123" stays a string.

The array is written as it is read, one part in memory at a time. Parts are
checked as they arrive, so a bad part stops the export with CorruptPart. A
file target is written as FILE.partial and renamed only when complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

import msgspec

from kvsnap.errors import ConfigError
from kvsnap.format import Manifest
from kvsnap.repository import Repository

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"

_encoder = msgspec.json.Encoder()


class ExportResult(msgspec.Struct, frozen=True):
    snapshot_id: str
    records: int
    bytes_written: int


async def export_snapshot(
    repo: Repository, manifest: Manifest, out: BinaryIO
) -> ExportResult:
    """Write the snapshot's records to `out` as a JSON array, streaming."""
    records = 0
    written = out.write(b"[")
    async for record in repo.iter_records(manifest):
        separator = b"\n" if records == 0 else b",\n"
        written += out.write(separator + _encoder.encode(record))
        records += 1
    written += out.write(b"\n]\n" if records else b"]\n")
    out.flush()
    logger.debug(
        "exported snapshot %s (%d records)",
        manifest.id,
        records,
        extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
    )
    return ExportResult(manifest.id, records, written)


async def export_to_file(
    repo: Repository, manifest: Manifest, path: Path
) -> ExportResult:
    """Export into `path` through `path`.partial, renamed only on success.

    On failure the partial file is removed and an existing `path` is left as
    it was. Raises ConfigError when the file cannot be written.
    """
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        out = partial.open("wb")
    except OSError as exc:
        raise ConfigError(
            f"cannot write export file {partial}: {exc.strerror}"
        ) from exc
    try:
        with out:
            result = await export_snapshot(repo, manifest, out)
            os.fsync(out.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write export file {path}: {exc.strerror}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return result
