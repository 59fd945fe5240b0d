"""`kvsnap import`: turn an existing export file into a snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import AccountOption, ConfigOption, JsonOption, RepoOption
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cloudflare import Namespace, open_client
from kvsnap.config import ENV_ACCOUNT, ENV_TOKEN, Settings, load_settings
from kvsnap.errors import ConfigError, VerifyError
from kvsnap.format import Manifest
from kvsnap.importer import (
    UNKNOWN_ACCOUNT,
    ExportFormat,
    ImportPlan,
    InvalidEntry,
    file_time,
    lookup_namespace,
    namespace_id_of,
    parse_import_time,
    plan_import,
    write_snapshot,
)
from kvsnap.lock import locked
from kvsnap.repository import Repository, format_timestamp

# Invalid entries listed in text output; --json lists all of them.
SHOWN_INVALID = 20


@app.command("import")
def import_command(
    file: Path = typer.Argument(
        ...,
        metavar="FILE",
        help="Export file: a wrangler kv bulk put array, a JSON object of key to"
        " string value, or JSON lines.",
        exists=True,
        dir_okay=False,
    ),
    namespace: str = typer.Option(
        ...,
        "--namespace",
        "-n",
        help="Namespace of the data: its id (32 hex digits or id:ID), or its title"
        " (title:TITLE), looked up in the account.",
    ),
    title: str = typer.Option(
        None,
        "--title",
        help="Title to record with a namespace id [default: the id].",
        show_default=False,
    ),
    at: str = typer.Option(
        None,
        "--time",
        help="Snapshot time, ISO 8601, UTC unless an offset is given. expiration_ttl"
        " values count from it [default: the file's modification time].",
        show_default=False,
    ),
    forced: ExportFormat = typer.Option(
        None,
        "--format",
        help="Read the file as this shape instead of detecting it.",
        show_default=False,
    ),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Import the valid entries and list the invalid ones, instead of"
        " writing nothing.",
    ),
    repo: str = RepoOption,
    account: str = AccountOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Import an export file as a snapshot, to diff and restore like any other.

    The manifest records the account id from --account or CLOUDFLARE_ACCOUNT_ID
    ("unknown" when neither is set), the namespace, the snapshot time as its
    read window, and the tags imported and source:FILE. A key in more than one
    entry is invalid. expiration_ttl becomes an absolute expiration.

    Exit codes: 0 imported, 4 invalid entries (nothing written unless
    --skip-invalid), 10 unreadable file, unknown shape or configuration error,
    11 token rejected, 12 API failed, 20 repository error.
    """
    settings = load_settings(config_file=config, repository=repo, account_id=account)
    url = settings.require_repository()
    snapshot_time = parse_import_time(at) if at else file_time(file)
    target = asyncio.run(_namespace(settings, namespace, title))

    plan = plan_import(file, forced=forced, snapshot_time=snapshot_time)
    chosen_by = "detected" if plan.detected else "--format"
    stderr.print(
        f"reading {file.name} as {plan.format.description} ({chosen_by}):"
        f" {plan.entries} entries",
        markup=False,
        highlight=False,
    )
    if plan.invalid:
        _print_invalid(plan.invalid, skipped=skip_invalid)
    if plan.invalid and (not skip_invalid or not plan.records):
        if as_json:
            print_json(_summary(plan, target, settings, None))
        raise VerifyError(
            f"{len(plan.invalid)} of {plan.entries} entries in {file.name} are"
            " invalid; no snapshot was written",
            hint=None
            if skip_invalid
            else "fix them, or add --skip-invalid to import the valid entries",
        )

    account_id = settings.account_id or UNKNOWN_ACCOUNT
    manifest = asyncio.run(_write(url, settings, plan, account_id, target))
    if as_json:
        print_json(_summary(plan, target, settings, manifest))
    else:
        _print_result(plan, manifest)


async def _namespace(settings: Settings, name: str, title: str | None) -> Namespace:
    """Resolve --namespace: an id is taken as given, a title is looked up."""
    namespace_id = namespace_id_of(name)
    if namespace_id is not None:
        return Namespace(namespace_id, title or namespace_id)
    if title is not None:
        raise ConfigError(
            f"--title needs --namespace to be a namespace id, not {name!r}",
            hint="write --namespace id:ID --title TITLE",
        )
    if not settings.api_token or not settings.account_id:
        raise ConfigError(
            f"--namespace {name!r} is not a namespace id, and its id cannot be"
            f" looked up without {ENV_TOKEN} and {ENV_ACCOUNT}",
            hint="pass the namespace id (--namespace id:ID --title TITLE),"
            " or set both variables to look the title up",
        )
    async with open_client(settings) as client:
        return await lookup_namespace(client, name)


async def _write(
    url: str,
    settings: Settings,
    plan: ImportPlan,
    account_id: str,
    target: Namespace,
) -> Manifest:
    repo = await Repository.open_or_init(url, account_id=settings.account_id)
    async with locked(repo, exclusive=False, command="kvsnap import"):
        return await write_snapshot(
            repo,
            plan,
            account_id=account_id,
            namespace=target,
            part_bytes=settings.part_bytes,
        )


def _print_invalid(invalid: list[InvalidEntry], *, skipped: bool) -> None:
    verb = "skipped" if skipped else "invalid"
    for entry in invalid[:SHOWN_INVALID]:
        stderr.print(f"{verb} {entry.label}: {entry.reason}", markup=False)
    more = len(invalid) - SHOWN_INVALID
    if more > 0:
        stderr.print(f"... and {more} more (--json lists all of them)", markup=False)


def _summary(
    plan: ImportPlan,
    target: Namespace,
    settings: Settings,
    manifest: Manifest | None,
) -> dict[str, Any]:
    return {
        "type": "import",
        "ok": manifest is not None,
        "snapshot": manifest.id if manifest else None,
        "source": str(plan.source),
        "format": plan.format.value,
        "format_detected": plan.detected,
        "time": format_timestamp(plan.snapshot_time),
        "account_id": settings.account_id or UNKNOWN_ACCOUNT,
        "namespace_id": target.id,
        "namespace_title": target.title,
        "entries": plan.entries,
        "records": len(plan.records) if manifest else 0,
        "value_bytes": manifest.value_bytes if manifest else 0,
        "ttl_converted": plan.ttl_converted,
        "invalid": [
            {"position": e.position, "key": e.key, "reason": e.reason}
            for e in plan.invalid
        ],
        "tags": manifest.tags if manifest else [],
    }


def _print_result(plan: ImportPlan, manifest: Manifest) -> None:
    stdout.print(
        f"snapshot {manifest.id}  {manifest.namespace_title} ({manifest.namespace_id})"
        f"  {manifest.keys} records from {plan.source.name}  at"
        f" {manifest.read_started}",
        markup=False,
        highlight=False,
    )
    stdout.print(
        f"  account {manifest.account_id}, {plan.ttl_converted} expiration_ttl"
        f" converted, {len(plan.invalid)} invalid entries skipped",
        markup=False,
        highlight=False,
    )
