"""Command `kvsnap unlock`: list repository locks and remove stale ones."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import JsonOption, RepoOption
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cli.repository import repository_url
from kvsnap.lock import HeldLock, list_locks, remove_locks
from kvsnap.repository import Repository


@app.command("unlock")
def unlock_command(
    remove_all: bool = typer.Option(
        False,
        "--all",
        help="Remove every lock, also those of running processes. Use it only"
        " when no kvsnap process works on this repository.",
    ),
    list_only: bool = typer.Option(
        False, "--list", help="List the locks with their state; remove nothing."
    ),
    repo: str | None = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """Remove stale repository locks (or all with --all) and print them.

    A lock is stale when its holder has not refreshed it for 30 minutes, or
    when it names this host and a process that no longer runs. Exit codes:
    0 done, 2 --all with --list, 20 repository error, 21 no repository.
    """
    if remove_all and list_only:
        raise typer.BadParameter("--all removes locks, --list only lists them")
    url = repository_url(repo)
    if list_only:
        found = asyncio.run(_list(url))
        if as_json:
            print_json({"type": "locks", "locks": [_lock_dict(h) for h in found]})
            return
        if not found:
            stderr.print(f"no locks in {url}", markup=False, highlight=False)
        for held in found:
            stdout.print(held.describe(), markup=False, highlight=False)
        return

    removed, remaining = asyncio.run(_unlock(url, everything=remove_all))
    if as_json:
        print_json(
            {
                "type": "unlock",
                "removed": [_lock_dict(held) for held in removed],
                "remaining": [_lock_dict(held) for held in remaining],
            }
        )
        return
    for held in removed:
        stdout.print(f"removed {held.describe()}", markup=False, highlight=False)
    for held in remaining:
        stderr.print(
            f"kept {held.describe()} (not stale; --all removes it)",
            markup=False,
            highlight=False,
        )
    if not removed:
        stderr.print(f"no locks removed from {url}", markup=False, highlight=False)


async def _list(url: str) -> list[HeldLock]:
    return await list_locks(await Repository.open(url))


async def _unlock(
    url: str, *, everything: bool
) -> tuple[list[HeldLock], list[HeldLock]]:
    repository = await Repository.open(url)
    removed = await remove_locks(repository, everything=everything)
    return removed, await list_locks(repository)


def _lock_dict(held: HeldLock) -> dict[str, Any]:
    return msgspec.structs.asdict(held.info) | {
        "path": held.path,
        "stale": held.stale,
        "stale_reason": held.stale_reason,
    }
