"""Export a snapshot as one JSON array that `wrangler kv bulk put` accepts.

Each element has exactly a record's fields: ``key``, ``value``, ``base64``
only when true, ``metadata`` and ``expiration`` only when present. Values are
copied as stored and never parsed, so the text "123" stays a string.

Metadata that is a string, number or boolean is exported as stored, but
wrangler (4.86) rejects a whole bulk put file that holds such metadata;
`kvsnap restore` and `kvsnap import` accept it. The export warns when it
writes any.

The array is written as it is read, one part in memory at a time. Parts are
checked as they arrive, so a bad part stops the export with CorruptPart, and
totals that do not match the manifest stop it with VerifyError before the
closing bracket. A regular file target is written as FILE.partial and renamed
only when complete. A symbolic link is followed to its target, and a target
that is not a regular file (a FIFO or a character device) is written in place.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

import msgspec

from kvsnap.errors import ConfigError
from kvsnap.format import Manifest
from kvsnap.repository import Repository
from kvsnap.verify import manifest_problems, raise_for_problems, totals_problems

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
    """Write the snapshot's records to `out` as a JSON array, streaming.

    Raises VerifyError before writing anything when the manifest's totals
    contradict its part list, and before the closing bracket when the records
    or value bytes read differ from the manifest's `keys` and `value_bytes`.
    """
    raise_for_problems(manifest, manifest_problems(manifest))

    records = 0
    value_bytes = 0
    scalar_metadata = 0
    written = out.write(b"[")
    async for record in repo.iter_records(manifest):
        separator = b"\n" if records == 0 else b",\n"
        written += out.write(separator + _encoder.encode(record))
        records += 1
        value_bytes += len(record.value_bytes())
        if record.has_metadata and not isinstance(record.metadata, dict | list | None):
            scalar_metadata += 1
    raise_for_problems(
        manifest, totals_problems(manifest, records=records, value_bytes=value_bytes)
    )

    written += out.write(b"\n]\n" if records else b"]\n")
    out.flush()
    if scalar_metadata:
        logger.warning(
            "%d keys have metadata that is not a JSON object or array: "
            "wrangler kv bulk put rejects this file, kvsnap restore and "
            "kvsnap import accept it",
            scalar_metadata,
            extra={"snapshot": manifest.id},
        )
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
    """Export into the file at `path`, following a symbolic link.

    A regular file, or a name that does not exist yet, is written through
    `path`.partial and renamed only on success. On failure the partial file
    is removed and an existing file is left as it was. A FIFO, a character
    device or a socket is written in place, because renaming over it would
    replace it. Raises ConfigError when the file cannot be written.
    """
    target, in_place = _export_target(path)
    if in_place:
        return await _export_in_place(repo, manifest, target)

    partial = target.with_name(target.name + PARTIAL_SUFFIX)
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
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write export file {target}: {exc.strerror}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return result


def _export_target(path: Path) -> tuple[Path, bool]:
    """Return the file to write for `path` and whether to write it in place."""
    try:
        # strict=False: a link to a missing file resolves to the file to create.
        target = path.resolve() if path.is_symlink() else path
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target, False
    except (OSError, RuntimeError) as exc:
        # Python 3.11 raises RuntimeError for a symbolic link loop.
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot write export file {path}: {reason}") from exc
    if stat.S_ISDIR(mode):
        raise ConfigError(f"cannot write export file {path}: it is a folder")
    return target, not stat.S_ISREG(mode)


async def _export_in_place(
    repo: Repository, manifest: Manifest, target: Path
) -> ExportResult:
    # Opening a FIFO for writing waits until a reader opens it.
    try:
        out = target.open("wb")
    except OSError as exc:
        raise ConfigError(f"cannot write export file {target}: {exc.strerror}") from exc
    try:
        with out:
            return await export_snapshot(repo, manifest, out)
    except OSError as exc:
        raise ConfigError(f"cannot write export file {target}: {exc.strerror}") from exc
