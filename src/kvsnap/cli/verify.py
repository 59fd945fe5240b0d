"""Command `kvsnap verify`."""

from __future__ import annotations

import asyncio

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import LockWaitOption, RepoOption
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cli.repository import repository_url
from kvsnap.lock import locked
from kvsnap.repository import Repository
from kvsnap.verify import VerifyResult, raise_for_failures, verify_repository


async def _verify(
    url: str,
    selector: str | None,
    namespace: str | None,
    read_data: bool,
    lock_wait: float = 0.0,
) -> list[VerifyResult]:
    repository = await Repository.open(url)
    # Shared, so that prune cannot remove a snapshot while it is checked.
    async with locked(
        repository, exclusive=False, command="kvsnap verify", wait=lock_wait
    ):
        return await verify_repository(
            repository, selector, namespace=namespace, read_data=read_data, record=True
        )


@app.command("verify")
def verify_command(
    snapshot: str | None = typer.Argument(
        None,
        help="Snapshot id, unique id prefix, latest or latest@NAMESPACE."
        " Every snapshot when omitted.",
    ),
    read_data: bool = typer.Option(
        False,
        "--read-data",
        help="Download every part and check checksums and records,"
        " not only that each part exists with its size.",
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Only snapshots of this namespace id or title."
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="Print a JSON object (an array when no SNAPSHOT is given).",
    ),
    lock_wait: float = LockWaitOption,
    repo: str | None = RepoOption,
) -> None:
    """Check that snapshots are complete and intact; exit 4 if one is not.

    Each result is stored in the repository for `kvsnap status` and for
    prune, which never removes the newest snapshot that passed. Exit codes:
    0 all intact, 4 a snapshot failed, 22 no such snapshot, 23 locked by prune.
    """
    url = repository_url(repo)
    results = asyncio.run(_verify(url, snapshot, namespace, read_data, lock_wait))
    if json_output:
        print_json(results[0] if snapshot is not None else results)
    elif not results:
        scope = f" of namespace {namespace}" if namespace else ""
        stderr.print(f"no snapshots{scope} in {url}", markup=False, highlight=False)
    else:
        for result in results:
            stdout.print(describe_result(result), markup=False, highlight=False)
    raise_for_failures(results)


def describe_result(result: VerifyResult) -> str:
    """Format one result as a line, plus one indented line per problem."""
    name = result.namespace_title or result.namespace_id
    checked = f"{result.parts_checked} parts"
    if result.read_data:
        checked += f", {result.records_checked} records"
    status = "ok" if result.ok else "FAILED"
    line = f"{status:<6} {result.snapshot_id} {name} {result.read_started} ({checked})"
    problems = [f"  {problem.path}: {problem.message}" for problem in result.problems]
    return "\n".join([line, *problems])
