"""Command `kvsnap daemon`: run the policy on its schedule, with metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import AccountOption, ConfigOption, RepoOption
from kvsnap.config import load_settings
from kvsnap.daemon import (
    DEFAULT_STOP_GRACE_SECONDS,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    check_settings,
    run_daemon,
)
from kvsnap.errors import ConfigError
from kvsnap.metrics import DEFAULT_LISTEN, Health, Metrics, MetricsServer, parse_listen
from kvsnap.policy import check_schedule, load_policy

log = logging.getLogger(__name__)


@app.command("daemon")
def daemon_command(
    repo: str = RepoOption,
    account: str = AccountOption,
    config: Path = ConfigOption,
    listen: str = typer.Option(
        DEFAULT_LISTEN,
        "--listen",
        help="HOST:PORT of /metrics, /healthz and /livez; port 0 picks a free port.",
    ),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote",
        help="Allow --listen on a non-loopback address (the endpoints have no "
        "authentication).",
    ),
    schedule: str = typer.Option(
        None,
        "--schedule",
        help="Cron expression in UTC that replaces [policy] schedule.",
        show_default=False,
    ),
    interval: float = typer.Option(
        None,
        "--interval",
        help="Run every SECONDS instead of on a cron schedule (for tests and demos).",
        show_default=False,
    ),
    run_now: bool = typer.Option(
        False, "--run-now", help="Start a run at once, then follow the schedule."
    ),
    stop_grace: float = typer.Option(
        DEFAULT_STOP_GRACE_SECONDS,
        "--stop-grace",
        help="Seconds a run in progress may go on after SIGTERM before it is "
        "cancelled.",
    ),
) -> None:
    """Run the policy at each time of its schedule until SIGTERM or Ctrl-C.

    Each run is what `kvsnap run` does. A failed run is logged, counted and
    notified, and the daemon goes on to the next scheduled time. Prometheus
    metrics and health checks are served on --listen (loopback by default).

    On SIGTERM or SIGINT no new run starts. A run in progress may finish
    within --stop-grace seconds. After that, or at a second signal, it is
    cancelled, and its unfinished snapshots get no manifest. Exit codes: 0 stopped with
    no run cancelled, 130 stopped after cancelling a run, 10 configuration
    error (bad schedule, address in use, no namespace, repository or token).
    """
    settings = load_settings(config_file=config, repository=repo, account_id=account)
    policy = load_policy(settings.config_file)
    check_settings(settings)
    chosen = _schedule(policy.schedule, schedule, interval)
    if schedule is not None:
        policy = dataclasses.replace(policy, schedule=schedule)
    if stop_grace < 0:
        raise ConfigError(f"invalid --stop-grace {stop_grace}: expected 0 or more")
    host, port = parse_listen(listen, allow_remote=allow_remote)

    metrics = Metrics()
    health = Health()
    server = MetricsServer(host, port, metrics, health).start()
    log.info(
        "serving metrics on %s/metrics and health on %s/healthz", *[server.url] * 2
    )
    try:
        code = asyncio.run(
            run_daemon(
                settings,
                policy,
                chosen,
                metrics=metrics,
                health=health,
                stop_grace_seconds=stop_grace,
                run_now=run_now,
            )
        )
    finally:
        server.stop()
    raise typer.Exit(code)


def _schedule(
    policy_schedule: str, option: str | None, interval: float | None
) -> Schedule:
    if option is not None and interval is not None:
        raise ConfigError("--schedule and --interval exclude each other: pass one")
    if interval is not None:
        return IntervalSchedule(interval)
    if option is not None:
        try:
            check_schedule(option)
        except ConfigError as exc:
            message = exc.message.replace("[policy] schedule", "--schedule")
            raise ConfigError(message, hint=exc.hint) from None
        return CronSchedule(option)
    return CronSchedule(policy_schedule)
