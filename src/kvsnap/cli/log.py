"""Command `kvsnap log`."""

from __future__ import annotations

import asyncio

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from kvsnap.cli.app import app
from kvsnap.cli.options import RepoOption
from kvsnap.cli.output import print_json, print_table, stdout
from kvsnap.cli.repository import format_size, repository_url
from kvsnap.diff import escape_nonprintable, format_key
from kvsnap.history import HistoryEntry, KeyHistory, key_history
from kvsnap.repository import Repository, parse_timestamp

# Hex digits of a sha256 shown in the table; --json has the full digest.
SHORT_DIGEST = 12


async def _log(url: str, namespace: str, key: str) -> KeyHistory:
    repository = await Repository.open(url)
    return await key_history(repository, namespace, key)


@app.command("log")
def log_command(
    key: str = typer.Argument(..., metavar="KEY", help="The key, exactly as stored."),
    namespace: str = typer.Option(
        ..., "--namespace", "-n", help="Namespace id or title of the snapshots."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print a JSON array, one object per snapshot."
    ),
    repo: str | None = RepoOption,
) -> None:
    """Show one key in every snapshot of a namespace, oldest first.

    Each row gives the value's size and sha256, the metadata and the
    expiration, and marks the snapshots where the key changed since the
    previous one. Only the one part whose key range contains the key is read
    from each snapshot.

    Exit codes: 0 success, 4 a part is corrupt, 10 configuration error,
    20 repository error, 21 no repository, 22 no snapshot of the namespace.
    """
    history = asyncio.run(_log(repository_url(repo), namespace, key))
    if json_output:
        print_json(history.entries)
        return
    print_table(history_table(history))
    summary = describe_last_change(history)
    if summary:
        stdout.print(summary, markup=False, highlight=False)


def history_table(history: KeyHistory) -> Table:
    title = history.namespace_title or history.namespace_id
    table = Table(
        title=Text(f"{format_key(history.key)} in {title}"),
        box=None,
        header_style="bold",
        title_justify="left",
    )
    for name in ("", "SNAPSHOT", "TIME (UTC)", "KEY", "SIZE", "SHA256"):
        table.add_column(name, no_wrap=True)
    table.add_column("METADATA")
    table.add_column("EXPIRATION", no_wrap=True)
    table.add_column("CHANGE", no_wrap=True)
    for entry in history.entries:
        table.add_row(*(Text(cell) for cell in _row(entry)))
    return table


def _row(entry: HistoryEntry) -> list[str]:
    marker = "*" if entry.change else ""
    time = f"{parse_timestamp(entry.time):%Y-%m-%d %H:%M:%S}"
    if not entry.present:
        return [
            marker,
            entry.snapshot_id,
            time,
            "absent",
            "",
            "",
            "",
            "",
            _change(entry),
        ]
    assert isinstance(entry.size, int) and isinstance(entry.sha256, str)
    metadata = ""
    if entry.metadata is not msgspec.UNSET:
        metadata = escape_nonprintable(msgspec.json.encode(entry.metadata).decode())
    expiration = "" if entry.expiration is msgspec.UNSET else str(entry.expiration)
    return [
        marker,
        entry.snapshot_id,
        time,
        "present",
        format_size(entry.size),
        entry.sha256[:SHORT_DIGEST],
        metadata,
        expiration,
        _change(entry),
    ]


def _change(entry: HistoryEntry) -> str:
    if entry.change == "changed":
        return "changed: " + ", ".join(entry.fields)
    return entry.change or ""


def describe_last_change(history: KeyHistory) -> str | None:
    """Name the snapshots before and after the newest change, if any."""
    entries = history.entries
    changed = [index for index, entry in enumerate(entries) if entry.change]
    if not changed:
        if len(entries) > 1:
            return f"unchanged in all {len(entries)} snapshots"
        return None
    index = changed[-1]
    before, after = entries[index - 1], entries[index]
    return (
        f"last change ({_change(after)}) between snapshot {before.snapshot_id}"
        f" ({before.time}) and {after.snapshot_id} ({after.time})"
    )
