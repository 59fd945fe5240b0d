"""`kvsnap daemon`: scheduling, metrics, health, failures and shutdown.

The end-to-end tests run the daemon as a child process against the KV
emulator, with `--interval` in place of a cron schedule, and read its
metrics and health over HTTP on 127.0.0.1. The tests of the Daemon class
inject the run function, so they run in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvsnap.backup import BackupResult, NamespaceBackup
from kvsnap.config import Settings
from kvsnap.daemon import CronSchedule, Daemon, IntervalSchedule, result_label
from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.errors import ConfigError
from kvsnap.metrics import Health, Metrics, MetricsServer, parse_listen
from kvsnap.notify import Event
from kvsnap.policy import Policy
from kvsnap.runner import RunResult
from kvsnap.seed import SeedEntry
from tests.kvtools import cloudflare_env, create_namespace, run_cli, snapshots

# Upper bound of every wait for the daemon child; the waits end as soon as
# their condition holds, usually within a few seconds.
WAIT_SECONDS = 60.0
LISTENING = re.compile(r"serving metrics on (http://127\.0\.0\.1:\d+)/metrics")


# -- helpers -------------------------------------------------------------


class DaemonProcess:
    """A `kvsnap daemon` child whose stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvsnap", "daemon", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, check: Callable[[], Any], what: str) -> Any:
        """Poll `check` until it returns a true value; fail after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited early ({what}):\n{self.stderr}")
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}:\n{self.stderr}")

    def wait_listening(self) -> str:
        def find() -> str | None:
            for line in self.lines:
                if match := LISTENING.search(line):
                    return match[1]
            return None

        self.url = self.wait_for(find, "the metrics server")
        return self.url

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Map (sample name, sorted labels) to value."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def ns_key(name: str, namespace_id: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, (("namespace", namespace_id),))


def runs_key(result: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("kvsnap_runs_total", (("result", result),))


@pytest.fixture
def shop(emulator: EmulatorServer) -> str:
    entries = [SeedEntry(f"item:{i:04d}", b"v" * 100) for i in range(250)]
    return create_namespace(emulator, "shop", entries)


@pytest.fixture
def daemon_setup(
    tmp_path: Path, emulator: EmulatorServer, shop: str
) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment of a daemon that backs up `shop`."""
    config = tmp_path / "kvsnap.toml"
    # Small parts, so a run writes several of them; two tries per request,
    # so an injected failure ends a run within about a second.
    config.write_text(
        'namespaces = ["shop"]\n[backup]\nmax_attempts = 2\npart_size = "4KiB"\n'
    )
    args = [
        "--config",
        str(config),
        "--repo",
        str(tmp_path / "repo"),
        "--listen",
        "127.0.0.1:0",
    ]
    return args, cloudflare_env(emulator)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(args: list[str], env: dict[str, str]) -> DaemonProcess:
        daemon = DaemonProcess(args, env, tmp_path)
        started.append(daemon)
        daemon.wait_listening()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def part_files(repo: Path) -> list[Path]:
    return sorted((repo / "data").rglob("*")) if (repo / "data").exists() else []


# -- end to end ----------------------------------------------------------


def test_daemon_metrics_and_failed_run(
    tmp_path: Path,
    emulator: EmulatorServer,
    shop: str,
    daemon_setup: tuple[list[str], dict[str, str]],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    args, env = daemon_setup
    daemon = start_daemon([*args, "--interval", "1", "--run-now"], env)

    # A successful run fills the namespace's series.
    values = daemon.wait_for(
        lambda: (m := daemon.metrics()).get(runs_key("success"), 0) >= 1 and m,
        "a successful run",
    )
    assert values[ns_key("kvsnap_backup_keys", shop)] == 250
    assert values[ns_key("kvsnap_backup_bytes", shop)] == 250 * 100
    assert values[ns_key("kvsnap_backup_stored_bytes", shop)] > 0
    assert values[ns_key("kvsnap_backup_duration_seconds", shop)] > 0
    assert 0 <= values[ns_key("kvsnap_newest_snapshot_age_seconds", shop)] < 120
    last_success = values[ns_key("kvsnap_last_success_timestamp_seconds", shop)]
    assert abs(time.time() - last_success) < 120
    assert values[ns_key("kvsnap_backup_failures_total", shop)] == 0
    assert values[ns_key("kvsnap_status_level", shop)] in (0, 1)
    assert values[ns_key("kvsnap_snapshots", shop)] >= 1
    info = ("kvsnap_namespace_info", (("namespace", shop), ("title", "shop")))
    assert values[info] == 1
    assert values[("kvsnap_last_run_exit_code", ())] == 0
    assert values[("kvsnap_next_run_timestamp_seconds", ())] > 0
    status, body = daemon.get("/healthz")
    assert status == 200
    assert json.loads(body)["ok"] is True

    # Every read of values fails from now on: runs fail, and the daemon goes on.
    for endpoint in ("POST bulk/get", "GET values"):
        emulator.inject(endpoint, [Fault(status=500)], repeat_last=True)
    values = daemon.wait_for(
        lambda: (m := daemon.metrics()).get(runs_key("failure"), 0) >= 1 and m,
        "a failed run",
    )
    assert values[ns_key("kvsnap_backup_failures_total", shop)] >= 1
    assert values[("kvsnap_last_run_exit_code", ())] == 12
    status, body = daemon.get("/healthz")
    assert status == 503
    health = json.loads(body)
    assert health["ok"] is False
    assert "ended with exit code 12" in health["reason"]
    assert health["failed_runs"] >= 1
    status, _ = daemon.get("/livez")
    assert status == 200

    # Once the API works again, the next run succeeds and health recovers.
    emulator.clear_faults()
    before = values[runs_key("success")]
    daemon.wait_for(
        lambda: daemon.metrics()[runs_key("success")] > before, "a recovered run"
    )
    status, _ = daemon.get("/healthz")
    assert status == 200

    code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.stderr
    assert "SIGTERM: stopping; no further run will start" in daemon.stderr
    assert "daemon stopped with exit code 0" in daemon.stderr
    assert "Traceback" not in daemon.stderr
    assert daemon.process.stdout is not None
    assert daemon.process.stdout.read() == ""
    manifests = snapshots(str(tmp_path / "repo"))
    assert manifests
    assert {m.keys for m in manifests} == {250}


def test_daemon_logs_run_start_and_end(
    daemon_setup: tuple[list[str], dict[str, str]],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    args, env = daemon_setup
    daemon = start_daemon([*args, "--interval", "3600", "--run-now"], env)

    daemon.wait_for(lambda: "ended: success" in daemon.stderr, "the end of a run")
    code = daemon.stop(signal.SIGINT)

    assert code == 0, daemon.stderr
    started = re.search(r"scheduled run ([0-9a-f]+) starting", daemon.stderr)
    assert started, daemon.stderr
    run_id = started[1]
    assert f"scheduled run {run_id} ended: success, exit code 0" in daemon.stderr
    assert "SIGINT: stopping" in daemon.stderr
    assert "daemon started: runs every 3600 s" in daemon.stderr


def test_daemon_metrics_from_repository(
    tmp_path: Path,
    emulator: EmulatorServer,
    shop: str,
    daemon_setup: tuple[list[str], dict[str, str]],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    args, env = daemon_setup
    backup = run_cli(
        ["backup", "shop", "--repo", str(tmp_path / "repo")], env, cwd=tmp_path
    )
    assert backup.code == 0, backup.stderr
    daemon = start_daemon([*args, "--schedule", "0 3 * * *"], env)

    values = daemon.wait_for(
        lambda: (m := daemon.metrics()).get(ns_key("kvsnap_snapshots", shop)) and m,
        "the repository scan",
    )

    assert values[ns_key("kvsnap_backup_keys", shop)] == 250
    assert values[ns_key("kvsnap_snapshots", shop)] == 1
    assert values[ns_key("kvsnap_newest_snapshot_age_seconds", shop)] < 120
    assert values[runs_key("success")] == 0
    assert values[("kvsnap_run_in_progress", ())] == 0
    next_run = datetime.fromtimestamp(
        values[("kvsnap_next_run_timestamp_seconds", ())], UTC
    )
    assert (next_run.hour, next_run.minute, next_run.second) == (3, 0, 0)
    status, body = daemon.get("/healthz")
    assert status == 200
    assert json.loads(body)["last_run"] is None
    assert daemon.stop() == 0


def test_daemon_sigterm_waits_for_run(
    tmp_path: Path,
    emulator: EmulatorServer,
    shop: str,
    daemon_setup: tuple[list[str], dict[str, str]],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    args, env = daemon_setup
    # The second bulk get waits 3 s, then fails once; its retry succeeds.
    emulator.inject("POST bulk/get", [Fault(status=500, delay_ms=3000)], after=1)
    daemon = start_daemon([*args, "--interval", "3600", "--run-now"], env)
    repo = tmp_path / "repo"
    daemon.wait_for(lambda: part_files(repo), "the first part of the run")

    code = daemon.stop(signal.SIGTERM)

    assert code == 0, daemon.stderr
    assert "waiting up to 60 s for run" in daemon.stderr
    assert "ended: success, exit code 0" in daemon.stderr
    manifests = snapshots(str(repo))
    assert [m.keys for m in manifests] == [250]


def test_daemon_sigterm_abandons_run(
    tmp_path: Path,
    emulator: EmulatorServer,
    shop: str,
    daemon_setup: tuple[list[str], dict[str, str]],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    args, env = daemon_setup
    # Every read of values after the first bulk get hangs for 2 s and fails,
    # so the run cannot end before the grace period does.
    hang = [Fault(status=500, delay_ms=2000)]
    emulator.inject("POST bulk/get", hang, after=1, repeat_last=True)
    emulator.inject("GET values", hang, repeat_last=True)
    daemon = start_daemon(
        [*args, "--interval", "3600", "--run-now", "--stop-grace", "0.5"], env
    )
    repo = tmp_path / "repo"
    daemon.wait_for(lambda: part_files(repo), "the first part of the run")
    assert daemon.metrics()[("kvsnap_run_in_progress", ())] == 1

    code = daemon.stop(signal.SIGTERM)

    assert code == 130, daemon.stderr
    assert "abandoning run" in daemon.stderr
    assert "ended: cancelled" in daemon.stderr
    assert "daemon stopped with exit code 130" in daemon.stderr
    # Parts were written, but no manifest names them: no snapshot exists.
    assert any(path.suffix for path in part_files(repo))
    assert snapshots(str(repo)) == []
    # The cancelled run released its repository lock on the way out.
    assert (repo / "locks").is_dir()
    assert list((repo / "locks").iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--listen", "192.0.2.1:9477"], "is not a loopback address"),
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--schedule", "every day"], "invalid --schedule"),
        (["--schedule", "0 3 * * *", "--interval", "5"], "exclude each other"),
        (["--interval", "0"], "invalid --interval"),
        (["--stop-grace", "-1"], "invalid --stop-grace"),
    ],
)
def test_daemon_rejects_bad_options(
    daemon_setup: tuple[list[str], dict[str, str]],
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    args, env = daemon_setup

    result = run_cli(["daemon", *args, *extra], env, cwd=tmp_path)

    assert result.code == 10, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_daemon_requires_namespaces(tmp_path: Path, emulator: EmulatorServer) -> None:
    env = cloudflare_env(emulator)
    args = ["daemon", "--repo", str(tmp_path / "repo"), "--listen", "127.0.0.1:0"]

    result = run_cli(args, env, cwd=tmp_path)

    assert result.code == 10
    assert "error: the policy names no namespace to back up" in result.stderr


# -- the Daemon class, with an injected run function -----------------------


def run_result(run_id: str, exit_code: int = 0) -> RunResult:
    backup = BackupResult(
        namespaces=[
            NamespaceBackup(
                "ns1",
                "shop",
                ok=exit_code == 0,
                snapshot_id="s1",
                keys=7,
                value_bytes=70,
                stored_bytes=40,
                seconds=0.5,
                exit_code=exit_code,
            )
        ]
    )
    return RunResult(
        run_id=run_id,
        started="2025-01-01T00:00:00.000Z",
        exit_code=exit_code,
        backup=backup,
    )


class ScriptedRuns:
    """A run function that plays a script: an exit code, an exception or 'hang'."""

    def __init__(self, script: list[int | Exception | str]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.daemon: Daemon | None = None

    async def __call__(
        self, settings: Settings, policy: Policy, *, run_id: str
    ) -> RunResult:
        self.calls.append(run_id)
        step = self.script.pop(0) if self.script else "stop"
        if not self.script and self.daemon is not None and step != "hang":
            self.daemon.request_stop("end of script")
        if step == "hang":
            assert self.daemon is not None
            self.daemon.request_stop("SIGTERM")
            await asyncio.Event().wait()
        if isinstance(step, Exception):
            raise step
        return run_result(run_id, 0 if step == "stop" else int(step))


def make_daemon(
    runs: ScriptedRuns, sent: list[Event], repo: Path, **options: Any
) -> tuple[Daemon, Metrics, Health]:
    async def send(policy: Policy, event: Event) -> None:
        sent.append(event)

    metrics, health = Metrics(), Health()
    daemon = Daemon(
        Settings(repository=str(repo)),
        Policy(webhooks=("http://127.0.0.1:9/hook",)),
        IntervalSchedule(0.001),
        metrics=metrics,
        health=health,
        run_function=runs,
        send=send,
        run_now=True,
        **options,
    )
    runs.daemon = daemon
    return daemon, metrics, health


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_daemon_survives_exception(tmp_path: Path) -> None:
    runs = ScriptedRuns([RuntimeError("boom"), 3, 0])
    sent: list[Event] = []
    daemon, metrics, health = make_daemon(runs, sent, tmp_path / "repo")

    code = asyncio.run(daemon.serve())

    assert code == 0
    assert len(runs.calls) == 3
    assert sample(metrics, "kvsnap_runs_total", result="error") == 1
    assert sample(metrics, "kvsnap_runs_total", result="failure") == 1
    assert sample(metrics, "kvsnap_runs_total", result="success") == 1
    assert sample(metrics, "kvsnap_backup_failures_total", namespace="ns1") == 1
    assert sample(metrics, "kvsnap_backup_keys", namespace="ns1") == 7
    assert sample(metrics, "kvsnap_run_in_progress") == 0
    # Only the exception is notified: run_policy notifies its own failures.
    assert [(e.type, e.run) for e in sent] == [("failure", runs.calls[0])]
    assert sent[0].summary == f"kvsnap run {runs.calls[0]} failed: RuntimeError: boom"
    healthy, body = health.check()
    assert body["scheduler"] == "stopped"
    assert body["failed_runs"] == 2
    assert not healthy


def test_daemon_cancels_after_grace(tmp_path: Path) -> None:
    runs = ScriptedRuns(["hang"])
    daemon, metrics, health = make_daemon(
        runs, [], tmp_path / "repo", stop_grace_seconds=0.01
    )

    code = asyncio.run(daemon.serve())

    assert code == 130
    assert daemon.abandoned
    assert sample(metrics, "kvsnap_runs_total", result="cancelled") == 1
    assert sample(metrics, "kvsnap_run_in_progress") == 0
    _, body = health.check()
    assert body["last_run"]["result"] == "cancelled"
    assert body["failed_runs"] == 0


def test_daemon_stops_before_first_run(tmp_path: Path) -> None:
    runs = ScriptedRuns([])
    daemon, metrics, _ = make_daemon(runs, [], tmp_path / "repo")
    daemon.run_now = False
    daemon.schedule = IntervalSchedule(3600)

    async def serve_then_stop() -> int:
        task = asyncio.create_task(daemon.serve())
        await asyncio.sleep(0)
        daemon.request_stop("SIGTERM")
        return await task

    assert asyncio.run(serve_then_stop()) == 0
    assert runs.calls == []
    assert sample(metrics, "kvsnap_next_run_timestamp_seconds") == 0


def test_next_due_coalesces_missed_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, _, _ = make_daemon(ScriptedRuns([]), [], tmp_path / "repo")
    daemon.schedule = CronSchedule("0 * * * *")
    due = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)

    on_time = daemon._next_due(due, due + timedelta(minutes=20))
    late = due + timedelta(hours=3, minutes=20)
    with caplog.at_level("WARNING", logger="kvsnap.daemon"):
        overran = daemon._next_due(due, late)

    assert on_time == datetime(2025, 1, 1, 4, 0, tzinfo=UTC)
    assert overran == late
    assert "after 3 scheduled time(s) had passed; running once now" in caplog.text


def test_cron_schedule_in_utc() -> None:
    schedule = CronSchedule("30 2 * * *")
    moment = datetime(2025, 6, 1, 2, 30, tzinfo=UTC)

    assert schedule.next_after(moment) == datetime(2025, 6, 2, 2, 30, tzinfo=UTC)
    assert schedule.next_after(moment - timedelta(seconds=1)) == moment


@pytest.mark.parametrize(
    ("exit_code", "label"),
    [(0, "success"), (8, "anomaly"), (3, "failure"), (12, "failure")],
)
def test_result_label(exit_code: int, label: str) -> None:
    assert result_label(exit_code) == label


# -- listen address, health ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "allow_remote", "expected"),
    [
        ("127.0.0.1:9477", False, ("127.0.0.1", 9477)),
        ("localhost:0", False, ("127.0.0.1", 0)),
        (":9000", False, ("127.0.0.1", 9000)),
        ("[::1]:9477", False, ("::1", 9477)),
        ("127.0.0.2:80", False, ("127.0.0.2", 80)),
        ("0.0.0.0:9477", True, ("0.0.0.0", 9477)),
        ("[::]:9477", True, ("::", 9477)),
    ],
)
def test_parse_listen_accepts(
    text: str, allow_remote: bool, expected: tuple[str, int]
) -> None:
    assert parse_listen(text, allow_remote=allow_remote) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:9477", "not a loopback address"),
        ("[::]:9477", "not a loopback address"),
        ("10.0.0.1:9477", "not a loopback address"),
        ("example.com:9477", "expected an IP address or localhost"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:99999", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected HOST:PORT"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_listen(text)


def test_health_stale_scheduler() -> None:
    health = Health(stale_seconds=0.0)
    health.set_state("running")
    time.sleep(0.01)

    healthy, body = health.check(liveness=True)

    assert not healthy
    assert body["reason"].startswith("the scheduler has not run for")


def test_metrics_server_endpoints() -> None:
    metrics, health = Metrics(), Health()
    health.set_state("running")
    server = MetricsServer("127.0.0.1", 0, metrics, health).start()
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
            content_type = response.headers["Content-Type"]
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
            health_body = json.loads(response.read())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "/other", timeout=10)
    finally:
        server.stop()

    assert content_type.startswith("text/plain")
    assert 'kvsnap_runs_total{result="success"} 0.0' in text
    assert "kvsnap_run_in_progress 0.0" in text
    assert health_body["ok"] is True
    assert health_body["scheduler"] == "running"
    assert missing.value.code == 404


def test_metrics_server_port_in_use() -> None:
    metrics, health = Metrics(), Health()
    first = MetricsServer("127.0.0.1", 0, metrics, health)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with pytest.raises(
            ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"
        ):
            MetricsServer("127.0.0.1", port, metrics, health)
    finally:
        first.stop()


def test_metrics_registry_is_private() -> None:
    from prometheus_client import REGISTRY

    Metrics()
    Metrics()  # a second instance would clash in a shared registry

    assert REGISTRY.get_sample_value("kvsnap_run_in_progress") is None
