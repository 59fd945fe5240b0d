"""`kvsnap backup`: snapshot one or more namespaces into the repository."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

import typer

from kvsnap.anomaly import Anomaly, check_anomaly
from kvsnap.backup import BackupResult, run_backup
from kvsnap.cli.app import app
from kvsnap.cli.options import (
    AccountOption,
    ConcurrencyOption,
    ConfigOption,
    JsonOption,
    LockWaitOption,
    MaxAttemptsOption,
    RateLimitOption,
    RepoOption,
)
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cli.repository import format_size
from kvsnap.cloudflare import open_client
from kvsnap.config import Settings, load_settings
from kvsnap.errors import ConfigError, KvsnapError
from kvsnap.lock import locked
from kvsnap.policy import load_policy
from kvsnap.progress import Reporter, RichReporter
from kvsnap.repository import Repository

log = logging.getLogger(__name__)


@app.command()
def backup(
    namespaces: list[str] = typer.Argument(
        None, help="Namespaces by id or exact title (id:X or title:X to be explicit)."
    ),
    all_namespaces: bool = typer.Option(
        False, "--all", help="Back up every namespace of the account."
    ),
    repo: str = RepoOption,
    account: str = AccountOption,
    config: Path = ConfigOption,
    concurrency: int = ConcurrencyOption,
    rate_limit: str = RateLimitOption,
    max_attempts: int = MaxAttemptsOption,
    part_size: str = typer.Option(
        None,
        "--part-size",
        help="Uncompressed bytes per part, e.g. 32MiB [default: 32MiB].",
        show_default=False,
    ),
    tag: list[str] = typer.Option(None, "--tag", help="Tag to record in the manifest."),
    no_anomaly_check: bool = typer.Option(
        False,
        "--no-anomaly-check",
        help="Skip comparing each new snapshot with the previous backup.",
    ),
    lock_wait: float = LockWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Back up namespaces into verified snapshots.

    After each namespace, the new snapshot is compared with the previous
    backup. When it deleted or changed more than the policy's anomaly_share
    of the keys, the previous snapshot is held and a warning names it. The
    exit code stays that of the backup: only `kvsnap run` reports an
    anomaly as exit code 8.

    Exit codes: 0 all succeeded, 3 some namespaces failed, 10 configuration
    error, 11 token rejected, 12 API failed after retries, 20 repository error,
    23 repository locked by prune.
    """
    settings = load_settings(
        config_file=config,
        repository=repo,
        account_id=account,
        namespaces=tuple(namespaces or ()),
        all_namespaces=all_namespaces,
        concurrency=concurrency,
        rate_limit=rate_limit,
        max_attempts=max_attempts,
        part_bytes=part_size,
    )
    for value in tag or []:
        if not value or not value.isprintable():
            raise ConfigError(
                f"invalid --tag {value!r}: expected a non-empty printable text"
            )
    # Read before the backup, so that an invalid policy fails before any work.
    anomaly_share = (
        None if no_anomaly_check else load_policy(settings.config_file).anomaly_share
    )
    result, anomalies = asyncio.run(
        _backup(settings, tag or [], lock_wait=lock_wait, anomaly_share=anomaly_share)
    )
    if as_json:
        print_json(
            {
                "type": "backup",
                "ok": result.exit_code == 0,
                **dataclasses.asdict(result),
                "anomalies": [anomaly.to_dict() for anomaly in anomalies],
            }
        )
    else:
        _print_summary(result)
    raise typer.Exit(result.exit_code)


async def _backup(
    settings: Settings,
    tags: list[str],
    *,
    lock_wait: float = 0.0,
    anomaly_share: float | None = None,
) -> tuple[BackupResult, list[Anomaly]]:
    """Back up the chosen namespaces, then check each new snapshot for an anomaly.

    `anomaly_share` None skips the check.
    """
    url = settings.require_repository()
    async with open_client(settings) as client:
        chosen = await client.resolve_namespaces(
            settings.namespaces, all_namespaces=settings.all_namespaces
        )
        repo = await Repository.open_or_init(url, account_id=client.account_id)
        reporter = RichReporter(stderr) if sys.stderr.isatty() else Reporter()
        try:
            # Shared: backups run side by side, but prune waits for them.
            async with locked(
                repo, exclusive=False, command="kvsnap backup", wait=lock_wait
            ):
                result = await run_backup(
                    client,
                    repo,
                    chosen,
                    part_bytes=settings.part_bytes,
                    tags=tags,
                    reporter=reporter,
                )
                # Under the same lock, so prune cannot remove the baseline.
                anomalies = []
                if anomaly_share is not None:
                    anomalies = await _check_anomalies(repo, result, anomaly_share)
                return result, anomalies
        finally:
            reporter.close()


async def _check_anomalies(
    repo: Repository, result: BackupResult, share: float
) -> list[Anomaly]:
    """Compare each new snapshot with its previous backup and warn on an anomaly.

    A failed check is logged as an error and does not change the exit code,
    because the backup itself succeeded.
    """
    anomalies = []
    for outcome in result.namespaces:
        if not outcome.ok or outcome.snapshot_id is None:
            continue
        try:
            manifest = await repo.resolve(outcome.snapshot_id)
            anomaly = await check_anomaly(repo, manifest, share=share)
        except KvsnapError as exc:
            log.error(
                "anomaly check of snapshot %s failed: %s",
                outcome.snapshot_id,
                exc,
                extra={
                    "namespace": outcome.namespace_id,
                    "snapshot": outcome.snapshot_id,
                },
            )
            continue
        if anomaly is None:
            continue
        anomalies.append(anomaly)
        log.warning(
            "anomaly in %s: %s; snapshot %s is held. Compare with `kvsnap diff"
            " %s %s`, then release it with `kvsnap hold release %s`",
            outcome.namespace_title or outcome.namespace_id,
            anomaly.describe(),
            anomaly.previous_id,
            anomaly.previous_id,
            anomaly.new_id,
            anomaly.previous_id,
            extra={"namespace": outcome.namespace_id, "snapshot": anomaly.new_id},
        )
    return anomalies


def _print_summary(result: BackupResult) -> None:
    for ns in result.namespaces:
        if ns.ok:
            stdout.print(
                f"snapshot {ns.snapshot_id}  {ns.namespace_title} ({ns.namespace_id})  "
                f"{ns.keys} keys  {format_size(ns.value_bytes)} of values  "
                f"{format_size(ns.stored_bytes)} stored  {ns.seconds:.2f} s",
                markup=False,
                highlight=False,
            )
        else:
            stdout.print(
                f"FAILED  {ns.namespace_title} ({ns.namespace_id}): {ns.error}",
                markup=False,
                highlight=False,
            )
