"""Command `kvsnap prune`: apply the retention policy to the repository."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import ConfigOption, JsonOption, LockWaitOption, RepoOption
from kvsnap.cli.output import print_json, print_table, stdout
from kvsnap.cli.repository import format_size
from kvsnap.config import load_settings
from kvsnap.policy import Retention, format_duration, load_policy, parse_duration
from kvsnap.repository import Repository, parse_timestamp
from kvsnap.retention import ORPHAN_GRACE, PruneResult, prune

log = logging.getLogger(__name__)


def _calendar_option(name: str, period: str) -> typer.models.OptionInfo:
    """Declare --keep-NAME, which keeps one snapshot per calendar `period`."""
    return typer.Option(
        None,
        f"--keep-{name}",
        min=0,
        help=f"Keep the newest snapshot of each of the N newest {period} (UTC)"
        " that have snapshots.",
        show_default=False,
    )


KeepDailyOption = _calendar_option("daily", "days")
KeepWeeklyOption = _calendar_option("weekly", "ISO weeks")
KeepMonthlyOption = _calendar_option("monthly", "months")
KeepYearlyOption = _calendar_option("yearly", "years")


@app.command("prune")
def prune_command(
    keep_within: str | None = typer.Option(
        None,
        "--keep-within",
        help="Keep every snapshot within this of the namespace's newest snapshot"
        " (or of now, if earlier), e.g. 30d, 36h, 2w.",
        show_default=False,
    ),
    keep_last: int | None = typer.Option(
        None,
        "--keep-last",
        min=0,
        help="Keep the N newest snapshots of each namespace.",
        show_default=False,
    ),
    keep_daily: int | None = KeepDailyOption,
    keep_weekly: int | None = KeepWeeklyOption,
    keep_monthly: int | None = KeepMonthlyOption,
    keep_yearly: int | None = KeepYearlyOption,
    namespace: str | None = typer.Option(
        None,
        "--namespace",
        "-n",
        help="Only prune snapshots of this namespace id or title.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List what would be removed and why; delete nothing."
    ),
    lock_wait: float = LockWaitOption,
    repo: str | None = RepoOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Remove the snapshots that the retention rules do not keep.

    Any --keep-* option replaces the whole [retention] table of kvsnap.toml;
    without one, that table applies, and without it keep-within 30d. Per
    namespace, the newest snapshot that passed verify (or the newest one,
    when none passed) and held snapshots are always kept. Orphan parts of
    failed runs older than 24 hours are removed too.

    Exit codes: 0 done, 10 configuration error, 20 repository error,
    21 no repository, 22 no snapshots of --namespace, 23 repository locked.
    """
    settings = load_settings(config_file=config, repository=repo)
    url = settings.require_repository()
    flags = (keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    if keep_within is not None or any(flag is not None for flag in flags):
        retention = Retention(
            # "0", as in the file, names no window: the other flags decide.
            keep_within=parse_duration(keep_within, label="--keep-within")
            if keep_within not in (None, "0")
            else None,
            keep_last=keep_last or 0,
            keep_daily=keep_daily or 0,
            keep_weekly=keep_weekly or 0,
            keep_monthly=keep_monthly or 0,
            keep_yearly=keep_yearly or 0,
        )
    else:
        retention = load_policy(settings.config_file).retention
    if retention.empty:
        log.warning(
            "no retention rule is set: prune keeps only the newest verified"
            " snapshot of each namespace and the held snapshots"
        )

    result = asyncio.run(
        _prune(
            url, retention, dry_run=dry_run, lock_wait=lock_wait, namespace=namespace
        )
    )
    if as_json:
        print_json(result.to_dict() | {"rules": describe_retention(retention)})
    else:
        _print_result(result, retention)


async def _prune(
    url: str,
    retention: Retention,
    *,
    dry_run: bool,
    lock_wait: float,
    namespace: str | None,
) -> PruneResult:
    repository = await Repository.open(url)
    return await prune(
        repository,
        retention,
        dry_run=dry_run,
        lock_wait=lock_wait,
        namespace=namespace,
    )


def describe_retention(retention: Retention) -> list[str]:
    """Return the active rules as option-like texts: within 30d, daily 7."""
    rules = []
    if retention.keep_within is not None:
        rules.append(f"within {format_duration(retention.keep_within)}")
    for name, count in (
        ("last", retention.keep_last),
        ("daily", retention.keep_daily),
        ("weekly", retention.keep_weekly),
        ("monthly", retention.keep_monthly),
        ("yearly", retention.keep_yearly),
    ):
        if count:
            rules.append(f"{name} {count}")
    return rules


def _print_result(result: PruneResult, retention: Retention) -> None:
    rules = ", ".join(describe_retention(retention)) or "none (protected only)"
    stdout.print(f"rules: {rules}", markup=False, highlight=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ACTION", no_wrap=True)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAMESPACE")
    table.add_column("TIME (UTC)", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("REASONS")
    remove_word = "would remove" if result.dry_run else "removed"
    rows = [(manifest, "keep", ", ".join(reasons)) for manifest, reasons in result.kept]
    rows += [(manifest, remove_word, "") for manifest in result.removed]
    rows.sort(key=lambda row: (row[0].namespace_id, row[0].read_started, row[0].id))
    for manifest, action, reasons in rows:
        table.add_row(
            action,
            manifest.id,
            manifest.namespace_title or manifest.namespace_id,
            f"{parse_timestamp(manifest.read_started):%Y-%m-%d %H:%M:%S}",
            format_size(manifest.stored_bytes),
            reasons,
        )
    for orphan in result.orphans_removed:
        table.add_row(
            remove_word,
            orphan.snapshot_id,
            orphan.folder,
            f"{orphan.last_modified:%Y-%m-%d %H:%M:%S}",
            format_size(orphan.size),
            f"orphan parts ({len(orphan.paths)}), no manifest",
        )
    grace = format_duration(ORPHAN_GRACE)
    for orphan in result.orphans_kept:
        table.add_row(
            "keep",
            orphan.snapshot_id,
            orphan.folder,
            f"{orphan.last_modified:%Y-%m-%d %H:%M:%S}",
            format_size(orphan.size),
            f"orphan parts ({len(orphan.paths)}), younger than {grace}",
        )
    for path in result.unreadable:
        table.add_row("keep", "", path, "", "", "invalid manifest, left alone")
    if table.row_count:
        print_table(table)

    verb = "would remove" if result.dry_run else "removed"
    stdout.print(
        f"{verb} {_count(len(result.removed), 'snapshot')} and"
        f" {_count(len(result.orphans_removed), 'orphan folder')}"
        f" ({format_size(result.bytes_freed)}),"
        f" kept {_count(len(result.kept), 'snapshot')}",
        markup=False,
        highlight=False,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
