"""One pass of the policy: back up, verify, look for anomalies, prune, grade.

This is what `kvsnap run` does, what cron and the other schedulers call, and
what `kvsnap daemon` repeats. The steps, in order:

1. back up every namespace of the policy, under a shared repository lock;
2. quick-verify each new snapshot and record the result;
3. compare each new snapshot with the previous one of its namespace; when
   more than `anomaly_share` of the keys were deleted or changed, hold the
   previous snapshot (see kvsnap.anomaly);
4. fully read a rotating share of the snapshots (`[verify]`), the ones
   never or least recently read first, plus every one that is overdue;
5. prune by `[retention]` under an exclusive lock. When another process
   has the repository locked, prune is skipped for this run with a warning,
   because the next run prunes the same snapshots. When the lock in the way
   is stale, the run fails with exit 23 instead: a lock left by a killed
   process would otherwise stop every later prune without a word;
6. grade every namespace (kvsnap.status);
7. with `[drill] automatic = true`, drill each namespace whose last drill
   is older than `[drill] every` (or that never had one), then grade again.

The pass is idempotent: running it twice in a row makes a second snapshot
of each namespace and changes nothing else. Its exit code is the first
failure among the steps: the backup's code (3 when only some namespaces
failed), then 4 when a verify failed, then 8 when an anomaly held a
snapshot, then the exit code of a failed drill, then 23 when a stale lock
blocked prune, else 0. The status grades are reported beside the exit code,
not in it: `kvsnap status` exits with them. Failures, anomalies
and (when asked) successes are sent to the webhooks of the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kvsnap import notify
from kvsnap.anomaly import Anomaly, check_anomaly
from kvsnap.backup import BackupResult, NamespaceBackup, run_backup
from kvsnap.cloudflare import KvClient, Namespace, open_client, resolve_namespace
from kvsnap.config import Settings
from kvsnap.drill import DrillOptions, DrillResult, run_drill
from kvsnap.errors import (
    EXIT_ANOMALY,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_VERIFY,
    ConfigError,
    KvsnapError,
    NamespaceNotFound,
    RepositoryLocked,
    VerifyError,
)
from kvsnap.format import Manifest
from kvsnap.lock import list_locks, locked
from kvsnap.logs import run_context
from kvsnap.policy import Policy
from kvsnap.progress import Reporter
from kvsnap.repository import Repository, format_timestamp, parse_timestamp
from kvsnap.retention import prune
from kvsnap.state import VerifyRecord, verify_records
from kvsnap.status import StatusReport, collect_status
from kvsnap.verify import Problem, VerifyResult, save_result, verify_snapshot

log = logging.getLogger(__name__)

# How long the backup waits for another process's prune to finish, and how
# long prune waits for other processes' backups before it is skipped for
# this run (the next run prunes the same snapshots).
BACKUP_LOCK_WAIT_SECONDS = 600.0
PRUNE_LOCK_WAIT_SECONDS = 60.0
# How long an interrupted run may spend telling the webhooks before it stops.
NOTIFY_ON_STOP_SECONDS = 15.0


def new_run_id() -> str:
    return secrets.token_hex(6)


@dataclass
class RunResult:
    """Everything one pass did; `exit_code` is the pass's verdict."""

    run_id: str
    started: str
    seconds: float = 0.0
    exit_code: int = EXIT_OK
    error: str | None = None  # a failure that stopped the pass before its end
    backup: BackupResult | None = None
    verified: list[VerifyResult] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    pruned: dict[str, Any] | None = None
    prune_blocked: str | None = None  # a stale lock that kept prune from running
    drills: list[DrillResult] = field(default_factory=list)
    prune_skipped: str | None = None
    status: StatusReport | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "run",
            "ok": self.ok,
            "run_id": self.run_id,
            "started": self.started,
            "seconds": self.seconds,
            "exit_code": self.exit_code,
            "error": self.error,
            "backup": dataclasses.asdict(self.backup) if self.backup else None,
            "verified": [
                {
                    "snapshot_id": r.snapshot_id,
                    "namespace_id": r.namespace_id,
                    "read_data": r.read_data,
                    "ok": r.ok,
                    "problems": [f"{p.path}: {p.message}" for p in r.problems],
                }
                for r in self.verified
            ],
            "anomalies": [dataclasses.asdict(a) for a in self.anomalies],
            "prune": self.pruned,
            "prune_skipped": self.prune_skipped,
            "prune_blocked": self.prune_blocked,
            "drills": [
                {
                    "report": d.report.id,
                    "namespace_id": d.report.namespace_id,
                    "ok": d.ok and d.started,
                    "started": d.started,
                    "exit_code": d.exit_code,
                    "error": d.error.message if d.error else None,
                    "stored": d.stored_folder,
                }
                for d in self.drills
            ],
            "status": self.status.to_dict() if self.status else None,
        }


async def run_policy(
    settings: Settings,
    policy: Policy,
    *,
    run_id: str | None = None,
    reporter: Reporter | None = None,
) -> RunResult:
    """Run one pass and return its result.

    A KvsnapError ends the pass and goes into the result. An interruption
    is recorded and alerted, then raised again; other exceptions are bugs
    and propagate.
    """
    result = RunResult(
        run_id=run_id or new_run_id(), started=format_timestamp(datetime.now(UTC))
    )
    start = time.monotonic()
    with run_context(result.run_id):
        log.info("run started")
        try:
            await _run(settings, policy, result, reporter)
        except asyncio.CancelledError:
            # Ctrl-C, SIGTERM (a scheduler's timeout) or the daemon stopping:
            # an alert matters most here, so send it before going on.
            result.error = "interrupted before the run finished"
            result.exit_code = EXIT_INTERRUPTED
            result.seconds = round(time.monotonic() - start, 3)
            log.error("run interrupted after %.1f s", result.seconds)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_notify(policy, result), NOTIFY_ON_STOP_SECONDS)
            raise
        except KvsnapError as exc:
            result.error = exc.message
            result.exit_code = exc.exit_code
            hint = f" (hint: {exc.hint})" if exc.hint else ""
            log.error(
                "run failed: %s%s",
                exc.message,
                hint,
                extra={"error": type(exc).__name__},
            )
        result.seconds = round(time.monotonic() - start, 3)
        log.info(
            "run finished with exit code %d in %.1f s",
            result.exit_code,
            result.seconds,
            extra={"duration": result.seconds},
        )
        await _notify(policy, result)
    return result


async def _run(
    settings: Settings,
    policy: Policy,
    result: RunResult,
    reporter: Reporter | None,
) -> None:
    if not settings.namespaces and not settings.all_namespaces:
        raise ConfigError(
            "the policy names no namespace to back up",
            hint='set namespaces = ["..."] or all = true in kvsnap.toml',
        )
    url = settings.require_repository()
    async with open_client(settings) as client:
        chosen, missing = await _resolve(client, settings)
        # With `all`, every namespace of the account must have a snapshot.
        expected = list(settings.namespaces) or [ns.id for ns in chosen]
        repo = await Repository.open_or_init(url, account_id=client.account_id)
        async with locked(
            repo,
            exclusive=False,
            command="kvsnap run",
            wait=BACKUP_LOCK_WAIT_SECONDS,
        ):
            result.backup = await run_backup(
                client,
                repo,
                chosen,
                part_bytes=settings.part_bytes,
                tags=["scheduled"],
                reporter=reporter,
            )
            result.backup.namespaces += missing
            await _check_new(repo, policy, result)
            await _full_reads(repo, policy, result)

    await _prune(repo, policy, result)
    result.status = await collect_status(repo, policy, expected=expected)
    if policy.drill_automatic and await _drills(settings, policy, repo, result):
        result.status = await collect_status(repo, policy, expected=expected)
    result.exit_code = _exit_code(result)


def due_drills(status: StatusReport, policy: Policy) -> list[tuple[str, str]]:
    """Return (namespace id, newest usable snapshot) of each namespace due a drill."""
    every = policy.drill_every.total_seconds()
    return [
        (ns.namespace_id, ns.newest_usable)
        for ns in status.namespaces
        if ns.newest_usable is not None
        and (ns.last_drill_age is None or ns.last_drill_age > every)
    ]


async def _drills(
    settings: Settings, policy: Policy, repo: Repository, result: RunResult
) -> bool:
    """Drill every namespace that is due; return whether any drill ran."""
    assert result.status is not None
    due = due_drills(result.status, policy)
    if not due:
        return False
    async with open_client(settings) as client:
        for namespace_id, snapshot_id in due:
            options = DrillOptions(
                namespace=namespace_id,
                snapshot=snapshot_id,
                sandbox=policy.drill_sandbox,
                sample=policy.drill_sample,
                lock_wait=BACKUP_LOCK_WAIT_SECONDS,
            )
            drill = await run_drill(repo, client, settings, policy, options)
            result.drills.append(drill)
            if not drill.started:
                log.error(
                    "drill of %s could not start: %s",
                    namespace_id,
                    drill_failure(drill),
                    extra={"namespace": namespace_id},
                )
                continue
            log.info(
                "drill %s of %s: %s",
                drill.report.id,
                namespace_id,
                "PASS" if drill.ok else "FAIL",
                extra={"namespace": namespace_id},
            )
    return True


async def _resolve(
    client: KvClient, settings: Settings
) -> tuple[list[Namespace], list[NamespaceBackup]]:
    """Find the policy's namespaces; a missing one fails alone, not the run.

    A namespace deleted from the account (or renamed) must not stop the
    backups of the others, so it becomes a failed outcome of its own. When
    none of them exists, the run fails with the lookup error.
    """
    if settings.all_namespaces:
        return await client.resolve_namespaces((), all_namespaces=True), []
    available = await client.list_namespaces()
    chosen: list[Namespace] = []
    missing: list[NamespaceBackup] = []
    for name in settings.namespaces:
        try:
            namespace = resolve_namespace(name, available)
        except NamespaceNotFound as exc:
            if len(missing) + 1 == len(settings.namespaces) and not chosen:
                raise
            log.error(
                "backup of %s failed: %s", name, exc.message, extra={"namespace": name}
            )
            missing.append(
                NamespaceBackup(
                    name,
                    name,
                    ok=False,
                    error=exc.message,
                    exit_code=exc.exit_code,
                )
            )
            continue
        if namespace not in chosen:
            chosen.append(namespace)
    return chosen, missing


async def _check_new(repo: Repository, policy: Policy, result: RunResult) -> None:
    """Quick-verify each new snapshot, then compare it with its predecessor."""
    assert result.backup is not None
    for outcome in result.backup.namespaces:
        if not outcome.ok or outcome.snapshot_id is None:
            continue
        manifest = await repo.resolve(outcome.snapshot_id)
        checked = await verify_snapshot(repo, manifest, read_data=False)
        await save_result(repo, checked)
        result.verified.append(checked)
        if not checked.ok:
            log.error(
                "new snapshot %s failed its quick verify",
                manifest.id,
                extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
            )
            continue
        try:
            anomaly = await check_anomaly(repo, manifest, share=policy.anomaly_share)
        except VerifyError as exc:
            # The comparison read every record of the new snapshot and found
            # damage that the quick verify could not see.
            damaged = failed_result(manifest, exc.message)
            await save_result(repo, damaged)
            result.verified.append(damaged)
            log.error(
                "new snapshot %s is damaged: %s",
                manifest.id,
                exc.message,
                extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
            )
            continue
        if anomaly is not None:
            result.anomalies.append(anomaly)


def failed_result(manifest: Manifest, message: str) -> VerifyResult:
    """Return a failed full-read result of `manifest` for a problem found elsewhere."""
    return VerifyResult(
        snapshot_id=manifest.id,
        namespace_id=manifest.namespace_id,
        namespace_title=manifest.namespace_title,
        read_started=manifest.read_started,
        read_data=True,
        ok=False,
        parts_checked=len(manifest.parts),
        records_checked=0,
        bytes_read=0,
        problems=[Problem(path="(records)", message=message)],
    )


def choose_full_reads(
    manifests: list[Manifest],
    records: dict[str, VerifyRecord],
    policy: Policy,
    now: datetime,
) -> list[Manifest]:
    """Pick the snapshots to read in full this run, oldest read first.

    Every snapshot whose last full read (or, never read, whose creation) is
    older than `read_data_within` is due; on top of those, the share
    `read_data_share` of all snapshots, never-read ones first, keeps the
    reads spread over the period instead of bunched at its end.
    """

    def last_read(manifest: Manifest) -> str | None:
        record = records.get(manifest.id)
        return record.read_data_checked if record else None

    def is_due(manifest: Manifest) -> bool:
        basis = parse_timestamp(last_read(manifest) or manifest.read_started)
        return now - basis >= policy.read_data_within

    order = sorted(
        manifests,
        key=lambda m: (last_read(m) is not None, last_read(m) or "", m.read_started),
    )
    share = math.ceil(len(manifests) * policy.read_data_share)
    chosen = {m.id for m in order[:share]} | {m.id for m in manifests if is_due(m)}
    return [m for m in order if m.id in chosen]


async def _full_reads(repo: Repository, policy: Policy, result: RunResult) -> None:
    manifests = await repo.snapshots()
    records = await verify_records(repo)
    for manifest in choose_full_reads(manifests, records, policy, datetime.now(UTC)):
        checked = await verify_snapshot(repo, manifest, read_data=True)
        await save_result(repo, checked)
        result.verified.append(checked)
        if not checked.ok:
            log.error(
                "snapshot %s failed its full read: %d problem(s)",
                manifest.id,
                len(checked.problems),
                extra={"snapshot": manifest.id, "namespace": manifest.namespace_id},
            )


async def _prune(repo: Repository, policy: Policy, result: RunResult) -> None:
    # A stale lock never goes by itself, so waiting for it would be pointless.
    # Locks of dead processes of this host are the exception: taking the lock
    # removes them.
    locks = await list_locks(repo)
    stale = [held for held in locks if held.stale and not held.removable]
    if stale:
        result.prune_blocked = stale[0].describe()
        result.prune_skipped = f"blocked by {result.prune_blocked}"
        log.error(
            "a stale lock keeps prune from running: %s; remove it with "
            "'kvsnap unlock' if no kvsnap process runs",
            result.prune_blocked,
        )
        return
    try:
        pruned = await prune(
            repo,
            policy.retention,
            dry_run=False,
            lock_wait=PRUNE_LOCK_WAIT_SECONDS,
        )
    except RepositoryLocked as exc:
        result.prune_skipped = exc.message
        log.warning("prune skipped for this run: %s", exc.message)
        return
    result.pruned = pruned.to_dict()


def _exit_code(result: RunResult) -> int:
    if result.backup is not None and result.backup.exit_code != EXIT_OK:
        return result.backup.exit_code
    if any(not checked.ok for checked in result.verified):
        return EXIT_VERIFY
    if result.anomalies:
        return EXIT_ANOMALY
    failed = [d.exit_code for d in result.drills if not d.ok or not d.started]
    if failed:
        return failed[0]
    if result.prune_blocked:
        return EXIT_LOCKED
    return EXIT_OK


async def _notify(policy: Policy, result: RunResult) -> None:
    if not policy.webhooks:
        return
    for anomaly in result.anomalies:
        await notify.send(
            policy,
            notify.Event(
                type="anomaly",
                run=result.run_id,
                summary=anomaly.describe(),
                details=dataclasses.asdict(anomaly),
            ),
        )
    # An anomaly sets the exit code, so a failed drill beside it is looked
    # for separately.
    if result.exit_code not in (EXIT_OK, EXIT_ANOMALY) or failed_steps(result):
        await notify.send(
            policy,
            notify.Event(
                type="failure",
                run=result.run_id,
                summary=failure_summary(result),
                details=result.to_dict(),
            ),
        )
    elif result.exit_code == EXIT_OK and policy.notify_on_success:
        await notify.send(
            policy,
            notify.Event(
                type="success",
                run=result.run_id,
                summary=success_summary(result),
                details=result.to_dict(),
            ),
        )


def drill_failure(drill: DrillResult) -> str:
    """Describe a failed drill: its stored report, or why it could not start."""
    name = drill.report.namespace_title or drill.report.namespace_id
    if not drill.started:
        reason = drill.error.message if drill.error else "unknown error"
        return f"restore drill of {name} could not start: {reason}"
    return f"restore drill {drill.report.id} of {name}"


def failed_steps(result: RunResult) -> list[str]:
    """Name each step of the pass that failed, for alerts."""
    failed = []
    if result.backup:
        failed += [
            f"backup of {ns.namespace_title or ns.namespace_id}: {ns.error}"
            for ns in result.backup.namespaces
            if not ns.ok
        ]
    failed += [f"verify of {r.snapshot_id}" for r in result.verified if not r.ok]
    if result.prune_blocked:
        failed.append(f"prune, blocked by a stale lock: {result.prune_blocked}")
    failed += [drill_failure(d) for d in result.drills if not d.ok or not d.started]
    return failed


def failure_summary(result: RunResult) -> str:
    """Return one line naming what failed, for alerts."""
    if result.error:
        return f"kvsnap run {result.run_id} failed: {result.error}"
    failed = failed_steps(result) or ["see logs"]
    return f"kvsnap run {result.run_id} failed: " + "; ".join(failed)


def success_summary(result: RunResult) -> str:
    count = len(result.backup.namespaces) if result.backup else 0
    keys = sum(ns.keys for ns in result.backup.namespaces) if result.backup else 0
    return (
        f"kvsnap run {result.run_id} backed up {count} namespace(s), {keys} keys, "
        f"in {result.seconds:.1f} s"
    )
