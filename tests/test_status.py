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


def only_part(tmp_path: Path) -> Path:
    """Return the file of the one part of the newest snapshot."""
    [info] = snapshots(str(tmp_path / "repo"))[-1].parts
    return tmp_path / "repo" / info.path


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
    assert row["snapshots"] == 1
    assert row["stored_bytes"] > 0
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


def test_failed_newest_verify_breaches(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    snapshot_id = backed_up(emulator, config, env)
    part = only_part(tmp_path)
    part.write_bytes(part.read_bytes()[:-3])
    assert cli(config, env, "verify").code == 4

    code, document = status(config, env)

    assert code == 2
    assert f"newest snapshot {snapshot_id} failed verification" in reasons(document)
    assert "every backup snapshot failed verification" in reasons(document)


def test_failed_full_read_breaches(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    snapshot_id = backed_up(emulator, config, env)
    part = only_part(tmp_path)
    data = bytearray(part.read_bytes())
    data[-5] ^= 0xFF  # same size, so only a full read finds it
    part.write_bytes(bytes(data))
    assert cli(config, env, "verify", "--read-data").code == 4
    assert cli(config, env, "verify").code == 0  # sizes still match

    code, document = status(config, env)

    assert code == 2
    assert f"newest snapshot {snapshot_id} failed verification" in reasons(document)
    assert document["namespaces"][0]["last_verify_ok"] is False


def test_snapshot_dated_in_the_future_is_a_breach(
    emulator: EmulatorServer, tmp_path: Path, env: dict[str, str]
) -> None:
    config = configure(tmp_path)
    create_namespace(emulator, "sessions", [SeedEntry("k", b"v")])
    export = tmp_path / "export.json"
    export.write_text('[{"key": "k", "value": "v"}]')
    imported = cli(
        config, env, "import", str(export), "--namespace", "sessions",
        "--time", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    assert imported.code == 0, imported.stderr
    assert cli(config, env, "backup").code == 0

    code, document = status(config, env)

    # The import is not a backup, so the backup just made stays the newest.
    assert code == 1, reasons(document)
    manifest = next(
        m for m in snapshots(str(tmp_path / "repo")) if "imported" in m.tags
    )
    # Untagged, the import reads as a backup from a host whose clock is ahead.
    path = tmp_path / "repo" / "snapshots"
    [name] = [p for p in path.rglob("*.json") if manifest.id in p.name]
    text = name.read_text().replace('"imported"', '"other"')
    name.write_text(text)

    code, document = status(config, env)

    assert code == 2
    assert any("dated in the future" in r for r in reasons(document))


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


def test_missing_repository_is_a_breach(tmp_path: Path, env: dict[str, str]) -> None:
    result = cli(configure(tmp_path), env, "status")

    assert result.code == 2
    assert "error: no kvsnap repository" in result.stderr
    assert "status: breach" in result.stdout
    document = json.loads(cli(configure(tmp_path), env, "status", "--json").stdout)
    assert document["level"] == "breach"
    assert document["exit_code"] == 2
