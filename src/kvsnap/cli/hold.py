"""Commands `kvsnap hold list`, `kvsnap hold add` and `kvsnap hold release`.

A held snapshot outlives every retention rule. Anomaly checks add holds on
their own; these commands show them, add manual ones (a legal hold, say)
and release them.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from kvsnap.cli.app import app
from kvsnap.cli.options import JsonOption, LockWaitOption, RepoOption
from kvsnap.cli.output import print_json, print_table, stderr, stdout
from kvsnap.cli.repository import repository_url
from kvsnap.errors import ConfigError, SnapshotNotFound
from kvsnap.format import Manifest
from kvsnap.lock import locked
from kvsnap.repository import MIN_SELECTOR_PREFIX, Repository, format_timestamp
from kvsnap.state import Hold, add_hold, holds, release_hold

hold_app = typer.Typer(
    help="List, add and release holds that keep snapshots beyond retention.",
    no_args_is_help=True,
)
app.add_typer(hold_app, name="hold")


@hold_app.command("list")
def list_command(repo: str | None = RepoOption, as_json: bool = JsonOption) -> None:
    """List the held snapshots, oldest hold first."""
    url = repository_url(repo)
    found, manifests = asyncio.run(_list(url))

    if as_json:
        print_json(
            {
                "type": "holds",
                "holds": [_hold_dict(hold, manifests) for hold in found],
            }
        )
        return
    if not found:
        stderr.print(f"no held snapshots in {url}", markup=False, highlight=False)
        return

    table = Table(box=None, header_style="bold")
    table.add_column("SNAPSHOT", no_wrap=True)
    table.add_column("NAMESPACE")
    table.add_column("SNAPSHOT TIME (UTC)", no_wrap=True)
    table.add_column("HELD SINCE (UTC)", no_wrap=True)
    table.add_column("REASON")
    for hold in found:
        manifest = manifests.get(hold.snapshot_id)
        table.add_row(
            hold.snapshot_id,
            manifest.namespace_title if manifest else hold.namespace_id,
            manifest.read_started if manifest else "(snapshot missing)",
            hold.created,
            hold.reason,
        )
    print_table(table)


async def _list(url: str) -> tuple[list[Hold], dict[str, Manifest]]:
    repository = await Repository.open(url)
    manifests = {m.id: m for m in await repository.snapshots()}
    return await holds(repository), manifests


def _hold_dict(hold: Hold, manifests: dict[str, Manifest]) -> dict[str, Any]:
    manifest = manifests.get(hold.snapshot_id)
    return {
        "snapshot_id": hold.snapshot_id,
        "namespace_id": hold.namespace_id,
        "namespace_title": manifest.namespace_title if manifest else None,
        "snapshot_time": manifest.read_started if manifest else None,
        "snapshot_exists": manifest is not None,
        "created": hold.created,
        "reason": hold.reason,
        "trigger_snapshot": hold.trigger_snapshot,
        "share": hold.share,
    }


@hold_app.command("add")
def add_command(
    snapshot: str = typer.Argument(
        ..., help="Snapshot id, unique id prefix or latest@NAMESPACE."
    ),
    reason: str = typer.Option(
        ..., "--reason", help="Why the snapshot must be kept, e.g. a legal hold."
    ),
    lock_wait: float = LockWaitOption,
    repo: str | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """Hold a snapshot so that prune keeps it until the hold is released.

    Holding a held snapshot again replaces its reason. Exit codes: 0 held,
    10 empty reason, 22 snapshot not found, 23 repository locked by prune.
    """
    if not reason.strip() or not reason.isprintable():
        raise ConfigError("invalid --reason: expected a non-empty printable text")
    url = repository_url(repo)
    hold, replaced = asyncio.run(_add(url, snapshot, reason.strip(), lock_wait))
    if as_json:
        print_json({"type": "hold", "replaced": replaced, **_hold_dict(hold, {})})
        return
    verb = "replaced the hold on" if replaced else "holding"
    stdout.print(
        f"{verb} snapshot {hold.snapshot_id}: {hold.reason}",
        markup=False,
        highlight=False,
    )


async def _add(
    url: str, selector: str, reason: str, lock_wait: float
) -> tuple[Hold, bool]:
    repository = await Repository.open(url)
    # A shared lock, so that a running prune cannot remove the snapshot
    # between the lookup and the write of the hold.
    async with locked(
        repository, exclusive=False, command="kvsnap hold add", wait=lock_wait
    ):
        manifest = await repository.resolve(selector)
        replaced = any(h.snapshot_id == manifest.id for h in await holds(repository))
        hold = Hold(
            snapshot_id=manifest.id,
            namespace_id=manifest.namespace_id,
            created=format_timestamp(datetime.now(UTC)),
            reason=reason,
        )
        await add_hold(repository, hold)
    return hold, replaced


@hold_app.command("release")
def release_command(
    snapshot: str = typer.Argument(
        ..., help="Id of a held snapshot, or a unique prefix of at least 4 characters."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Release without asking for confirmation."
    ),
    repo: str | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """Release a hold, so that retention applies to the snapshot again.

    Asks for confirmation on a terminal; elsewhere --yes is required.
    Exit codes: 0 released, 10 not confirmed, 22 no such hold.
    """
    url = repository_url(repo)
    hold = asyncio.run(_find_hold(url, snapshot))
    if not yes:
        _confirm(hold)
    released = asyncio.run(_release(url, hold.snapshot_id))
    if released is None:
        raise SnapshotNotFound(f"snapshot {hold.snapshot_id} is no longer held")
    if as_json:
        print_json({"type": "release", **_hold_dict(released, {})})
        return
    stdout.print(
        f"released the hold on snapshot {released.snapshot_id} ({released.reason})",
        markup=False,
        highlight=False,
    )


async def _find_hold(url: str, selector: str) -> Hold:
    repository = await Repository.open(url)
    prefix = selector.strip().lower()
    if len(prefix) < MIN_SELECTOR_PREFIX:
        raise ConfigError(
            f"invalid snapshot {selector!r}: give the id of a held snapshot or a"
            f" unique prefix of at least {MIN_SELECTOR_PREFIX} characters"
        )
    found = [h for h in await holds(repository) if h.snapshot_id.startswith(prefix)]
    if not found:
        raise SnapshotNotFound(
            f"no held snapshot {selector!r} in {repository.url}",
            hint="list the holds with `kvsnap hold list`",
        )
    if len(found) > 1:
        raise SnapshotNotFound(
            f"snapshot prefix {selector!r} matches several held snapshots: "
            + ", ".join(hold.snapshot_id for hold in found),
            hint="give more characters of the id",
        )
    return found[0]


async def _release(url: str, snapshot_id: str) -> Hold | None:
    repository = await Repository.open(url)
    return await release_hold(repository, snapshot_id)


def _confirm(hold: Hold) -> None:
    if not sys.stdin.isatty():
        raise ConfigError(
            "releasing a hold needs confirmation: run it on a terminal, or add --yes",
            hint="once released, the next prune may remove the snapshot",
        )
    stderr.print(
        f"snapshot {hold.snapshot_id} is held since {hold.created}: {hold.reason}",
        markup=False,
        highlight=False,
    )
    if not typer.confirm("Release the hold? The next prune may remove it", err=True):
        raise typer.Abort()
