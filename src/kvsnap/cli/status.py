"""Command `kvsnap status`: each namespace against the RPO target and the cadences."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import ConfigOption, JsonOption, RepoOption
from kvsnap.cli.output import print_json, print_table, stdout
from kvsnap.cli.repository import format_size
from kvsnap.config import Settings, load_settings
from kvsnap.policy import Policy, format_duration, load_policy
from kvsnap.repository import Repository
from kvsnap.status import StatusReport, collect_status


async def status_report(
    settings: Settings, policy: Policy, namespace: str | None = None
) -> StatusReport:
    """Open the repository of `settings` and grade it against `policy`."""
    repo = await Repository.open(settings.require_repository())
    return await collect_status(
        repo, policy, expected=list(settings.namespaces), namespace=namespace
    )


@app.command("status")
def status_command(
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Only this namespace id or title."
    ),
    repo: str = RepoOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Show each namespace against the RPO target, verify and drill cadences.

    Exit codes, as monitoring plugins use them: 0 ok, 1 warning, 2 breach.
    Errors keep kvsnap's codes (21 no repository, 10 configuration).
    """
    settings = load_settings(config_file=config, repository=repo)
    policy = load_policy(settings.config_file)
    report = asyncio.run(status_report(settings, policy, namespace))
    if as_json:
        print_json(report.to_dict())
    else:
        print_status(report)
    raise typer.Exit(report.exit_code)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "FAILED", None: "-"}[ok]


def print_status(report: StatusReport) -> None:
    """Print the status table and, below it, the reason for every non-ok level."""
    table = Table(
        title=(
            f"{report.repository}  RPO {format_duration_seconds(report.rpo_seconds)}"
            f"  RTO {format_duration_seconds(report.rto_seconds)}"
        ),
        title_justify="left",
    )
    for column in (
        "namespace",
        "level",
        "newest",
        "RPO age",
        "verify",
        "full read",
        "drill",
        "snapshots",
        "size",
        "held",
    ):
        table.add_column(column)
    for ns in report.namespaces:
        drill = "-"
        if ns.last_drill_ok is not None:
            drill = f"{_verdict(ns.last_drill_ok)}, {_age(ns.last_drill_age)} ago"
        table.add_row(
            ns.namespace_title or ns.namespace_id,
            ns.level.upper() if ns.level != "ok" else "ok",
            ns.newest_snapshot or "-",
            _age(ns.rpo_age),
            _verdict(ns.last_verify_ok),
            (ns.last_read_data_at or "never")[:19],
            drill,
            str(ns.snapshots),
            format_size(ns.stored_bytes),
            str(len(ns.held)),
        )
    print_table(table)
    for ns in report.namespaces:
        for reason in ns.reasons:
            name = ns.namespace_title or ns.namespace_id
            stdout.print(f"{ns.level}: {name}: {reason}", markup=False, highlight=False)
    for note in report.notes:
        stdout.print(f"warning: {note}", markup=False, highlight=False)
    stdout.print(f"status: {report.level}", markup=False, highlight=False)


def format_duration_seconds(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))
