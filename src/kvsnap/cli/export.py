"""Command `kvsnap export`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import RepoOption
from kvsnap.cli.output import stderr
from kvsnap.cli.repository import repository_url
from kvsnap.errors import EXIT_BROKEN_PIPE
from kvsnap.export import ExportResult, export_snapshot, export_to_file
from kvsnap.repository import Repository

STDOUT_NAME = "-"


async def _export(url: str, selector: str, output: str) -> ExportResult:
    repository = await Repository.open(url)
    manifest = await repository.resolve(selector)
    if output == STDOUT_NAME:
        return await export_snapshot(repository, manifest, sys.stdout.buffer)
    return await export_to_file(repository, manifest, Path(output))


@app.command("export")
def export_command(
    snapshot: str = typer.Argument(
        ..., help="Snapshot id, unique id prefix, latest or latest@NAMESPACE."
    ),
    output: str = typer.Option(
        STDOUT_NAME,
        "--output",
        "-o",
        help="File to write; - for stdout. A regular file is complete only when"
        " the command succeeds; a FIFO or a device is written in place.",
    ),
    repo: str | None = RepoOption,
) -> None:
    """Write a snapshot as a JSON array for `wrangler kv bulk put`."""
    url = repository_url(repo)
    try:
        result = asyncio.run(_export(url, snapshot, output))
    except BrokenPipeError:
        # The reader of stdout went away, as in `kvsnap export latest | head`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    if output != STDOUT_NAME:
        stderr.print(
            f"exported {result.records} records of snapshot {result.snapshot_id}"
            f" to {output}",
            markup=False,
            highlight=False,
        )
