"""The scheduler of `kvsnap daemon`: policy runs at cron times, until a signal.

The daemon computes each fire time from the policy's cron expression in UTC
(or, for tests and demos, from a fixed interval) and calls
`kvsnap.runner.run_policy` at that time. A run never overlaps the next: fire
times that pass while a run is still going are coalesced into one run that
starts as soon as the long one ends, however many were missed.

A failing run does not stop the daemon. `run_policy` turns kvsnap's errors
into an exit code and sends the webhooks for failures, anomalies and
successes itself, so the daemon only notifies about an exception that
escapes it (a bug), which it also logs with its traceback.

On SIGTERM or SIGINT the daemon schedules nothing more. A run in progress
gets `stop_grace_seconds` to finish. After that, or at a second signal, it
is cancelled wherever it is. An unfinished snapshot has no manifest, so no
partial snapshot becomes visible.
`serve` returns 0 when no run was abandoned and 130 when one was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from croniter import croniter

from kvsnap import notify
from kvsnap.config import Settings
from kvsnap.errors import (
    EXIT_ANOMALY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    KvsnapError,
    RepositoryNotFound,
)
from kvsnap.logs import mask
from kvsnap.metrics import HEARTBEAT_SECONDS, Health, Metrics, RunOutcome
from kvsnap.policy import Policy
from kvsnap.repository import Repository, format_timestamp
from kvsnap.runner import RunResult, new_run_id, run_policy
from kvsnap.status import collect_status
from kvsnap.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_STOP_GRACE_SECONDS = 60.0
# Maximum single sleep while waiting for a fire time, so a changed system
# clock is noticed within this many seconds.
MAX_SLEEP_SECONDS = 30.0
# How long a cancelled run may take to unwind (release its lock, close its
# connections) before the daemon exits without it.
CANCEL_WAIT_SECONDS = 30.0
# How long the repository scan at start-up may take before metrics start
# empty and fill with the first run.
STARTUP_SCAN_SECONDS = 120.0
# Missed fire times counted for the log line about a long run.
MAX_MISSED_COUNTED = 1000

RunFunction = Callable[..., Awaitable[RunResult]]
SendFunction = Callable[[Policy, notify.Event], Awaitable[None]]


class Schedule(Protocol):
    """When runs are due."""

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after `moment` (aware, UTC)."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class CronSchedule:
    """Fire times of a five-field cron expression, evaluated in UTC."""

    expression: str

    def next_after(self, moment: datetime) -> datetime:
        following = croniter(self.expression, moment.astimezone(UTC))
        return following.get_next(datetime)

    def describe(self) -> str:
        return f"cron {self.expression!r} (UTC)"


@dataclass(frozen=True)
class IntervalSchedule:
    """A fire time every `seconds` after the previous one."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ConfigError(
                f"invalid --interval {self.seconds}: expected seconds above 0"
            )

    def next_after(self, moment: datetime) -> datetime:
        return moment + timedelta(seconds=self.seconds)

    def describe(self) -> str:
        return f"every {self.seconds:g} s"


def check_settings(settings: Settings) -> None:
    """Raise ConfigError now for what would make every scheduled run fail."""
    settings.require_repository()
    settings.require_cloudflare()
    if not settings.namespaces and not settings.all_namespaces:
        raise ConfigError(
            "the policy names no namespace to back up",
            hint='set namespaces = ["..."] or all = true in kvsnap.toml',
        )


def result_label(exit_code: int) -> str:
    """Return the `result` label of kvsnap_runs_total for a run's exit code."""
    if exit_code == EXIT_OK:
        return "success"
    if exit_code == EXIT_ANOMALY:
        return "anomaly"
    return "failure"


def _now() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """The scheduler: runs the policy at each fire time until `request_stop`."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        schedule: Schedule,
        *,
        metrics: Metrics,
        health: Health,
        stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
        run_now: bool = False,
        run_function: RunFunction = run_policy,
        send: SendFunction = notify.send,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.schedule = schedule
        self.metrics = metrics
        self.health = health
        self.stop_grace_seconds = stop_grace_seconds
        self.run_now = run_now
        self.run_function = run_function
        self.send = send
        self.abandoned = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        """Stop scheduling; a second request abandons the run in progress at once."""
        if self._stop.is_set():
            log.warning("%s again: abandoning the run in progress now", reason)
            self._force.set()
            return
        log.info("%s: stopping; no further run will start", reason)
        self.health.set_state("stopping")
        self.health.set_next_run(None)
        self.metrics.set_next_run(None)
        self._stop.set()

    async def serve(self) -> int:
        """Schedule runs until stopped; return 0, or 130 if a run was abandoned."""
        self.health.set_state("running")
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            log.info("daemon started: runs %s", self.schedule.describe())
            await self._until_stopped(self._observe_repository(), STARTUP_SCAN_SECONDS)
            due = _now() if self.run_now else self.schedule.next_after(_now())
            while not self._stop.is_set():
                self._announce(due)
                if not await self._sleep_until(due):
                    break
                await self._run_guarded()
                if self._stop.is_set():
                    break
                due = self._next_due(due, _now())
        finally:
            heartbeat.cancel()
            self.health.set_state("stopped")
            self.health.set_next_run(None)
            self.metrics.set_next_run(None)
        code = EXIT_INTERRUPTED if self.abandoned else EXIT_OK
        log.info("daemon stopped with exit code %d", code)
        return code

    # -- waiting --------------------------------------------------------

    def _announce(self, due: datetime) -> None:
        self.metrics.set_next_run(due)
        self.health.set_next_run(due)
        log.info("next run at %s", format_timestamp(due))

    async def _sleep_until(self, due: datetime) -> bool:
        """Wait for `due`; return False if a stop was requested first."""
        while not self._stop.is_set():
            remaining = (due - _now()).total_seconds()
            if remaining <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), timeout=min(remaining, MAX_SLEEP_SECONDS)
                )
        return False

    def _next_due(self, due: datetime, finished: datetime) -> datetime:
        """Return the next fire time after `due`, or `finished` if some passed."""
        upcoming = self.schedule.next_after(due)
        if upcoming > finished:
            return upcoming
        missed = 0
        while upcoming <= finished and missed < MAX_MISSED_COUNTED:
            missed += 1
            upcoming = self.schedule.next_after(upcoming)
        counted = f"{missed}" if missed < MAX_MISSED_COUNTED else f"{missed} or more"
        log.warning(
            "the run ended after %s scheduled time(s) had passed; running once"
            " now for all of them",
            counted,
        )
        return finished

    async def _heartbeat(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _until_stopped(
        self, work: Coroutine[Any, Any, None], timeout: float
    ) -> None:
        """Await `work` unless a stop request or `timeout` comes first."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, timeout=timeout, return_when="FIRST_COMPLETED")
        stop.cancel()
        if not task.done():
            error = await cancel_and_wait(task)
            if error is not None:
                raise error

    # -- running --------------------------------------------------------

    async def _run_guarded(self) -> None:
        """Run once; on a stop request, wait out the grace period, then cancel."""
        run_id = new_run_id()
        task = asyncio.create_task(self._run_once(run_id))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when="FIRST_COMPLETED")
        stop.cancel()
        if task.done():
            return

        log.info(
            "waiting up to %g s for run %s to finish",
            self.stop_grace_seconds,
            run_id,
            extra={"run": run_id},
        )
        force = asyncio.ensure_future(self._force.wait())
        await asyncio.wait(
            {task, force},
            timeout=self.stop_grace_seconds,
            return_when="FIRST_COMPLETED",
        )
        force.cancel()
        if task.done():
            return

        log.warning(
            "abandoning run %s: its unfinished snapshots get no manifest",
            run_id,
            extra={"run": run_id},
        )
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
        if not task.done():
            log.error(
                "run %s did not end within %g s of its cancellation; exiting anyway",
                run_id,
                CANCEL_WAIT_SECONDS,
                extra={"run": run_id},
            )
        self.abandoned = not task.done() or task.cancelled()

    async def _run_once(self, run_id: str) -> None:
        """Call the run function and record the outcome; only cancellation escapes."""
        started = _now()
        context = {"run": run_id}
        self.metrics.run_started()
        self.health.run_started(run_id)
        log.info("scheduled run %s starting", run_id, extra=context)
        try:
            result = await self.run_function(self.settings, self.policy, run_id=run_id)
        except asyncio.CancelledError:
            self._record(RunOutcome(run_id, "cancelled", started, _now(), None))
            raise
        except Exception as exc:
            # One run's bug must not end the daemon, so every exception is
            # caught. A KvsnapError carries a message meant for users; any
            # other is a bug, whose text may quote a secret, so it is masked.
            text = exc.message if isinstance(exc, KvsnapError) else mask(str(exc))
            error = f"{type(exc).__name__}: {text}"
            log.error(
                "scheduled run %s failed with an unexpected error",
                run_id,
                exc_info=True,
                extra=context | {"error": type(exc).__name__},
            )
            outcome = RunOutcome(run_id, "error", started, _now(), None, error)
            self._record(outcome)
            await self._notify_error(outcome)
            return

        backups = result.backup.namespaces if result.backup else []
        outcome = RunOutcome(
            run_id,
            result_label(result.exit_code),
            started,
            _now(),
            result.exit_code,
            result.error,
            list(backups),
        )
        self._record(outcome)
        if result.status is not None:
            self.metrics.observe_status(result.status.namespaces)

    def _record(self, outcome: RunOutcome) -> None:
        self.metrics.run_finished(outcome)
        self.health.run_finished(outcome)
        exit_code = "none" if outcome.exit_code is None else outcome.exit_code
        log.info(
            "scheduled run %s ended: %s, exit code %s, %.1f s",
            outcome.run_id,
            outcome.result,
            exit_code,
            outcome.seconds,
            extra={"run": outcome.run_id, "duration": round(outcome.seconds, 3)},
        )

    async def _notify_error(self, outcome: RunOutcome) -> None:
        if not self.policy.webhooks:
            return
        event = notify.Event(
            type="failure",
            run=outcome.run_id,
            summary=f"kvsnap run {outcome.run_id} failed: {outcome.error}",
            details={
                "error": outcome.error,
                "started": outcome.started,
                "seconds": round(outcome.seconds, 3),
                "host": socket.gethostname(),
                "source": "daemon",
            },
        )
        await self.send(self.policy, event)

    async def _observe_repository(self) -> None:
        """Fill the metrics from the snapshots already in the repository."""
        url = self.settings.require_repository()
        try:
            repo = await Repository.open(url, account_id=self.settings.account_id)
            self.metrics.observe_manifests(await repo.snapshots())
            report = await collect_status(
                repo, self.policy, expected=list(self.settings.namespaces)
            )
        except RepositoryNotFound:
            log.info("no repository at %s yet: the first run creates it", url)
            return
        except KvsnapError as exc:
            log.warning(
                "cannot read the repository for the metrics yet: %s; they fill"
                " in after the first run",
                exc.message,
                extra={"error": type(exc).__name__},
            )
            return
        self.metrics.observe_status(report.namespaces)


def install_signal_handlers(daemon: Daemon) -> Callable[[], None]:
    """Route SIGTERM and SIGINT to `daemon.request_stop`; return the undo function."""
    loop = asyncio.get_running_loop()
    previous = {}
    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.getsignal(number)
        loop.add_signal_handler(number, daemon.request_stop, number.name)

    def restore() -> None:
        for number, handler in previous.items():
            loop.remove_signal_handler(number)
            signal.signal(number, handler)

    return restore


async def run_daemon(
    settings: Settings,
    policy: Policy,
    schedule: Schedule,
    *,
    metrics: Metrics,
    health: Health,
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
    run_now: bool = False,
) -> int:
    """Serve a Daemon with SIGTERM and SIGINT handled; return its exit code."""
    daemon = Daemon(
        settings,
        policy,
        schedule,
        metrics=metrics,
        health=health,
        stop_grace_seconds=stop_grace_seconds,
        run_now=run_now,
    )
    restore = install_signal_handlers(daemon)
    try:
        return await daemon.serve()
    finally:
        restore()
