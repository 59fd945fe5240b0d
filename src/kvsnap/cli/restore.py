"""`kvsnap restore`: plan, confirm, write and read back a snapshot's keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from kvsnap.batching import NearExpiry
from kvsnap.cli.app import app
from kvsnap.cli.options import (
    ConcurrencyOption,
    ConfigOption,
    JsonOption,
    LockWaitOption,
    MaxAttemptsOption,
    RateLimitOption,
    RepoOption,
)
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cloudflare import KvClient, open_client
from kvsnap.config import ACCOUNT_ID, ENV_TOKEN, Settings, load_settings
from kvsnap.errors import EXIT_MISMATCH, ConfigError, PlanRefused
from kvsnap.format import Manifest
from kvsnap.lock import locked
from kvsnap.logs import register_secret
from kvsnap.progress import Reporter, RichReporter
from kvsnap.repository import Repository
from kvsnap.restore import (
    Conflict,
    Plan,
    RestoreResult,
    Selection,
    apply_plan,
    make_plan,
    new_plan_folder,
    resolve_snapshot,
    resolve_target,
    validate,
)

# Plan actions in the order they are shown.
ACTIONS = (
    "create",
    "overwrite",
    "unchanged",
    "skip-existing",
    "live-only",
    "delete",
    "expired",
    "expiring",
    "invalid",
)


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """The restore options that are not settings: what, where and how."""

    snapshot: str
    as_of: str | None
    selection: Selection
    to: str | None
    target_account: str | None
    token_env: str
    create: bool
    map_out: Path | None
    conflict: Conflict
    exact: bool
    near_expiry: NearExpiry
    max_writes: int | None
    max_deletes: int | None
    dry_run: bool
    yes: bool
    readback_window: float
    as_json: bool
    lock_wait: float = 0.0


@app.command()
def restore(
    snapshot: str = typer.Argument(
        "latest", help="Snapshot id, id prefix, latest or latest@NAMESPACE."
    ),
    as_of: str = typer.Option(
        None, "--as-of", help="Take the newest snapshot at or before this UTC time."
    ),
    key: list[str] = typer.Option(None, "--key", help="Restore this key (repeatable)."),
    prefix: list[str] = typer.Option(
        None, "--prefix", help="Restore keys with this prefix (repeatable)."
    ),
    glob: list[str] = typer.Option(
        None, "--glob", help="Restore keys matching this pattern (repeatable)."
    ),
    keys_from: list[Path] = typer.Option(
        None,
        "--keys-from",
        help="File of keys, one a line, or the output of kvsnap diff --json.",
        exists=True,
        dir_okay=False,
    ),
    to: str = typer.Option(
        None, "--to", help="Target namespace id or title [default: the snapshot's]."
    ),
    account: str = typer.Option(
        None, "--account", help="Target account id [default: CLOUDFLARE_ACCOUNT_ID]."
    ),
    token_env: str = typer.Option(
        ENV_TOKEN,
        "--token-env",
        help="Name of the variable that contains the target account's API token.",
    ),
    create: bool = typer.Option(
        False, "--create", help="Create the target namespace when it does not exist."
    ),
    map_out: Path = typer.Option(
        None,
        "--map-out",
        help="Add {old namespace id: new id} to this JSON file (created if absent).",
    ),
    conflict: Conflict = typer.Option(
        Conflict.ERROR,
        "--conflict",
        help="Live keys that differ: error rejects the plan, skip-existing keeps them, "
        "overwrite replaces them.",
    ),
    exact: bool = typer.Option(
        False, "--exact", help="Also delete live keys that the snapshot lacks."
    ),
    extend_expiring: bool = typer.Option(
        False,
        "--extend-expiring",
        help="Write keys that expire within 90 s (KV's 60 s minimum plus a margin "
        "for slow batches) with an expiration 90 s ahead, instead of skipping them.",
    ),
    max_writes: int = typer.Option(
        None, "--max-writes", min=0, help="Refuse plans that write more keys than this."
    ),
    max_deletes: int = typer.Option(
        None,
        "--max-deletes",
        min=0,
        help="Refuse plans that delete more keys than this.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the plan and stop, writing nothing."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Apply the plan without asking."
    ),
    readback_window: float = typer.Option(
        90.0,
        "--readback-window",
        min=0.0,
        help="Seconds to keep re-reading keys that differ after the write, because "
        "KV is eventually consistent.",
    ),
    concurrency: int = ConcurrencyOption,
    rate_limit: str = RateLimitOption,
    max_attempts: int = MaxAttemptsOption,
    lock_wait: float = LockWaitOption,
    repo: str = RepoOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Restore keys from a snapshot into a namespace, after showing the plan.

    Exit codes: 0 restored and read back, 6 plan refused (conflicts, caps or
    invalid records; nothing written), 7 read-back mismatch, 4 snapshot
    damaged, 10 configuration error, 11 token rejected, 12 API failed,
    23 repository locked by prune.
    """
    settings = load_settings(
        config_file=config,
        repository=repo,
        concurrency=concurrency,
        rate_limit=rate_limit,
        max_attempts=max_attempts,
    )
    options = RestoreOptions(
        snapshot=snapshot,
        as_of=as_of,
        selection=Selection.build(key or (), prefix or (), glob or (), keys_from or ()),
        to=to,
        target_account=account,
        token_env=token_env,
        create=create,
        map_out=map_out,
        conflict=conflict,
        exact=exact,
        near_expiry=NearExpiry.EXTEND if extend_expiring else NearExpiry.SKIP,
        max_writes=max_writes,
        max_deletes=max_deletes,
        dry_run=dry_run,
        yes=yes,
        readback_window=readback_window,
        as_json=as_json,
        lock_wait=lock_wait,
    )
    result = asyncio.run(_restore(settings, options))
    if options.as_json:
        print_json(_summary(result))
    else:
        _print_result(result)
    if result.refused:
        raise result.refused
    target_id = result.created_namespace or result.plan.target.namespace_id
    if map_out and target_id and not result.dry_run:
        # Also when a resumed run writes into the namespace that the first
        # run created, so an interrupted migration keeps its map entry.
        _add_to_map(map_out, result.plan.manifest.namespace_id, target_id)
    raise typer.Exit(0 if result.ok else EXIT_MISMATCH)


def _add_to_map(path: Path, old: str, new: str) -> None:
    """Add old -> new to the JSON map at `path`, keeping the pairs it holds."""
    mapping: dict[str, str] = {}
    if path.exists():
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--map-out {path} is not a JSON object: {exc}") from exc
        if not isinstance(mapping, dict):
            raise ConfigError(f"--map-out {path} is not a JSON object")
    mapping[old] = new
    path.write_text(json.dumps(mapping, indent=2) + "\n")


def _target_client(
    settings: Settings, options: RestoreOptions, manifest: Manifest
) -> KvClient:
    """Open the client for the target account, refusing an implicit switch."""
    account = options.target_account or settings.account_id
    if options.target_account and not ACCOUNT_ID.fullmatch(options.target_account):
        raise ConfigError(
            f"invalid --account {options.target_account!r}: expected 32 "
            "hexadecimal characters"
        )
    if options.target_account is None and account and account != manifest.account_id:
        raise ConfigError(
            f"snapshot {manifest.id} is from account {manifest.account_id}, but "
            f"CLOUDFLARE_ACCOUNT_ID is {account}",
            hint=f"pass --account {account} to restore into that account on purpose",
        )
    token = os.environ.get(options.token_env) or None
    register_secret(token)
    if options.token_env != ENV_TOKEN and not token:
        raise ConfigError(
            f"--token-env {options.token_env}: the variable is not set or empty"
        )
    chosen = dataclasses.replace(settings, api_token=token, account_id=account)
    return open_client(chosen)


async def _restore(settings: Settings, options: RestoreOptions) -> RestoreResult:
    repo = await Repository.open(settings.require_repository())
    # Shared, so that prune cannot remove the snapshot while it is read.
    async with locked(
        repo, exclusive=False, command="kvsnap restore", wait=options.lock_wait
    ):
        return await _restore_locked(repo, settings, options)


async def _restore_locked(
    repo: Repository, settings: Settings, options: RestoreOptions
) -> RestoreResult:
    started = time.monotonic()
    manifest = await resolve_snapshot(repo, options.snapshot, options.as_of)
    await validate(repo, manifest)
    validated = time.monotonic() - started

    async with _target_client(settings, options, manifest) as client:
        target = await resolve_target(
            client, manifest, options.to, create=options.create
        )
        with new_plan_folder() as folder:
            plan = await make_plan(
                client,
                repo,
                manifest,
                target,
                selection=options.selection,
                conflict=options.conflict,
                exact=options.exact,
                near_expiry=options.near_expiry,
                folder=Path(folder),
            )
            if not options.as_json:
                _print_plan(plan)
            try:
                plan.check(
                    max_writes=options.max_writes, max_deletes=options.max_deletes
                )
            except PlanRefused as exc:
                if not options.dry_run:
                    raise
                refused = exc  # a dry run still reports its plan, then fails
            else:
                refused = None
            if options.dry_run or not plan.changes_anything:
                result = RestoreResult(plan, dry_run=options.dry_run, refused=refused)
            else:
                _confirm(plan, options)
                reporter = RichReporter(stderr) if sys.stderr.isatty() else Reporter()
                try:
                    result = await apply_plan(
                        client,
                        repo,
                        plan,
                        readback_window=options.readback_window,
                        reporter=reporter,
                    )
                finally:
                    reporter.close()
    result.phases = {"validate": validated, "plan": plan.seconds, **result.phases}
    return result


def _confirm(plan: Plan, options: RestoreOptions) -> None:
    if options.yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(
            "restore needs confirmation: run it on a terminal, or add --yes",
            hint="check the plan first with --dry-run",
        )
    counts = plan.counts
    where = plan.target.namespace_id or f"new namespace {plan.target.title!r}"
    question = f"Write {counts.writes} and delete {counts.delete} keys in {where}?"
    if not typer.confirm(question, default=False, err=True):
        raise PlanRefused("cancelled at the prompt; nothing was written")


def _print_plan(plan: Plan) -> None:
    target = plan.target
    where = target.namespace_id or "(to be created)"
    stderr.print(
        f"plan: snapshot {plan.manifest.id} ({plan.manifest.namespace_title}) -> "
        f"{target.title} {where} in account {target.account_id}",
        markup=False,
        highlight=False,
    )
    missing = plan.named_keys - plan.found_keys
    if missing > 0:
        stderr.print(
            f"warning: {missing} of the {plan.named_keys} keys named by --key or "
            "--keys-from are not in the snapshot",
            markup=False,
        )
    if plan.counts.expiring and plan.near_expiry is NearExpiry.SKIP:
        stderr.print(
            f"warning: {plan.counts.expiring} keys expire too soon to write and stay "
            "as they are live; --extend-expiring writes them",
            markup=False,
        )
    for action in ACTIONS:
        count = getattr(plan.counts, action.replace("-", "_"))
        if not count:
            continue
        shown = ", ".join(repr(k) for k in plan.examples.get(action, []))
        more = " ..." if count > len(plan.examples.get(action, [])) else ""
        stderr.print(f"  {action:<14} {count:>8}  {shown}{more}", markup=False)


def _summary(result: RestoreResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "type": "restore",
        "ok": result.ok and result.refused is None,
        "dry_run": result.dry_run,
        "refused": result.refused.message if result.refused else None,
        "snapshot": plan.manifest.id,
        "account_id": plan.target.account_id,
        "namespace_id": result.created_namespace or plan.target.namespace_id,
        "namespace_title": plan.target.title,
        "plan": dataclasses.asdict(plan.counts),
        "invalid": [{"key": k, "reason": r} for k, r in plan.invalid],
        "written": result.written,
        "deleted": result.deleted,
        "write_requests": result.write_requests,
        "verified": result.verified,
        "mismatched": [
            {"key": m.key, "fields": list(m.fields)} for m in result.mismatched
        ],
        "pre_restore_snapshot": result.pre_restore_snapshot,
        "namespace_map": (
            {plan.manifest.namespace_id: result.created_namespace}
            if result.created_namespace
            else {}
        ),
        "seconds": {name: round(value, 3) for name, value in result.phases.items()},
    }


def _print_result(result: RestoreResult) -> None:
    if result.dry_run:
        stdout.print("dry run: nothing was written", highlight=False)
        return
    if result.created_namespace:
        stdout.print(
            f"namespace map: {result.plan.manifest.namespace_id} -> "
            f"{result.created_namespace}",
            highlight=False,
        )
    if result.pre_restore_snapshot:
        stdout.print(
            f"pre-restore snapshot: {result.pre_restore_snapshot}", highlight=False
        )
    stdout.print(
        f"restored {result.written} keys, deleted {result.deleted}, "
        f"verified {result.verified}, mismatched {len(result.mismatched)}",
        highlight=False,
    )
    for mismatch in result.mismatched:
        stdout.print(
            f"  mismatch {mismatch.key!r}: {', '.join(mismatch.fields)}", markup=False
        )
