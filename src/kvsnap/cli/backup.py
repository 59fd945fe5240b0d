"""`kvsnap backup`: snapshot one or more namespaces into the repository."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import typer

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
from kvsnap.errors import ConfigError
from kvsnap.lock import locked
from kvsnap.progress import Reporter, RichReporter
from kvsnap.repository import Repository


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
    lock_wait: float = LockWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Back up namespaces into verified snapshots.

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
    result = asyncio.run(_backup(settings, tag or [], lock_wait=lock_wait))
    if as_json:
        print_json(
            {
                "type": "backup",
                "ok": result.exit_code == 0,
                **dataclasses.asdict(result),
            }
        )
    else:
        _print_summary(result)
    raise typer.Exit(result.exit_code)


async def _backup(
    settings: Settings, tags: list[str], *, lock_wait: float = 0.0
) -> BackupResult:
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
                return await run_backup(
                    client,
                    repo,
                    chosen,
                    part_bytes=settings.part_bytes,
                    tags=tags,
                    reporter=reporter,
                )
        finally:
            reporter.close()


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
