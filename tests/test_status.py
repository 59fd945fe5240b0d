"""`kvsnap status`: each namespace graded against the policy, with exit codes 0/1/2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry
from tests.kvtools import (
    CliResult,
    cloudflare_env,
    create_namespace,
    run_cli,
    snapshots,
)


@pytest.fixture
def env(emulator: EmulatorServer) -> dict[str, str]:
    return cloudflare_env(emulator)


def configure(tmp_path: Path, policy: str = "") -> Path:
    path = tmp_path / "kvsnap.toml"
    path.write_text(
        f'repository = "{tmp_path / "repo"}"\nnamespaces = ["sessions"]\n{policy}'
    )
    return path


def cli(config: Path, env: dict[str, str], *args: str) -> CliResult:
    """Run a command with the test's settings file, which every command reads."""
    return run_cli(list(args), env | {"KVSNAP_CONFIG": str(config)})


def status(config: Path, env: dict[str, str]) -> tuple[int, dict]:
    result = cli(config, env, "status", "--json")
    return result.code, json.loads(result.stdout)


def backed_up(emulator: EmulatorServer, config: Path, env: dict[str, str]) -> str:
    entries = [SeedEntry(f"k{i}", b"v") for i in range(20)]
    create_namespace(emulator, "sessions", entries)
    assert cli(config, env, "backup").code == 0
    assert cli(config, env, "verify").code == 0
    return snapshots(str(config.parent / "repo"))[-1].id


def reasons(document: dict) -> list[str]:
    return [reason for ns in document["namespaces"] for reason in ns["reasons"]]


def test_namespace_without_snapshot_breaches(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    assert run_cli(["init", "--repo", str(tmp_path / "repo")], env).code == 0

    code, document = status(config, env)

    assert code == 2
    assert document["level"] == "breach"
    [row] = document["namespaces"]
    assert row["namespace_id"] == "sessions"
    assert row["reasons"] == ["no snapshot in the repository"]


def test_fresh_verified_snapshot_without_a_drill_warns(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    snapshot_id = backed_up(emulator, config, env)

    code, document = status(config, env)

    assert code == 1
    [row] = document["namespaces"]
    assert row["level"] == "warning"
    assert row["newest_snapshot"] == snapshot_id
    assert row["newest_usable"] == snapshot_id
    assert row["last_verify_ok"] is True
    assert 0 <= row["rpo_age"] < 120
    assert row["snapshots"] == 1 and row["stored_bytes"] > 0
    assert reasons(document) == ["no restore drill on record (kvsnap drill)"]


def test_drill_on_record_makes_status_ok(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    backed_up(emulator, config, env)
    drill = cli(
        config, env, "drill", "sessions", "--sample", "5", "--output", str(tmp_path)
    )
    assert drill.code == 0, drill.stderr

    code, document = status(config, env)

    assert code == 0, reasons(document)
    [row] = document["namespaces"]
    assert row["last_drill_ok"] is True
    assert row["last_drill_rto_ok"] is True
    text = cli(config, env, "status")
    assert text.code == 0
    assert "status: ok" in text.stdout


def test_snapshot_older_than_the_rpo_is_a_breach(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path, '[policy]\nrpo = "1s"\n')
    backed_up(emulator, config, env)
    time.sleep(1.5)

    code, document = status(config, env)

    assert code == 2
    assert any("over the RPO target of 1s" in r for r in reasons(document))
    text = cli(config, env, "status")
    assert text.code == 2
    assert "breach: sessions: newest usable snapshot is" in text.stdout


def test_failed_verify_of_the_newest_snapshot_is_a_breach(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    snapshot_id = backed_up(emulator, config, env)
    [info] = snapshots(str(tmp_path / "repo"))[-1].parts
    part = tmp_path / "repo" / info.path
    part.write_bytes(part.read_bytes()[:-3])
    assert cli(config, env, "verify").code == 4

    code, document = status(config, env)

    assert code == 2
    assert f"newest snapshot {snapshot_id} failed verification" in reasons(document)
    assert "every backup snapshot failed verification" in reasons(document)


def test_held_snapshot_warns(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    snapshot_id = backed_up(emulator, config, env)
    held = cli(config, env, "hold", "add", snapshot_id, "--reason", "legal hold")
    assert held.code == 0, held.stderr

    code, document = status(config, env)

    assert code == 1
    assert document["namespaces"][0]["held"] == [snapshot_id]
    assert any("1 snapshot(s) held" in r for r in reasons(document))


def test_missing_repository_keeps_its_own_exit_code(
    tmp_path: Path, env: dict[str, str]
) -> None:
    result = cli(configure(tmp_path), env, "status")

    assert result.code == 21
    assert "error:" in result.stderr
