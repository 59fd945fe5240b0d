"""Commands `kvsnap init` and `kvsnap snapshots`."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import RepoOption
from kvsnap.cli.output import print_json, print_table, stderr, stdout
from kvsnap.config import load_settings
from kvsnap.format import Manifest
from kvsnap.repository import Repository, parse_timestamp


def repository_url(option_value: str | None) -> str:
    """Return the repository URL from --repo, KVSNAP_REPOSITORY or kvsnap.toml."""
    return load_settings(repository=option_value).require_repository()


@app.command("init")
def init_command(repo: str | None = RepoOption) -> None:
    """Create an empty repository (backups into an empty location do it too)."""
    repository = asyncio.run(Repository.init(repository_url(repo)))
    stdout.print(
        f"created repository {repository.url} (id {repository.config.repository_id})",
        markup=False,
        highlight=False,
    )


async def _list_snapshots(url: str, namespace: str | None) -> list[Manifest]:
    repository = await Repository.open(url)
    return await repository.snapshots(namespace)


@app.command("snapshots")
def snapshots_command(
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Only snapshots of this namespace id or title."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON array."),
    repo: str | None = RepoOption,
) -> None:
    """List the snapshots in the repository, oldest first."""
    url = repository_url(repo)
    manifests = asyncio.run(_list_snapshots(url, namespace))
    if json_output:
        print_json([snapshot_summary(manifest) for manifest in manifests])
        return
    if not manifests:
        stderr.print(f"no snapshots in {url}", markup=False, highlight=False)
        return
    print_table(snapshot_table(manifests))


def snapshot_summary(manifest: Manifest) -> dict[str, Any]:
    """Build the --json form of one snapshot, where `bytes` is the stored size."""
    return {
        "id": manifest.id,
        "namespace_id": manifest.namespace_id,
        "namespace_title": manifest.namespace_title,
        "account_id": manifest.account_id,
        "time": manifest.read_started,
        "read_finished": manifest.read_finished,
        "keys": manifest.keys,
        "value_bytes": manifest.value_bytes,
        "bytes": manifest.stored_bytes,
        "parts": len(manifest.parts),
        "skipped_keys": manifest.skipped_keys,
        "tags": manifest.tags,
    }


def snapshot_table(manifests: list[Manifest]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("NAMESPACE")
    table.add_column("NAMESPACE ID", no_wrap=True)
    table.add_column("TIME (UTC)", no_wrap=True)
    table.add_column("KEYS", justify="right", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("TAGS")
    for manifest in manifests:
        table.add_row(
            manifest.id,
            manifest.namespace_title,
            manifest.namespace_id,
            f"{parse_timestamp(manifest.read_started):%Y-%m-%d %H:%M:%S}",
            str(manifest.keys),
            format_size(manifest.stored_bytes),
            ",".join(manifest.tags),
        )
    return table


def format_size(size: int) -> str:
    """Format a byte count with binary units: 512 B, 1.5 KiB, 3.2 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
