"""The backup workflow: read namespaces, write parts, commit manifests.

For each namespace the records stream from `KvClient.read_records` into
parts of about `part_bytes` uncompressed bytes. Each full part is uploaded
before the next is filled, so memory holds one part at a time. The manifest
is written only after every part is stored and its size checked; a namespace
that fails at any step leaves no manifest, so no partial snapshot exists.
Namespaces are independent: one failure does not stop the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kvsnap.cloudflare import KvClient, Namespace, ReadStats
from kvsnap.errors import EXIT_OK, EXIT_PARTIAL, KvsnapError
from kvsnap.format import Manifest, PartBuilder
from kvsnap.progress import Reporter
from kvsnap.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class NamespaceBackup:
    """The outcome of backing up one namespace."""

    namespace_id: str
    namespace_title: str
    ok: bool
    snapshot_id: str | None = None
    keys: int = 0
    value_bytes: int = 0
    stored_bytes: int = 0
    parts: int = 0
    skipped_keys: int = 0
    requests: int = 0
    raw_reads: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = EXIT_OK


@dataclass
class BackupResult:
    """The outcome of one backup run over one or more namespaces."""

    namespaces: list[NamespaceBackup] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when all succeeded, else the failures' shared exit code, else 3."""
        failed = [ns for ns in self.namespaces if not ns.ok]
        if not failed:
            return EXIT_OK
        codes = {ns.exit_code for ns in failed}
        if len(failed) == len(self.namespaces) and len(codes) == 1:
            return codes.pop()
        return EXIT_PARTIAL


async def backup_namespace(
    client: KvClient,
    repo: Repository,
    namespace: Namespace,
    *,
    part_bytes: int,
    tags: list[str] | None = None,
    reporter: Reporter | None = None,
) -> tuple[Manifest, ReadStats]:
    """Write one snapshot of `namespace`, or raise a KvsnapError if a step fails."""
    reporter = reporter or Reporter()
    started = datetime.now(UTC)
    writer = repo.start_snapshot(namespace_id=namespace.id, read_started=started)
    stats = ReadStats()
    builder = PartBuilder()
    reporter.start(namespace.title)
    try:
        async for record in client.read_records(namespace.id, stats):
            builder.add(record)
            reporter.advance()
            if builder.raw_size >= part_bytes:
                await writer.write_part(builder)
                builder = PartBuilder()
        if builder.records:
            await writer.write_part(builder)
        finished = datetime.now(UTC)
        manifest = await writer.commit(
            account_id=client.account_id,
            namespace_title=namespace.title,
            read_finished=finished,
            keys=stats.keys,
            value_bytes=stats.value_bytes,
            skipped_keys=stats.skipped_keys,
            tags=tags or [],
        )
        return manifest, stats
    finally:
        reporter.finish()


async def run_backup(
    client: KvClient,
    repo: Repository,
    namespaces: list[Namespace],
    *,
    part_bytes: int,
    tags: list[str] | None = None,
    reporter: Reporter | None = None,
) -> BackupResult:
    """Back up each namespace in turn, recording success or failure of each."""
    result = BackupResult()
    run_start = time.monotonic()
    for namespace in namespaces:
        start = time.monotonic()
        requests_before = client.requests
        try:
            manifest, stats = await backup_namespace(
                client,
                repo,
                namespace,
                part_bytes=part_bytes,
                tags=tags,
                reporter=reporter,
            )
        except KvsnapError as exc:
            outcome = NamespaceBackup(
                namespace.id,
                namespace.title,
                ok=False,
                error=exc.message,
                exit_code=exc.exit_code,
            )
            log.error(
                "backup of %s failed: %s",
                namespace.title,
                exc.message,
                extra={"namespace": namespace.id, "error": type(exc).__name__},
            )
            if exc.hint:
                log.error("hint: %s", exc.hint, extra={"namespace": namespace.id})
        else:
            outcome = NamespaceBackup(
                namespace.id,
                namespace.title,
                ok=True,
                snapshot_id=manifest.id,
                keys=manifest.keys,
                value_bytes=manifest.value_bytes,
                stored_bytes=manifest.stored_bytes,
                parts=len(manifest.parts),
                skipped_keys=manifest.skipped_keys,
                raw_reads=stats.raw_gets,
            )
        outcome.seconds = round(time.monotonic() - start, 3)
        outcome.requests = client.requests - requests_before
        if outcome.ok:
            log.info(
                "backed up %s: %d keys, %d value bytes, %d bytes stored, "
                "%.2f s, snapshot %s",
                namespace.title,
                outcome.keys,
                outcome.value_bytes,
                outcome.stored_bytes,
                outcome.seconds,
                outcome.snapshot_id,
                extra={
                    "namespace": namespace.id,
                    "snapshot": outcome.snapshot_id,
                    "keys": outcome.keys,
                    "bytes": outcome.stored_bytes,
                    "duration": outcome.seconds,
                },
            )
        result.namespaces.append(outcome)
    result.requests = client.requests
    result.seconds = round(time.monotonic() - run_start, 3)
    return result
