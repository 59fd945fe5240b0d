"""`kvsnap reports`: list the drill reports stored in the repository, show one."""

from __future__ import annotations

import asyncio
import sys

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import JsonOption, RepoOption
from kvsnap.cli.output import print_json, print_table, stderr
from kvsnap.cli.repository import repository_url
from kvsnap.report import (
    ReportSummary,
    format_seconds,
    list_reports,
    read_report,
)
from kvsnap.repository import Repository

reports_app = typer.Typer(
    help="List the drill reports stored in the repository, or show one.",
    no_args_is_help=False,
    rich_markup_mode=None,
)
app.add_typer(reports_app, name="reports")


async def _list(url: str) -> list[ReportSummary]:
    return await list_reports(await Repository.open(url))


async def _read(url: str, report_id: str, extension: str) -> bytes:
    return await read_report(await Repository.open(url), report_id, extension)


@reports_app.callback(invoke_without_command=True)
def reports_command(
    ctx: typer.Context,
    repo: str | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """List the stored drill reports, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    url = repository_url(repo)
    summaries = asyncio.run(_list(url))
    if as_json:
        print_json(summaries)
        return
    if not summaries:
        stderr.print(f"no reports in {url}", markup=False, highlight=False)
        return
    print_table(_table(summaries))


def _table(summaries: list[ReportSummary]) -> Table:
    """Tabulate the reports; a damaged report.json shows as FAIL, damaged."""
    table = Table(box=None, header_style="bold")
    for name in ("ID", "Time", "Namespace", "Snapshot", "Result", "RPO", "RTO"):
        table.add_column(name, no_wrap=name in ("ID", "Snapshot", "Result"))
    words = {True: "met", False: "missed", None: "-"}
    for summary in summaries:
        rto = words[summary.rto_ok]
        if summary.rto_estimate_seconds is not None:
            rto += f" ({format_seconds(summary.rto_estimate_seconds)})"
        result = "PASS" if summary.ok else "FAIL"
        if summary.damaged is not None:
            result += ", damaged report"
        table.add_row(
            summary.id,
            summary.created,
            summary.namespace_title or summary.namespace_id or "unknown namespace",
            summary.snapshot_id or "-",
            result,
            words[summary.rpo_ok],
            rto,
        )
    return table


@reports_app.command("show")
def show_command(
    report_id: str = typer.Argument(..., help="Report id, or a unique prefix of it."),
    report_format: str = typer.Option(
        "md", "--format", "-f", help="Form to print: md, html or json."
    ),
    repo: str | None = RepoOption,
) -> None:
    """Print one stored report."""
    data = asyncio.run(_read(repository_url(repo), report_id, report_format))
    sys.stdout.write(data.decode("utf-8"))
    sys.stdout.flush()
