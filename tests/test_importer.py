"""End-to-end `kvsnap import` runs against the emulator, through the CLI."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudflare
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry
from tests.kvtools import (
    CliResult,
    cloudflare_env,
    create_namespace,
    records_by_key,
    run_cli,
    sdk,
    snapshots,
)

# A namespace id that does not exist in the emulator, so restores create one.
OLD_NAMESPACE_ID = "0f2ac74b498b48028cb68387c421e279"
BINARY = bytes.fromhex("89504e470d0a1a0aff00fe")
NOW = int(time.time())
NOW_TEXT = datetime.fromtimestamp(NOW, UTC).isoformat()
FAR_EXPIRATION = NOW + 86_400


@pytest.fixture
def repo(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


def run_import(server: EmulatorServer, repo: str, path: Path, *args: str) -> CliResult:
    return run_cli(["import", str(path), "--repo", repo, *args], cloudflare_env(server))


def import_as_old_namespace(
    server: EmulatorServer, repo: str, path: Path, *args: str
) -> CliResult:
    namespace = ["--namespace", f"id:{OLD_NAMESPACE_ID}", "--title", "imported"]
    return run_import(server, repo, path, *namespace, *args)


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def value_of(server: EmulatorServer, namespace_id: str, key: str) -> bytes | None:
    try:
        response = sdk(server).kv.namespaces.values.get(
            key, account_id=server.account_id, namespace_id=namespace_id
        )
    except cloudflare.NotFoundError:
        return None
    return response.read()


def restore_into_new_namespace(
    server: EmulatorServer, repo: str, snapshot_id: str
) -> str:
    """Restore a snapshot with --create and return the new namespace's id."""
    command = ["restore", snapshot_id, "--repo", repo, "--create", "--yes", "--json"]
    result = run_cli(command, cloudflare_env(server))
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mismatched"] == []
    return str(summary["namespace_id"])


def wrangler_entries() -> list[dict[str, Any]]:
    return [
        {"key": "bin/logo", "value": base64.b64encode(BINARY).decode(), "base64": True},
        {"key": "cfg/app", "value": '{"beta": true}', "metadata": {"v": [1, 2]}},
        {"key": "session/1", "value": "alice", "expiration": FAR_EXPIRATION},
        {"key": "session/2", "value": "bob", "expiration_ttl": 3600},
        {"key": "text/é", "value": "naïve ✓"},
    ]


EXPECTED = {
    "bin/logo": BINARY,
    "cfg/app": b'{"beta": true}',
    "session/1": b"alice",
    "session/2": b"bob",
    "text/\u00e9": "naïve ✓".encode(),
}


def check_restored(server: EmulatorServer, repo: str, snapshot_id: str) -> str:
    """Restore into a new namespace, compare every value, diff with live."""
    namespace_id = restore_into_new_namespace(server, repo, snapshot_id)
    for key, expected in EXPECTED.items():
        assert value_of(server, namespace_id, key) == expected, key
    diff = run_cli(
        ["diff", snapshot_id, f"live:{namespace_id}", "--repo", repo],
        cloudflare_env(server),
    )
    assert diff.code == 0, diff.stdout + diff.stderr
    return namespace_id


@pytest.mark.parametrize("shape", ["array", "lines"])
def test_import_wrangler_shapes_restore_exact(
    emulator: EmulatorServer, repo: str, tmp_path: Path, shape: str
) -> None:
    path = tmp_path / "kv-backup-2024-05-01.json"
    if shape == "array":
        write_json(path, wrangler_entries())
    else:
        lines = [json.dumps(entry) for entry in wrangler_entries()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = import_as_old_namespace(emulator, repo, path, "--time", NOW_TEXT, "--json")

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == shape
    assert summary["format_detected"] is True
    assert summary["records"] == 5
    assert summary["ttl_converted"] == 1
    assert summary["invalid"] == []
    [manifest] = snapshots(repo)
    assert manifest.id == summary["snapshot"]
    assert manifest.namespace_id == OLD_NAMESPACE_ID
    assert manifest.namespace_title == "imported"
    assert manifest.account_id == emulator.account_id
    assert manifest.tags == ["imported", "source:kv-backup-2024-05-01.json"]
    assert manifest.read_started == manifest.read_finished
    records = records_by_key(repo, manifest)
    assert records["session/2"].expiration == NOW + 3600
    assert records["session/1"].expiration == FAR_EXPIRATION
    assert records["bin/logo"].base64 is True
    assert records["cfg/app"].metadata == {"v": [1, 2]}

    namespace_id = check_restored(emulator, repo, manifest.id)
    metadata = sdk(emulator).kv.namespaces.metadata.get(
        "cfg/app", account_id=emulator.account_id, namespace_id=namespace_id
    )
    assert metadata == {"v": [1, 2]}


def test_import_plain_object_restores_exact(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    document = {"a": "1", "b/é": "two", "empty": ""}
    path = write_json(tmp_path / "plain.json", document)

    result = import_as_old_namespace(emulator, repo, path, "--json")

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "object"
    assert summary["records"] == 3
    namespace_id = restore_into_new_namespace(emulator, repo, summary["snapshot"])
    for key, value in document.items():
        assert value_of(emulator, namespace_id, key) == value.encode(), key


def test_import_time_defaults_to_mtime(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "old.json", [{"key": "k", "value": "v"}])
    os.utime(path, (1_714_528_800, 1_714_528_800))  # 2024-05-01T02:00:00Z

    result = import_as_old_namespace(emulator, repo, path)

    assert result.code == 0, result.stderr
    [manifest] = snapshots(repo)
    assert manifest.read_started == "2024-05-01T02:00:00.000Z"
    assert manifest.id in result.stdout


def test_import_invalid_records_write_nothing(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    long_key = "k" * 513
    entries = [
        {"key": "ok", "value": "fine"},
        {"key": long_key, "value": "x"},
        {"key": "big", "value": "a" * 26_214_401},
        {"key": "badb64", "value": "not base64!", "base64": True},
        {"key": "meta", "value": "x", "metadata": {"pad": "y" * 1100}},
    ]
    path = write_json(tmp_path / "bad.json", entries)

    result = import_as_old_namespace(emulator, repo, path, "--json")

    assert result.code == 4
    for key in (long_key, "big", "badb64", "meta"):
        assert f"invalid {key!r}" in result.stderr, key
    assert "'ok'" not in result.stderr
    assert "no snapshot was written" in result.stderr
    assert "--skip-invalid" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is False
    assert summary["snapshot"] is None
    assert [entry["key"] for entry in summary["invalid"]] == [
        long_key,
        "big",
        "badb64",
        "meta",
    ]
    assert "26,214,401 bytes" in summary["invalid"][1]["reason"]
    assert not Path(repo).exists()


def test_import_skip_invalid_imports_rest(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    entries = [
        {"key": "ok", "value": "fine"},
        {"key": "badb64", "value": "@@@", "base64": True},
        {"key": "num", "value": 5},
        {"key": "late", "value": "x", "expiration": "tomorrow"},
    ]
    path = write_json(tmp_path / "bad.json", entries)

    result = import_as_old_namespace(emulator, repo, path, "--skip-invalid")

    assert result.code == 0, result.stderr
    for key in ("badb64", "num", "late"):
        assert f"skipped {key!r}" in result.stderr, key
    assert "3 invalid entries skipped" in result.stdout
    [manifest] = snapshots(repo)
    assert list(records_by_key(repo, manifest)) == ["ok"]


def test_import_duplicate_key_rejected(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    entries = [
        {"key": "a", "value": "1"},
        {"key": "b", "value": "2"},
        {"key": "a", "value": "3"},
    ]
    path = write_json(tmp_path / "dup.json", entries)

    result = import_as_old_namespace(emulator, repo, path)

    assert result.code == 4
    assert "invalid 'a' (entry 1): the key appears more than once" in result.stderr
    assert "entry 1, entry 3" in result.stderr
    assert "'b'" not in result.stderr
    assert not Path(repo).exists()


def test_import_duplicate_key_in_object(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"a": "1", "a": "2"}', encoding="utf-8")

    result = import_as_old_namespace(emulator, repo, path)

    assert result.code == 4
    assert "the key appears more than once" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello\nworld\n", "none of the accepted shapes"),
        ("42", "is a JSON number, not an array or an object"),
        ("", "is empty"),
    ],
)
def test_import_unknown_shape_error(
    emulator: EmulatorServer, repo: str, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(content, encoding="utf-8")

    result = import_as_old_namespace(emulator, repo, path)

    assert result.code == 10
    assert message in result.stderr
    assert "wrangler kv bulk put array" in result.stderr
    assert not Path(repo).exists()


def test_import_forced_format_mismatch(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "plain.json", {"a": "1"})

    result = import_as_old_namespace(emulator, repo, path, "--format", "array")

    assert result.code == 10
    assert "not a wrangler kv bulk put array" in result.stderr


def test_import_title_looked_up(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    namespace_id = create_namespace(emulator, "users")
    path = write_json(tmp_path / "users.json", [{"key": "u/1", "value": "x"}])

    result = run_import(emulator, repo, path, "--namespace", "users")

    assert result.code == 0, result.stderr
    [manifest] = snapshots(repo)
    assert manifest.namespace_id == namespace_id
    assert manifest.namespace_title == "users"


def test_import_diff_with_backup_empty(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    seeded = [
        SeedEntry("bin/logo", BINARY),
        SeedEntry("cfg/app", b'{"beta": true}', metadata={"v": [1, 2]}),
        SeedEntry("session/1", b"alice", expiration=FAR_EXPIRATION),
        SeedEntry("text/\u00e9", "naïve ✓".encode()),
    ]
    namespace_id = create_namespace(emulator, "app", seeded)
    backup = run_cli(["backup", "app", "--repo", repo], cloudflare_env(emulator))
    assert backup.code == 0, backup.stderr
    [backed_up] = snapshots(repo)
    entries = [entry for entry in wrangler_entries() if entry["key"] != "session/2"]
    path = write_json(tmp_path / "kv-backup-2024-05-01.json", entries)

    result = run_import(
        emulator, repo, path, "--namespace", f"id:{namespace_id}", "--json"
    )

    assert result.code == 0, result.stderr
    imported = json.loads(result.stdout)["snapshot"]
    diff = run_cli(
        ["diff", imported, backed_up.id, "--repo", repo], cloudflare_env(emulator)
    )
    assert diff.code == 0, diff.stdout + diff.stderr
    assert diff.stdout == "identical: 4 keys\n"


def test_import_short_namespace_id_rejected(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "plain.json", {"a": "1"})

    result = run_import(emulator, repo, path, "--namespace", "id:zz", "--title", "q")

    assert result.code == 10
    assert "invalid namespace id 'zz'" in result.stderr
    assert not Path(repo).exists()
