"""Prometheus metrics and the health check of `kvsnap daemon`, over HTTP.

`Metrics` keeps its series in its own CollectorRegistry, so nothing depends
on prometheus_client's global one. Per-namespace series carry only the
namespace id as the `namespace` label; `kvsnap_namespace_info` maps each id
to its title, so a renamed namespace does not start new series.

`MetricsServer` serves, on a thread of its own:

- `/metrics`: the registry in the Prometheus text format (or OpenMetrics
  when the scraper requests it);
- `/healthz`: 200 with a JSON body while the scheduler runs and the last run
  succeeded (or no run ended yet), else 503 with the reason;
- `/livez`: 200 while the scheduler runs, whatever the runs' results, for
  probes that restart the process (a restart does not cure a failing run).

There is no authentication, so the server binds to a loopback address
unless the caller allows another one (`parse_listen`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from kvsnap.backup import NamespaceBackup
from kvsnap.errors import ConfigError
from kvsnap.format import Manifest
from kvsnap.repository import (
    IMPORTED_TAG,
    PRE_RESTORE_TAG,
    format_timestamp,
    parse_timestamp,
    snapshot_order,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9477"
# The scheduler beats every HEARTBEAT_SECONDS; after STALE_SECONDS without a
# beat its event loop is taken as stuck and both health checks fail.
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0

# Values of the `result` label of kvsnap_runs_total.
RESULTS = ("success", "anomaly", "failure", "error", "cancelled")
# kvsnap_status_level: the grades of `kvsnap status` as numbers.
STATUS_LEVELS = {"ok": 0, "warning": 1, "breach": 2}


@dataclass(frozen=True)
class RunOutcome:
    """The end of one scheduled run, as the daemon recorded it.

    `result` is one of RESULTS: success (exit code 0), anomaly (exit code 8),
    failure (another exit code), error (an exception escaped the run), or
    cancelled (abandoned at shutdown).
    """

    run_id: str
    result: str
    started: datetime
    finished: datetime
    exit_code: int | None
    error: str | None = None
    backups: list[NamespaceBackup] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()


class _SnapshotAgeCollector(Collector):
    """kvsnap_newest_snapshot_age_seconds, computed at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, float] = {}  # namespace id -> epoch seconds

    def observe(self, namespace_id: str, epoch_seconds: float) -> None:
        with self._lock:
            self._newest[namespace_id] = epoch_seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "kvsnap_newest_snapshot_age_seconds",
            "Seconds since the read of the newest backup snapshot started.",
            labels=["namespace"],
        )
        now = time.time()
        with self._lock:
            newest = sorted(self._newest.items())
        for namespace_id, moment in newest:
            age.add_metric([namespace_id], max(now - moment, 0.0))
        yield age


class Metrics:
    """The daemon's Prometheus series, updated from runs and the repository."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        per_namespace = ["namespace"]
        self.namespace_info = Gauge(
            "kvsnap_namespace_info",
            "Always 1; maps a namespace id to its title.",
            ["namespace", "title"],
            registry=registry,
        )

        self.last_success = Gauge(
            "kvsnap_last_success_timestamp_seconds",
            "End of the newest successful backup of the namespace (Unix time).",
            per_namespace,
            registry=registry,
        )
        self.newest_snapshot = Gauge(
            "kvsnap_newest_snapshot_timestamp_seconds",
            "Start of the read of the newest backup snapshot (Unix time).",
            per_namespace,
            registry=registry,
        )
        self.backup_keys = Gauge(
            "kvsnap_backup_keys",
            "Keys in the newest successful backup of the namespace.",
            per_namespace,
            registry=registry,
        )
        self.backup_bytes = Gauge(
            "kvsnap_backup_bytes",
            "Bytes of values read by the newest successful backup.",
            per_namespace,
            registry=registry,
        )
        self.backup_stored_bytes = Gauge(
            "kvsnap_backup_stored_bytes",
            "Compressed bytes stored by the newest successful backup.",
            per_namespace,
            registry=registry,
        )
        self.backup_duration = Gauge(
            "kvsnap_backup_duration_seconds",
            "Duration of the newest successful backup of the namespace.",
            per_namespace,
            registry=registry,
        )
        self.backup_failures = Counter(
            "kvsnap_backup_failures",
            "Failed backups of the namespace since the daemon started.",
            per_namespace,
            registry=registry,
        )

        self.snapshots = Gauge(
            "kvsnap_snapshots",
            "Snapshots of the namespace in the repository.",
            per_namespace,
            registry=registry,
        )
        self.repository_bytes = Gauge(
            "kvsnap_repository_bytes",
            "Stored bytes of every snapshot of the namespace.",
            per_namespace,
            registry=registry,
        )
        self.status_level = Gauge(
            "kvsnap_status_level",
            "Grade of `kvsnap status`: 0 ok, 1 warning, 2 breach.",
            per_namespace,
            registry=registry,
        )

        self.runs = Counter(
            "kvsnap_runs",
            "Policy runs since the daemon started, by result.",
            ["result"],
            registry=registry,
        )
        self.run_in_progress = Gauge(
            "kvsnap_run_in_progress",
            "1 while a policy run is in progress, else 0.",
            registry=registry,
        )
        self.last_run = Gauge(
            "kvsnap_last_run_timestamp_seconds",
            "End of the last policy run (Unix time).",
            registry=registry,
        )
        self.last_run_exit_code = Gauge(
            "kvsnap_last_run_exit_code",
            "Exit code of the last policy run (-1 when an exception ended it).",
            registry=registry,
        )
        self.last_run_duration = Gauge(
            "kvsnap_last_run_duration_seconds",
            "Duration of the last policy run.",
            registry=registry,
        )
        self.next_run = Gauge(
            "kvsnap_next_run_timestamp_seconds",
            "When the next policy run is due (Unix time).",
            registry=registry,
        )

        self._ages = _SnapshotAgeCollector()
        registry.register(self._ages)
        ProcessCollector(registry=registry)
        for result in RESULTS:
            self.runs.labels(result=result)

    def observe_namespace(self, namespace_id: str, title: str) -> None:
        """Record a namespace's title and start its failure counter at 0."""
        self.namespace_info.labels(namespace=namespace_id, title=title).set(1)
        self.backup_failures.labels(namespace=namespace_id)

    def observe_manifests(self, manifests: Iterable[Manifest]) -> None:
        """Set the per-namespace series from the newest backup snapshot of each.

        Snapshots taken before a restore or by an import are not backups of
        the namespace's data at that time, so they are skipped.
        """
        newest: dict[str, Manifest] = {}
        for manifest in manifests:
            if PRE_RESTORE_TAG in manifest.tags or IMPORTED_TAG in manifest.tags:
                continue
            current = newest.get(manifest.namespace_id)
            if current is None or snapshot_order(manifest) > snapshot_order(current):
                newest[manifest.namespace_id] = manifest
        for namespace_id, manifest in newest.items():
            started = parse_timestamp(manifest.read_started)
            finished = parse_timestamp(manifest.read_finished)
            self.observe_namespace(namespace_id, manifest.namespace_title)
            self._ages.observe(namespace_id, started.timestamp())
            self.newest_snapshot.labels(namespace_id).set(started.timestamp())
            self.last_success.labels(namespace_id).set(finished.timestamp())
            self.backup_keys.labels(namespace_id).set(manifest.keys)
            self.backup_bytes.labels(namespace_id).set(manifest.value_bytes)
            self.backup_stored_bytes.labels(namespace_id).set(manifest.stored_bytes)
            duration = (finished - started).total_seconds()
            self.backup_duration.labels(namespace_id).set(duration)

    def observe_status(self, namespaces: Iterable[Any]) -> None:
        """Set the series that `kvsnap status` computes, from its namespace rows.

        Each row is a `kvsnap.status.NamespaceStatus`. A row whose namespace
        has no snapshot carries the id or title the policy names instead.
        """
        for row in namespaces:
            namespace_id = row.namespace_id
            if row.namespace_title:
                self.observe_namespace(namespace_id, row.namespace_title)
            self.status_level.labels(namespace_id).set(STATUS_LEVELS[row.level])
            self.snapshots.labels(namespace_id).set(row.snapshots)
            self.repository_bytes.labels(namespace_id).set(row.stored_bytes)
            if row.newest_snapshot_at:
                moment = parse_timestamp(row.newest_snapshot_at).timestamp()
                self._ages.observe(namespace_id, moment)
                self.newest_snapshot.labels(namespace_id).set(moment)

    def run_started(self) -> None:
        self.run_in_progress.set(1)

    def run_finished(self, outcome: RunOutcome) -> None:
        """Count the run and set the series of each namespace it backed up."""
        self.run_in_progress.set(0)
        self.runs.labels(result=outcome.result).inc()
        self.last_run.set(outcome.finished.timestamp())
        self.last_run_duration.set(outcome.seconds)
        exit_code = -1 if outcome.exit_code is None else outcome.exit_code
        self.last_run_exit_code.set(exit_code)
        for backup in outcome.backups:
            namespace_id = backup.namespace_id
            self.observe_namespace(namespace_id, backup.namespace_title)
            if not backup.ok:
                self.backup_failures.labels(namespace_id).inc()
                continue
            self.last_success.labels(namespace_id).set(outcome.finished.timestamp())
            self.backup_keys.labels(namespace_id).set(backup.keys)
            self.backup_bytes.labels(namespace_id).set(backup.value_bytes)
            self.backup_stored_bytes.labels(namespace_id).set(backup.stored_bytes)
            self.backup_duration.labels(namespace_id).set(backup.seconds)

    def set_next_run(self, moment: datetime | None) -> None:
        self.next_run.set(moment.timestamp() if moment else 0)


class Health:
    """The state that `/healthz` and `/livez` report, shared by scheduler and server.

    The scheduler calls `beat` every HEARTBEAT_SECONDS from its event loop and
    `run_finished` after each run; the HTTP threads call `check`.
    """

    def __init__(self, *, stale_seconds: float = STALE_SECONDS) -> None:
        self._lock = threading.Lock()
        self._stale_seconds = stale_seconds
        self._started = datetime.now(UTC)
        self._beat = time.monotonic()
        self._state = "starting"
        self._run_id: str | None = None
        self._last: RunOutcome | None = None
        self._last_success: datetime | None = None
        self._failures = 0
        self._next_run: datetime | None = None

    def beat(self) -> None:
        with self._lock:
            self._beat = time.monotonic()

    def set_state(self, state: str) -> None:
        """Set the scheduler state: starting, running, stopping or stopped."""
        with self._lock:
            self._state = state
            self._beat = time.monotonic()

    def set_next_run(self, moment: datetime | None) -> None:
        with self._lock:
            self._next_run = moment

    def run_started(self, run_id: str) -> None:
        with self._lock:
            self._run_id = run_id

    def run_finished(self, outcome: RunOutcome) -> None:
        with self._lock:
            self._run_id = None
            self._last = outcome
            if outcome.result == "success":
                self._last_success = outcome.finished
            elif outcome.result != "cancelled":
                self._failures += 1

    def check(self, *, liveness: bool = False) -> tuple[bool, dict[str, Any]]:
        """Return (healthy, body); `liveness` ignores the runs' results."""
        with self._lock:
            silent = time.monotonic() - self._beat
            reason = None
            if self._state in ("stopping", "stopped"):
                reason = f"the daemon is {self._state}"
            elif silent > self._stale_seconds:
                reason = f"the scheduler has not run for {silent:.0f} s"
            elif not liveness and self._last and self._last.result != "success":
                reason = _describe_failure(self._last)
            body = {
                "ok": reason is None,
                "reason": reason,
                "scheduler": self._state,
                "started": format_timestamp(self._started),
                "run_in_progress": self._run_id,
                "last_run": _outcome_json(self._last),
                "last_success": _time_json(self._last_success),
                "failed_runs": self._failures,
                "next_run": _time_json(self._next_run),
            }
        return reason is None, body


def _describe_failure(outcome: RunOutcome) -> str:
    if outcome.result == "error":
        return f"the last run {outcome.run_id} ended with an error: {outcome.error}"
    if outcome.result == "cancelled":
        return f"the last run {outcome.run_id} was cancelled"
    text = f"the last run {outcome.run_id} ended with exit code {outcome.exit_code}"
    return text + (f": {outcome.error}" if outcome.error else "")


def _outcome_json(outcome: RunOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "run_id": outcome.run_id,
        "result": outcome.result,
        "exit_code": outcome.exit_code,
        "started": format_timestamp(outcome.started),
        "finished": format_timestamp(outcome.finished),
        "error": outcome.error,
    }


def _time_json(moment: datetime | None) -> str | None:
    return format_timestamp(moment) if moment else None


def parse_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """Parse `HOST:PORT` (`[::1]:PORT` for IPv6) into (host, port).

    HOST must be an IP address or `localhost`. A non-loopback address raises
    ConfigError unless `allow_remote`, because the endpoints have no
    authentication. Port 0 lets the system pick a free port.
    """
    host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"invalid --listen {text!r}: expected HOST:PORT, such as {DEFAULT_LISTEN}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"invalid --listen host {host!r}: expected an IP address or localhost"
        ) from None
    if not address.is_loopback and not allow_remote:
        raise ConfigError(
            f"--listen {text} is not a loopback address, and the metrics and "
            "health endpoints have no authentication",
            hint="pass --allow-remote to serve them on other interfaces anyway",
        )
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], metrics: Metrics, health: Health
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        self.health = health
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr, for instance when a
        # scraper closes its connection early; one log line is enough.
        error = sys.exc_info()[1]
        log.warning(
            "metrics server: request from %s failed: %s",
            client_address[0],
            type(error).__name__,
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kvsnap"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(
                HTTPStatus.OK, encoder(self.server.metrics.registry), content_type
            )
        elif path in ("/healthz", "/livez"):
            healthy, body = self.server.health.check(liveness=path == "/livez")
            status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, json.dumps(body).encode() + b"\n", "application/json")
        elif path == "/":
            text = b"kvsnap daemon: /metrics /healthz /livez\n"
            self._send(HTTPStatus.OK, text, "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics server: " + format, *args)


class MetricsServer:
    """The HTTP server of /metrics, /healthz and /livez, on a background thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health):
        try:
            self._httpd = _Server((host, port), metrics, health)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                hint="choose another port with --listen HOST:PORT",
            ) from exc
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="kvsnap-metrics",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()
