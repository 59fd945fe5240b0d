"""`kvsnap run`: one pass of the policy against the emulator, through the CLI."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kvsnap.emulator import EmulatorServer
from kvsnap.format import encode_json
from kvsnap.lock import LockInfo, lock_path, process_scope
from kvsnap.seed import SeedEntry
from tests.kvtools import cloudflare_env, create_namespace, run_cli, sdk, snapshots
from tests.webhooks import TOKEN, Receiver


def entries(count: int, version: str = "v1") -> list[SeedEntry]:
    return [SeedEntry(f"user/{i:04d}", f"{version} {i}".encode()) for i in range(count)]


def write_config(tmp_path: Path, namespaces: list[str], extra: str = "") -> Path:
    path = tmp_path / "kvsnap.toml"
    names = ", ".join(json.dumps(name) for name in namespaces)
    path.write_text(
        f'repository = "{tmp_path / "repo"}"\nnamespaces = [{names}]\n{extra}'
    )
    return path


def run(server: EmulatorServer, config: Path, *args: str, **env: str):
    return run_cli(
        ["run", "--config", str(config), *args], cloudflare_env(server, **env)
    )


def test_run_backs_up_verifies_and_grades(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(120))
    create_namespace(emulator, "flags", entries(5))
    config = write_config(tmp_path, ["sessions", "flags"])

    result = run(emulator, config, "--json")

    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert [ns["keys"] for ns in document["backup"]["namespaces"]] == [120, 5]
    quick = [v for v in document["verified"] if not v["read_data"]]
    assert len(quick) == 2 and all(v["ok"] for v in quick)
    # With no full read ever done, the rotating share reads at least one.
    assert any(v["read_data"] for v in document["verified"])
    assert document["anomalies"] == []
    assert document["prune"]["removed"] == []
    levels = {
        ns["namespace_title"]: ns["level"] for ns in document["status"]["namespaces"]
    }
    # No drill has run yet, which status reports as a warning.
    assert levels == {"sessions": "warning", "flags": "warning"}
    assert "scheduled" in snapshots(str(tmp_path / "repo"))[0].tags


def test_run_twice_adds_one_snapshot_per_namespace(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(30))
    config = write_config(tmp_path, ["sessions"])

    assert run(emulator, config).code == 0
    second = run(emulator, config)

    assert second.code == 0, second.stderr
    assert len(snapshots(str(tmp_path / "repo"))) == 2
    assert "backup   sessions: snapshot" in second.stdout
    assert "finished: exit code 0" in second.stdout


def test_run_logs_json_lines_with_the_run_id(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(10))
    config = write_config(tmp_path, ["sessions"])

    result = run_cli(
        ["--log-format", "json", "run", "--config", str(config), "--json"],
        cloudflare_env(emulator),
    )

    assert result.code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines[0]["message"] == "run started"
    assert all(line["run"] == run_id for line in lines)
    backed_up = [line for line in lines if line["message"].startswith("backed up")]
    assert backed_up and backed_up[0]["namespace"]
    assert backed_up[0]["keys"] == 10
    assert backed_up[0]["bytes"] > 0
    assert lines[-1]["duration"] >= 0
    assert emulator.token not in result.stderr


def test_anomaly_holds_the_previous_snapshot_and_alerts(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    namespace_id = create_namespace(emulator, "sessions", entries(100))
    config = write_config(tmp_path, ["sessions"])
    env = {"KVSNAP_WEBHOOK_URL": receiver.url()}
    assert run(emulator, config, **env).code == 0
    first = snapshots(str(tmp_path / "repo"))[0]
    # A bad deploy overwrites 30 of the 100 keys: above the 20% default.
    client = sdk(emulator)
    client.kv.namespaces.bulk_update(
        namespace_id,
        account_id=emulator.account_id,
        body=[{"key": f"user/{i:04d}", "value": "garbage"} for i in range(30)],
    )

    result = run(emulator, config, "--json", **env)

    assert result.code == 8, result.stderr
    document = json.loads(result.stdout)
    [anomaly] = document["anomalies"]
    assert anomaly["previous_id"] == first.id
    assert anomaly["changed"] == 30
    held = run_cli(
        ["hold", "list", "--json", "--repo", str(tmp_path / "repo")],
        cloudflare_env(emulator),
    )
    assert first.id in held.stdout
    [event] = receiver.bodies()
    assert event["type"] == "anomaly"
    assert event["run"] == document["run_id"]
    assert TOKEN not in result.stderr + result.stdout


def test_failure_is_sent_to_the_webhook(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, ["no-such-namespace"])

    result = run(emulator, config, KVSNAP_WEBHOOK_URL=receiver.url())

    assert result.code == 10, result.stderr
    assert "no-such-namespace" in result.stderr + result.stdout
    [event] = receiver.bodies()
    assert event["type"] == "failure"
    assert "no-such-namespace" in event["summary"]
    assert TOKEN not in result.stderr + result.stdout
    assert emulator.token not in json.dumps(event)


def test_missing_namespace_fails_alone(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    create_namespace(emulator, "sessions", entries(3))
    create_namespace(emulator, "flags", entries(2))
    # "doomed" was deleted from the account; the others must still be saved.
    config = write_config(tmp_path, ["sessions", "doomed", "flags"])

    result = run(emulator, config, "--json", KVSNAP_WEBHOOK_URL=receiver.url())

    assert result.code == 3, result.stderr
    outcomes = json.loads(result.stdout)["backup"]["namespaces"]
    assert [(ns["namespace_title"], ns["ok"]) for ns in outcomes] == [
        ("sessions", True),
        ("flags", True),
        ("doomed", False),
    ]
    assert sorted(m.namespace_title for m in snapshots(str(tmp_path / "repo"))) == [
        "flags",
        "sessions",
    ]
    [event] = receiver.bodies()
    assert "backup of doomed" in event["summary"]


def test_status_grades_only_policy_namespaces(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(3))
    create_namespace(emulator, "retired", entries(3))
    assert run(emulator, write_config(tmp_path, ["sessions", "retired"])).code == 0

    result = run(emulator, write_config(tmp_path, ["sessions"]), "--json")

    assert result.code == 0, result.stderr
    graded = json.loads(result.stdout)["status"]["namespaces"]
    assert [ns["namespace_title"] for ns in graded] == ["sessions"]


def test_dead_local_lock_not_blocking_prune(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(3))
    config = write_config(tmp_path, ["sessions"])
    assert run(emulator, config).code == 0
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    now = "2026-01-01T00:00:00.000Z"
    left = LockInfo(
        id="fedcba9876543210", exclusive=False, hostname=socket.gethostname(),
        pid=killed.pid, command="kvsnap run", created=now, refreshed=now,
        scope=process_scope(),
    )  # fmt: skip
    (tmp_path / "repo" / lock_path(left.id)).write_bytes(encode_json(left))

    result = run(emulator, config, "--json")

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["prune"] is not None
    assert list((tmp_path / "repo" / "locks").iterdir()) == []


def test_success_is_sent_only_when_asked(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    create_namespace(emulator, "sessions", entries(3))
    quiet = write_config(tmp_path, ["sessions"])
    assert run(emulator, quiet, KVSNAP_WEBHOOK_URL=receiver.url()).code == 0
    assert receiver.bodies() == []

    loud = write_config(tmp_path, ["sessions"], "[notify]\non_success = true\n")
    assert run(emulator, loud, KVSNAP_WEBHOOK_URL=receiver.url()).code == 0
    [event] = receiver.bodies()
    assert event["type"] == "success"
    assert "1 namespace(s), 3 keys" in event["summary"]


def test_automatic_drill_runs_when_due(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "sessions", entries(40))
    config = write_config(
        tmp_path, ["sessions"], "[drill]\nautomatic = true\nsample = 10\n"
    )

    first = run(emulator, config, "--json")

    assert first.code == 0, first.stderr
    document = json.loads(first.stdout)
    [drill] = document["drills"]
    assert drill["ok"] is True
    assert drill["stored"].startswith("reports/")
    # With a drill on record, every target is met.
    assert document["status"]["level"] == "ok"
    second = run(emulator, config, "--json")
    assert second.code == 0, second.stderr
    assert json.loads(second.stdout)["drills"] == []
    titles = [
        ns.title
        for ns in sdk(emulator).kv.namespaces.list(account_id=emulator.account_id)
    ]
    assert titles == ["sessions"]


def test_drill_that_cannot_start_fails_the_run(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    create_namespace(emulator, "sessions", entries(10))
    # The configured sandbox contains keys, so the drill must not write into it.
    create_namespace(emulator, "scratch", entries(1))
    config = write_config(
        tmp_path, ["sessions"], '[drill]\nautomatic = true\nsandbox = "scratch"\n'
    )

    result = run(emulator, config, "--json", KVSNAP_WEBHOOK_URL=receiver.url())

    assert result.code == 10, result.stderr
    [drill] = json.loads(result.stdout)["drills"]
    assert drill["started"] is False
    assert drill["stored"] is None
    assert "could not start" in result.stderr
    [event] = receiver.bodies()
    assert event["type"] == "failure"
    assert "restore drill of sessions could not start" in event["summary"]


def test_stale_lock_blocking_prune_fails_the_run(
    emulator: EmulatorServer, tmp_path: Path, receiver: Receiver
) -> None:
    create_namespace(emulator, "sessions", entries(5))
    config = write_config(tmp_path, ["sessions"])
    assert run(emulator, config).code == 0
    # A CI runner killed mid-backup: its host is gone, so the lock never clears.
    stale = LockInfo(
        id="0123456789abcdef", exclusive=False, hostname="ci-runner-gone", pid=7,
        command="kvsnap run", created="2026-01-01T00:00:00.000Z",
        refreshed="2026-01-01T00:00:00.000Z",
    )  # fmt: skip
    (tmp_path / "repo" / lock_path(stale.id)).write_bytes(encode_json(stale))

    result = run(emulator, config, "--json", KVSNAP_WEBHOOK_URL=receiver.url())

    assert result.code == 23, result.stderr
    document = json.loads(result.stdout)
    assert document["backup"]["namespaces"][0]["ok"] is True
    assert "ci-runner-gone" in document["prune_blocked"]
    assert "kvsnap unlock" in result.stderr
    [event] = receiver.bodies()
    assert event["type"] == "failure"
    assert "stale lock" in event["summary"]


def test_interrupted_run_alerts_and_exits_130(
    tmp_path: Path, receiver: Receiver
) -> None:
    with EmulatorServer(tmp_path / "slow", latency_ms=(200, 200)) as slow:
        create_namespace(slow, "sessions", entries(3000))
        config = write_config(tmp_path, ["sessions"])
        env = cloudflare_env(slow, KVSNAP_WEBHOOK_URL=receiver.url())
        child = subprocess.Popen(
            [sys.executable, "-m", "kvsnap", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            # Wait until the backup is reading, then stop it as a timer would.
            while slow.stats()["requests"].get("POST bulk/get", 0) < 2:
                assert time.monotonic() < deadline, "the run never started reading"
                time.sleep(0.1)
            child.send_signal(signal.SIGTERM)
            _out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert child.returncode == 130, err
    assert "run interrupted" in err
    [event] = receiver.bodies()
    assert event["type"] == "failure"
    assert "interrupted" in event["summary"]
    assert list((tmp_path / "repo").glob("snapshots/**/*.json")) == []


def test_run_without_namespaces_says_how_to_name_them(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    config = tmp_path / "kvsnap.toml"
    config.write_text(f'repository = "{tmp_path / "repo"}"\n')

    result = run(emulator, config)

    assert result.code == 10
    assert "names no namespace" in result.stderr
    assert "all = true" in result.stderr
