"""Command `kvsnap status`: each namespace against the RPO target and the cadences."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import ConfigOption, JsonOption, RepoOption
from kvsnap.cli.output import print_json, print_table, stderr, stdout
from kvsnap.cli.repository import format_size
from kvsnap.config import Settings, load_settings
from kvsnap.errors import RepositoryError
from kvsnap.logs import mask
from kvsnap.policy import Policy, format_target, load_policy
from kvsnap.repository import Repository
from kvsnap.status import BREACH, StatusReport, collect_status, format_age


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
    A repository that is missing or cannot be read is a breach too, since no
    backup can be restored from it. Configuration errors keep code 10.
    """
    settings = load_settings(config_file=config, repository=repo)
    policy = load_policy(settings.config_file)
    try:
        report = asyncio.run(status_report(settings, policy, namespace))
    except RepositoryError as exc:
        message = mask(exc.message)
        stderr.print(f"error: {message}", markup=False, highlight=False)
        if exc.hint:
            stderr.print(f"hint: {mask(exc.hint)}", markup=False, highlight=False)
        if as_json:
            print_json(
                {"type": "status", "level": BREACH, "exit_code": 2, "error": message}
            )
        else:
            stdout.print(f"status: {BREACH}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print_json(report.to_dict())
    else:
        print_status(report)
    raise typer.Exit(report.exit_code)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_age(seconds)


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
        name = ns.namespace_title or ns.namespace_id
        for level, reason in zip(ns.reason_levels, ns.reasons, strict=True):
            stdout.print(f"{level}: {name}: {reason}", markup=False, highlight=False)
    for note in report.notes:
        stdout.print(f"warning: {note}", markup=False, highlight=False)
    stdout.print(f"status: {report.level}", markup=False, highlight=False)


def format_duration_seconds(seconds: float) -> str:
    return format_target(timedelta(seconds=seconds))
