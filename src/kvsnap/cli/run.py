"""Command `kvsnap run`: one pass of the policy, for cron and other schedulers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import AccountOption, ConfigOption, JsonOption, RepoOption
from kvsnap.cli.output import print_json, stderr, stdout
from kvsnap.cli.repository import format_size
from kvsnap.cli.status import print_status
from kvsnap.config import Settings, load_settings
from kvsnap.policy import Policy, load_policy
from kvsnap.progress import Reporter, RichReporter
from kvsnap.runner import RunResult, drill_failure, run_policy


@app.command("run")
def run_command(
    repo: str = RepoOption,
    account: str = AccountOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Run the policy once: back up, verify, check anomalies, prune, grade.

    The namespaces, targets and retention come from kvsnap.toml (see
    'kvsnap config init'). Exit codes: 0 success, 3 some namespaces failed,
    4 a snapshot failed verification, 8 an anomaly held a snapshot, and the
    codes of configuration (10), token (11), API (12) and repository (20,
    23 locked) errors. The backup waits up to 10 minutes for another
    process's prune; a stale lock fails the run at once.
    """
    settings = load_settings(config_file=config, repository=repo, account_id=account)
    policy = load_policy(settings.config_file)
    result = asyncio.run(_run(settings, policy))
    if as_json:
        print_json(result.to_dict())
    else:
        print_run(result)
    raise typer.Exit(result.exit_code)


async def _run(settings: Settings, policy: Policy) -> RunResult:
    reporter = RichReporter(stderr) if sys.stderr.isatty() else Reporter()
    try:
        return await run_policy(settings, policy, reporter=reporter)
    finally:
        reporter.close()


def _line(text: str) -> None:
    stdout.print(text, markup=False, highlight=False)


def print_run(result: RunResult) -> None:
    """Print what each step of the pass did, then the status table."""
    _line(f"run {result.run_id} started {result.started}")
    if result.backup:
        for ns in result.backup.namespaces:
            name = ns.namespace_title or ns.namespace_id
            if ns.ok:
                _line(
                    f"backup   {name}: snapshot {ns.snapshot_id}, {ns.keys} keys, "
                    f"{format_size(ns.stored_bytes)} stored, {ns.seconds:.1f} s"
                )
            else:
                _line(f"backup   {name}: FAILED: {ns.error}")
    for checked in result.verified:
        kind = "full read" if checked.read_data else "quick"
        verdict = "ok" if checked.ok else f"FAILED ({len(checked.problems)} problems)"
        _line(f"verify   {checked.snapshot_id} ({kind}): {verdict}")
    for anomaly in result.anomalies:
        _line(f"ANOMALY  {anomaly.describe()}")
    if result.pruned is not None:
        _line(
            f"prune    removed {len(result.pruned.get('removed', []))} snapshot(s), "
            f"kept {len(result.pruned.get('kept', []))}"
        )
    elif result.prune_skipped:
        _line(f"prune    SKIPPED: {result.prune_skipped}")
    for drill in result.drills:
        report = drill.report
        if not drill.started:
            _line(f"drill    FAILED: {drill_failure(drill)}")
            continue
        verdict = "PASS" if drill.ok else "FAIL"
        _line(
            f"drill    {report.namespace_title or report.namespace_id}: {verdict}, "
            f"report {report.id}"
        )
    if result.status is not None:
        print_status(result.status)
    if result.error:
        _line(f"error: {result.error}")
    _line(f"run {result.run_id} finished: exit code {result.exit_code}")
