"""Tests of kvsnap.history and the `kvsnap log` command."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.errors import ConfigError, SnapshotNotFound
from kvsnap.format import Manifest, Record
from kvsnap.history import find_part, key_history
from kvsnap.repository import Repository
from kvsnap.seed import SeedEntry, write_entries
from tests.kvtools import cloudflare_env, create_namespace, run_cli, sdk
from tests.test_repository import (
    OTHER_NAMESPACE,
    STARTED,
    make_records,
    run,
    write_snapshot,
)

KEY = "user/42"


def three_snapshots(repo: Repository) -> list[Manifest]:
    """Snapshots where KEY is present, then changed, then gone."""
    before = make_records(5, "a")
    after = make_records(5, "z")
    versions = [
        Record(KEY, "alice", metadata={"role": "admin"}),
        Record(KEY, "mallory", metadata={"role": "admin"}),
        None,
    ]
    manifests = []
    for day, version in enumerate(versions):
        middle = [version] if version else [Record("user/41", "x")]
        manifests.append(
            run(
                write_snapshot(
                    repo,
                    [before, middle, after],
                    started=STARTED + timedelta(days=day),
                )
            )
        )
    return manifests


def test_find_part_by_key_range(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    parts = [make_records(3, "b"), make_records(3, "d")]
    manifest = run(write_snapshot(repo, parts))
    assert find_part(manifest, "b-00001") == manifest.parts[0]
    assert find_part(manifest, "d-00002") == manifest.parts[1]
    assert find_part(manifest, "c") is None  # between the two ranges
    assert find_part(manifest, "a") is None
    assert find_part(manifest, "e") is None


def test_history_changed_then_absent(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifests = three_snapshots(repo)
    history = run(key_history(repo, "production-config", KEY))
    first, second, third = history.entries
    assert [e.snapshot_id for e in history.entries] == [m.id for m in manifests]
    assert first.present is True
    assert first.change is None
    assert first.sha256 == hashlib.sha256(b"alice").hexdigest()
    assert first.size == 5
    assert first.metadata == {"role": "admin"}
    assert second.change == "changed"
    assert second.fields == ["value"]
    assert second.time == manifests[1].read_started
    assert third.present is False
    assert third.change == "removed"
    # The third snapshot has no part whose range contains the key.
    assert history.parts_read == 2


def test_history_reads_only_the_matching_part(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifests = three_snapshots(repo)
    for manifest in manifests:
        for part in (manifest.parts[0], manifest.parts[2]):
            run(repo.storage.put(part.path, b"damaged"))
    history = run(key_history(repo, manifests[0].namespace_id, KEY))
    assert [e.present for e in history.entries] == [True, True, False]


def test_history_unknown_namespace(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    three_snapshots(repo)
    with pytest.raises(SnapshotNotFound, match="no snapshot of namespace 'nope'"):
        run(key_history(repo, "nope", KEY))


def test_history_title_of_two_namespaces(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    three_snapshots(repo)
    run(write_snapshot(repo, [make_records(1)], namespace_id=OTHER_NAMESPACE))
    with pytest.raises(ConfigError, match="ambiguous"):
        run(key_history(repo, "production-config", KEY))


# End to end: three backups through the CLI.

LOGGED_KEY = "session:\u00e9t\u00e9\n42"


def test_cli_log_three_backups(emulator: EmulatorServer, tmp_path: Path) -> None:
    env = cloudflare_env(emulator, KVSNAP_REPOSITORY=str(tmp_path / "repo"))
    namespace_id = create_namespace(
        emulator,
        "sessions",
        [SeedEntry(LOGGED_KEY, b"v1", metadata={"ip": "203.0.113.7"})]
        + [SeedEntry(f"other/{i}", b"x") for i in range(5)],
    )
    client = sdk(emulator)
    first = run_cli(["backup", "sessions"], env)
    write_entries(
        client,
        emulator.account_id,
        namespace_id,
        [SeedEntry(LOGGED_KEY, b"v2", metadata={"ip": "203.0.113.7"})],
    )
    second = run_cli(["backup", "sessions"], env)
    client.kv.namespaces.bulk_delete(
        namespace_id, account_id=emulator.account_id, body=[LOGGED_KEY]
    )
    third = run_cli(["backup", "sessions"], env)
    assert [first.code, second.code, third.code] == [0, 0, 0], third.stderr

    as_json = run_cli(["log", LOGGED_KEY, "--namespace", "sessions", "--json"], env)
    as_text = run_cli(["log", LOGGED_KEY, "-n", namespace_id], env)

    assert as_json.code == 0, as_json.stderr
    entries = json.loads(as_json.stdout)
    assert [e["present"] for e in entries] == [True, True, False]
    assert [e["change"] for e in entries] == [None, "changed", "removed"]
    assert entries[1]["fields"] == ["value"]
    assert entries[0]["sha256"] == hashlib.sha256(b"v1").hexdigest()
    assert entries[0]["metadata"] == {"ip": "203.0.113.7"}
    assert "sha256" not in entries[2]
    assert as_text.code == 0, as_text.stderr
    assert '"session:\u00e9t\u00e9\\n42" in sessions' in as_text.stdout
    assert "changed: value" in as_text.stdout
    assert "absent" in as_text.stdout
    last = as_text.stdout.splitlines()[-1]
    assert last.startswith("last change (removed) between snapshot")
    assert entries[1]["snapshot_id"] in last
    assert entries[2]["snapshot_id"] in last
    assert as_text.stderr == ""


def test_cli_log_unknown_namespace(emulator: EmulatorServer, tmp_path: Path) -> None:
    env = cloudflare_env(emulator, KVSNAP_REPOSITORY=str(tmp_path / "repo"))
    create_namespace(emulator, "sessions", [SeedEntry("k", b"v")])
    assert run_cli(["backup", "sessions"], env).code == 0

    result = run_cli(["log", "k", "--namespace", "nope"], env)
    missing_option = run_cli(["log", "k"], env)

    assert result.code == 22
    assert result.stdout == ""
    assert "error: no snapshot of namespace 'nope'" in result.stderr
    assert "hint: namespaces with snapshots: sessions" in result.stderr
    assert missing_option.code == 2
    assert "--namespace" in missing_option.stderr
