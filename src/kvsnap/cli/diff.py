"""Command `kvsnap diff`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import AccountOption, ConfigOption, RepoOption
from kvsnap.cli.output import print_json, stderr
from kvsnap.cloudflare import open_client
from kvsnap.config import Settings, load_settings
from kvsnap.diff import (
    FIELD_EXPIRATION,
    FIELD_VALUE,
    DiffCounts,
    KeyDiff,
    RecordDigest,
    diff_records,
    format_key,
    open_side,
    parse_side,
)
from kvsnap.errors import EXIT_BROKEN_PIPE, EXIT_DIFFERENT
from kvsnap.repository import Repository

# Hex digits of a sha256 shown in text output; --json has the full digest.
SHORT_DIGEST = 12


async def _diff(
    settings: Settings,
    texts: tuple[str, str],
    prefix: str | None,
    emit: Callable[[KeyDiff], None],
) -> DiffCounts:
    sides = [parse_side(text) for text in texts]
    repository = None
    if not all(side.is_live for side in sides):
        repository = await Repository.open(settings.require_repository())
    counts = DiffCounts()
    async with contextlib.AsyncExitStack() as stack:
        client = None
        if any(side.is_live for side in sides):
            client = await stack.enter_async_context(open_client(settings))
        opened = [
            await open_side(side, repository=repository, client=client, prefix=prefix)
            for side in sides
        ]
        for label, side in zip("AB", opened, strict=True):
            stderr.print(f"{label}: {side.description}", markup=False, highlight=False)
        async for found in diff_records(
            opened[0].records, opened[1].records, counts, prefix=prefix
        ):
            emit(found)
    return counts


@app.command("diff")
def diff_command(
    a: str = typer.Argument(
        ...,
        metavar="A",
        help="Side A: snapshot id, unique id prefix, latest, latest@NAMESPACE"
        " or live:NAMESPACE.",
    ),
    b: str = typer.Argument(..., metavar="B", help="Side B, in the same forms as A."),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Compare only keys that start with this text."
    ),
    keys_only: bool = typer.Option(
        False,
        "--keys-only",
        help="Print only the keys that differ, one a line: raw, or as a JSON"
        " string when the key has non-printable characters, leading or trailing"
        ' spaces, or starts with " or {.',
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Print JSON lines: one {"type": "key"} object per differing key,'
        ' then one {"type": "summary"} object with the counts.',
    ),
    repo: str | None = RepoOption,
    account: str | None = AccountOption,
    config: Path | None = ConfigOption,
) -> None:
    """Show the keys added, removed or changed from A to B.

    A live:NAMESPACE side is read through the Cloudflare API as a backup reads
    it, without writing a snapshot. Values compare by exact bytes, metadata
    by JSON equality, expiration by number; values are never printed, only
    their size and sha256.

    Exit codes: 0 identical, 5 differences found (diff(1) uses 1, which is
    kvsnap's internal-error code), 2 usage error. Other errors:
    4 corrupt part, 10 configuration error, 11 token rejected, 12 API failed
    after retries, 20 repository error, 21 no repository, 22 snapshot not
    found.
    """
    if keys_only and as_json:
        raise typer.BadParameter("use either --keys-only or --json, not both")
    settings = load_settings(config_file=config, repository=repo, account_id=account)
    if keys_only:
        emit: Callable[[KeyDiff], None] = _write_key
    elif as_json:
        emit = print_json
    else:
        emit = _write_line
    try:
        counts = asyncio.run(_diff(settings, (a, b), prefix, emit))
        if as_json:
            print_json(counts.summary())
        elif not keys_only:
            _write(describe_counts(counts) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout went away, as in `kvsnap diff A B | head`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    raise typer.Exit(EXIT_DIFFERENT if counts.differences else 0)


def _write(text: str) -> None:
    sys.stdout.write(text)


def _write_key(found: KeyDiff) -> None:
    _write(format_key(found.key) + "\n")


def _write_line(found: KeyDiff) -> None:
    _write(describe_diff(found) + "\n")


def describe_diff(found: KeyDiff) -> str:
    """Format one differing key as a line of text output."""
    key = format_key(found.key)
    if found.change == "added":
        assert found.b is not None
        return f"added    {key}  ({_describe_value(found.b)})"
    if found.change == "removed":
        assert found.a is not None
        return f"removed  {key}  ({_describe_value(found.a)})"
    assert found.a is not None and found.b is not None
    details = []
    for field in found.fields:
        if field == FIELD_VALUE:
            old, new = _describe_value(found.a), _describe_value(found.b)
            details.append(f"value: {old} -> {new}")
        elif field == FIELD_EXPIRATION:
            old, new = _describe_expiration(found.a), _describe_expiration(found.b)
            details.append(f"expiration: {old} -> {new}")
        else:
            details.append(field)
    return f"changed  {key}  {'; '.join(details)}"


def _describe_value(digest: RecordDigest) -> str:
    return f"{digest.size} B, sha256 {digest.sha256[:SHORT_DIGEST]}"


def _describe_expiration(digest: RecordDigest) -> str:
    if digest.expiration is msgspec.UNSET:
        return "none"
    return str(digest.expiration)


def describe_counts(counts: DiffCounts) -> str:
    """Format the closing line of text output."""
    if not counts.differences:
        return f"identical: {counts.unchanged} keys"
    return (
        f"{counts.added} added, {counts.removed} removed, {counts.changed} changed,"
        f" {counts.unchanged} unchanged"
    )
