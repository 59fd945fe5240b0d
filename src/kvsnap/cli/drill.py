"""`kvsnap drill`: restore a sample of a snapshot into a sandbox and report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from kvsnap import limits, notify
from kvsnap.cli.app import app
from kvsnap.cli.options import (
    AccountOption,
    ConcurrencyOption,
    ConfigOption,
    JsonOption,
    MaxAttemptsOption,
    RateLimitOption,
    RepoOption,
)
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cloudflare import open_client
from kvsnap.config import Settings, load_settings
from kvsnap.drill import DrillOptions, DrillResult, Mode, run_drill
from kvsnap.errors import ConfigError
from kvsnap.policy import Policy, load_policy
from kvsnap.report import format_seconds, headline, write_report_files
from kvsnap.repository import Repository


@app.command()
def drill(
    namespace: str = typer.Argument(
        ..., help="Namespace (id or title) whose snapshot is tested."
    ),
    snapshot: str = typer.Option(
        None,
        "--snapshot",
        help="Snapshot id, id prefix or latest@NAMESPACE [default: the namespace's "
        "latest].",
        show_default=False,
    ),
    sandbox: str = typer.Option(
        None,
        "--sandbox",
        help="Restore into this empty namespace (id or title) and empty it "
        "afterwards, instead of creating and deleting one [default: [drill] "
        "sandbox of kvsnap.toml].",
        show_default=False,
    ),
    sample: int = typer.Option(
        None,
        "--sample",
        min=1,
        help="Restore this many keys, chosen at random [default: [drill] sample, 100].",
        show_default=False,
    ),
    all_keys: bool = typer.Option(
        False, "--all", help="Restore every key of the snapshot."
    ),
    keys_from: Path = typer.Option(
        None,
        "--keys-from",
        help="Restore the keys in this file, one a line, or kvsnap diff --json.",
        exists=True,
        dir_okay=False,
    ),
    seed: int = typer.Option(
        None,
        "--seed",
        min=0,
        help="Seed of the random sample; the report records the seed used, so a "
        "drill can be repeated [default: random].",
        show_default=False,
    ),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Keep the sandbox and the restored keys for inspection.",
    ),
    output: Path = typer.Option(
        Path(),
        "--output",
        "-o",
        help="Folder for the report files (Markdown, HTML, JSON).",
        file_okay=False,
    ),
    readback_window: float = typer.Option(
        limits.READBACK_WINDOW_SECONDS,
        "--readback-window",
        min=0.0,
        help="Seconds to keep re-reading keys that differ, because KV is "
        "eventually consistent.",
    ),
    lock_wait: float = typer.Option(
        0.0,
        "--lock-wait",
        min=0.0,
        help="Seconds to wait for a conflicting repository lock (a running prune).",
    ),
    repo: str = RepoOption,
    config: Path = ConfigOption,
    account: str = AccountOption,
    concurrency: int = ConcurrencyOption,
    rate_limit: str = RateLimitOption,
    max_attempts: int = MaxAttemptsOption,
    as_json: bool = JsonOption,
) -> None:
    """Test a restore: restore keys of a snapshot into a sandbox and check them.

    Writes a report (Markdown, HTML, JSON) to --output and into the
    repository under reports/. Exit codes: 0 passed, 7 keys differ after the
    restore, 4 the snapshot is damaged, holds invalid records or no key to
    restore, 10 configuration error, 11 token rejected, 12 API failed, 20
    repository or local file error, 22 no snapshot, 23 repository locked,
    130 interrupted. A drill that stops before its sandbox is ready (unknown
    snapshot or sandbox, bad --keys-from file) writes no report and sends no
    webhook. A missed RPO or RTO target is shown in the report and on stderr
    but does not change the exit code.
    """
    flags = (("--sample", sample), ("--all", all_keys), ("--keys-from", keys_from))
    chosen = [flag for flag, given in flags if given]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} exclude each other: give one")
    settings = load_settings(
        config_file=config,
        repository=repo,
        account_id=account,
        concurrency=concurrency,
        rate_limit=rate_limit,
        max_attempts=max_attempts,
    )
    policy = load_policy(settings.config_file)
    mode = Mode.SAMPLE
    if all_keys:
        mode = Mode.ALL
    elif keys_from:
        mode = Mode.KEYS_FROM
    options = DrillOptions(
        namespace=namespace,
        snapshot=snapshot,
        sandbox=sandbox or policy.drill_sandbox,
        mode=mode,
        sample=sample or policy.drill_sample,
        keys_file=keys_from,
        seed=seed,
        keep=keep,
        readback_window=readback_window,
        lock_wait=lock_wait,
    )
    result = asyncio.run(_drill(settings, policy, options))
    if not result.started:
        # Nothing was tried: no report, and the error is shown as such.
        assert result.error is not None
        raise result.error
    files = write_report_files(result.report, output)
    if as_json:
        print_json(
            {
                "type": "drill",
                "ok": result.ok,
                "exit_code": result.exit_code,
                "files": [str(path) for path in files],
                "stored": result.stored_folder,
                "report": result.report,
            }
        )
    else:
        _print_summary(result, files)
    raise typer.Exit(result.exit_code)


async def _drill(
    settings: Settings, policy: Policy, options: DrillOptions
) -> DrillResult:
    repo = await Repository.open(settings.require_repository())
    async with open_client(settings) as client:
        result = await run_drill(repo, client, settings, policy, options)
    if result.started:
        await _announce(policy, result)
    return result


async def _announce(policy: Policy, result: DrillResult) -> None:
    """Tell the webhooks about a failed drill, or a passed one when asked."""
    report = result.report
    targets_met = report.rpo_ok is not False and report.rto_ok is not False
    if not policy.webhooks or (
        report.ok and targets_met and not policy.notify_on_success
    ):
        return
    verdict = "passed" if report.ok else "FAILED"
    if report.ok and not targets_met:
        verdict = "passed, but missed a recovery target"
    await notify.send(
        policy,
        notify.Event(
            type="drill",
            run=report.id,
            summary=f"restore drill {report.id} of "
            f"{report.namespace_title or report.namespace_id} {verdict}: "
            f"{headline(report)}",
            details={
                "report": report.id,
                "snapshot": report.snapshot_id,
                "ok": report.ok,
                "rpo_ok": report.rpo_ok,
                "rto_ok": report.rto_ok,
                "stored": result.stored_folder,
            },
        ),
    )


def _print_summary(result: DrillResult, files: list[Path]) -> None:
    report = result.report
    verdict = "PASS" if report.ok else "FAIL"
    stdout.print(f"drill {verdict}: {headline(report)}", markup=False, highlight=False)
    if report.snapshot_id:
        stdout.print(
            f"snapshot: {report.snapshot_id} of {report.namespace_title} "
            f"({report.namespace_id})",
            markup=False,
            highlight=False,
        )
    for label, measured, target, ok in (
        ("RPO", report.snapshot_age_seconds, report.rpo_target_seconds, report.rpo_ok),
        ("RTO", report.rto_estimate_seconds, report.rto_target_seconds, report.rto_ok),
    ):
        word = {True: "met", False: "MISSED", None: "not measured"}[ok]
        stdout.print(
            f"{label}: {format_seconds(measured)}, target {format_seconds(target)}: "
            f"{word}",
            markup=False,
            highlight=False,
        )
    for mismatch in report.mismatches:
        stdout.print(
            f"  mismatch {mismatch.key!r}: {', '.join(mismatch.fields)}", markup=False
        )
    for problem in report.problems:
        stderr.print(f"problem: {problem}", markup=False, highlight=False)
    for warning in report.warnings:
        stderr.print(f"warning: {warning}", markup=False, highlight=False)
    for path in files:
        stdout.print(f"report: {path}", markup=False, highlight=False)
    if result.stored_folder:
        stdout.print(
            f"stored: {report.repository.rstrip('/')}/{result.stored_folder}/",
            markup=False,
            highlight=False,
        )
