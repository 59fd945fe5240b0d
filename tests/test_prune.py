"""Tests of kvsnap.retention.prune and the `kvsnap prune` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.errors import RepositoryLocked, SnapshotNotFound
from kvsnap.format import Manifest, PartBuilder, Record, encode_json
from kvsnap.lock import LOCKS_DIR, acquire
from kvsnap.policy import Retention
from kvsnap.repository import Repository, manifest_path_of
from kvsnap.retention import prune
from kvsnap.seed import SeedEntry
from kvsnap.state import Hold, add_hold, record_verify, verify_path, verify_records
from tests.kvtools import cloudflare_env, create_namespace, run_cli, snapshots
from tests.test_repository import NAMESPACE, OTHER_NAMESPACE, make_records

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
KEEP_LAST_2 = Retention(keep_within=None, keep_last=2)
OLD = time.time() - 3 * 86400  # mtime of orphans past the grace period


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


async def make_snapshot(
    repo: Repository, days_ago: int, namespace_id: str = NAMESPACE, parts: int = 2
) -> Manifest:
    writer = repo.start_snapshot(
        namespace_id=namespace_id, read_started=NOW - timedelta(days=days_ago)
    )
    records = make_records(parts * 3)
    for number in range(parts):
        builder = PartBuilder()
        for record in records[number * 3 : number * 3 + 3]:
            builder.add(record)
        await writer.write_part(builder)
    manifest = await writer.commit(
        account_id="account",
        namespace_title=f"title-{namespace_id[:4]}",
        read_finished=NOW - timedelta(days=days_ago) + timedelta(seconds=3),
        keys=len(records),
        value_bytes=100,
    )
    await record_verify(
        repo,
        snapshot_id=manifest.id,
        namespace_id=namespace_id,
        read_data=False,
        ok=True,
        problems=[],
    )
    return manifest


async def write_orphan(
    repo: Repository, days_ago: int, namespace_id: str = NAMESPACE
) -> list[str]:
    """Write two parts of a snapshot that never commits; return their paths."""
    writer = repo.start_snapshot(
        namespace_id=namespace_id, read_started=NOW - timedelta(days=days_ago)
    )
    paths = []
    for key in ("a", "b"):
        builder = PartBuilder()
        builder.add(Record(key, "value"))
        paths.append((await writer.write_part(builder)).path)
    return paths


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repo(repo_dir: Path) -> Repository:
    return run(Repository.init(str(repo_dir)))


def test_prune_removes_manifest_parts_and_record(
    repo: Repository, repo_dir: Path
) -> None:
    made = [run(make_snapshot(repo, days)) for days in (5, 4, 3, 2, 1)]
    result = run(prune(repo, KEEP_LAST_2, dry_run=False, now=NOW))

    assert [m.id for m in result.removed] == [m.id for m in made[:3]]
    assert [m.id for m, _r in result.kept] == [m.id for m in made[3:]]
    assert result.bytes_freed == sum(m.stored_bytes for m in made[:3])
    assert [m.id for m in run(repo.snapshots())] == [m.id for m in made[3:]]
    files = files_under(repo_dir)
    for removed in made[:3]:
        assert manifest_path_of(removed) not in files
        assert verify_path(removed.id) not in files
        for part in removed.parts:
            assert part.path not in files
    for kept in made[3:]:
        assert manifest_path_of(kept) in files
        assert all(part.path in files for part in kept.parts)
    assert set(run(verify_records(repo))) == {m.id for m in made[3:]}
    assert not any(name.startswith(LOCKS_DIR) for name in files)


def test_prune_dry_run_deletes_nothing(repo: Repository, repo_dir: Path) -> None:
    for days in (5, 4, 3, 2, 1):
        run(make_snapshot(repo, days))
    run(write_orphan(repo, 9))
    for path in (repo_dir / "data").rglob("*"):
        os.utime(path, (OLD, OLD))
    before = files_under(repo_dir)

    result = run(prune(repo, KEEP_LAST_2, dry_run=True, now=NOW))

    assert files_under(repo_dir) == before
    assert result.dry_run
    assert len(result.removed) == 3
    assert len(result.orphans_removed) == 1
    assert result.to_dict()["dry_run"] is True


def test_prune_removes_only_old_orphans(
    repo: Repository, repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = run(make_snapshot(repo, 1))
    old_parts = run(write_orphan(repo, 3))
    young_parts = run(write_orphan(repo, 0, OTHER_NAMESPACE))
    for path in old_parts:
        os.utime(repo_dir / path, (OLD, OLD))
    # The committed snapshot's parts are as old, yet never orphans.
    for part in kept.parts:
        os.utime(repo_dir / part.path, (OLD, OLD))
    stray = repo_dir / "data" / "notes.txt"
    stray.write_text("not a part")
    os.utime(stray, (OLD, OLD))

    with caplog.at_level(logging.WARNING, logger="kvsnap.retention"):
        result = run(prune(repo, KEEP_LAST_2, dry_run=False))

    files = files_under(repo_dir)
    assert [o.paths for o in result.orphans_removed] == [old_parts]
    assert [o.paths for o in result.orphans_kept] == [young_parts]
    assert not any(path in files for path in old_parts)
    assert all(path in files for path in young_parts)
    assert all(part.path in files for part in kept.parts)
    assert "data/notes.txt" in files
    assert "ignoring data/notes.txt" in caplog.text
    assert result.bytes_freed == result.orphans_removed[0].size > 0


def test_prune_keeps_held_and_unreadable(repo: Repository, repo_dir: Path) -> None:
    made = [run(make_snapshot(repo, days)) for days in (5, 4, 3, 2, 1)]
    held = made[0]
    run(
        add_hold(
            repo,
            Hold(
                snapshot_id=held.id,
                namespace_id=held.namespace_id,
                created="2025-03-01T00:00:00.000Z",
                reason="legal hold",
            ),
        )
    )
    broken = made[1]
    (repo_dir / manifest_path_of(broken)).write_text("{not json")
    for part in broken.parts:
        os.utime(repo_dir / part.path, (OLD, OLD))

    result = run(prune(repo, KEEP_LAST_2, dry_run=False, now=NOW))

    reasons = {m.id: r for m, r in result.kept}
    assert reasons[held.id] == ["held: legal hold"]
    assert [m.id for m in result.removed] == [made[2].id]
    assert result.unreadable == [manifest_path_of(broken)]
    assert result.orphans_removed == []
    files = files_under(repo_dir)
    assert all(part.path in files for part in broken.parts)


def test_prune_never_deletes_parts_of_another_snapshot(
    repo: Repository, repo_dir: Path
) -> None:
    forged, victim = [run(make_snapshot(repo, days)) for days in (5, 1)]
    # The old snapshot's manifest now lists the newest snapshot's parts.
    rewritten = msgspec.structs.replace(forged, parts=victim.parts)
    run(repo.storage.put(manifest_path_of(forged), encode_json(rewritten)))
    for part in forged.parts:
        os.utime(repo_dir / part.path, (OLD, OLD))

    result = run(prune(repo, Retention(keep_within=None), dry_run=False, now=NOW))

    assert result.removed == []
    assert result.unreadable == [manifest_path_of(forged)]
    assert result.orphans_removed == []
    files = files_under(repo_dir)
    assert all(part.path in files for part in victim.parts)
    assert all(part.path in files for part in forged.parts)
    assert len(run(read_records(repo, victim))) == len(make_records(6))


async def read_records(repo: Repository, manifest: Manifest) -> list[Record]:
    return [record async for record in repo.iter_records(manifest)]


def test_prune_namespace_limits_scope(repo: Repository, repo_dir: Path) -> None:
    mine = [run(make_snapshot(repo, days)) for days in (4, 3, 2, 1)]
    other = [run(make_snapshot(repo, days, OTHER_NAMESPACE)) for days in (4, 3, 2)]
    other_orphan = run(write_orphan(repo, 5, OTHER_NAMESPACE))
    for path in other_orphan:
        os.utime(repo_dir / path, (OLD, OLD))

    result = run(
        prune(
            repo, KEEP_LAST_2, dry_run=False, now=NOW, namespace=mine[0].namespace_title
        )
    )

    assert [m.id for m in result.removed] == [m.id for m in mine[:2]]
    assert result.orphans_removed == []
    left = {m.id for m in run(repo.snapshots())}
    assert {m.id for m in other} <= left
    assert all(path in files_under(repo_dir) for path in other_orphan)


def test_prune_unknown_namespace_raises(repo: Repository) -> None:
    run(make_snapshot(repo, 1))
    with pytest.raises(SnapshotNotFound) as caught:
        run(prune(repo, KEEP_LAST_2, dry_run=True, namespace="nope"))
    assert "no snapshots of namespace 'nope'" in str(caught.value)


def test_prune_waits_out_no_lock(repo: Repository) -> None:
    run(make_snapshot(repo, 1))

    async def scenario() -> None:
        backup_lock = await acquire(repo, exclusive=False, command="kvsnap backup")
        try:
            with pytest.raises(RepositoryLocked) as caught:
                await prune(repo, KEEP_LAST_2, dry_run=False)
            assert "shared lock" in str(caught.value)
            assert "kvsnap backup" in str(caught.value)
            # A dry run takes a shared lock, which a backup does not block.
            result = await prune(repo, KEEP_LAST_2, dry_run=True)
            assert result.dry_run
        finally:
            await backup_lock.release()

    run(scenario())


# The command on the emulator.


@pytest.fixture
def env(emulator: EmulatorServer, tmp_path: Path) -> dict[str, str]:
    entries = [SeedEntry(f"key-{n:03d}", f"value {n}".encode()) for n in range(30)]
    create_namespace(emulator, "prune-me", entries)
    return cloudflare_env(emulator, KVSNAP_REPOSITORY=str(tmp_path / "repo"))


def backup_times(env: dict[str, str], count: int) -> list[str]:
    ids = []
    for _ in range(count):
        done = run_cli(["backup", "prune-me", "--json"], env)
        assert done.code == 0, done.stderr
        ids.append(json.loads(done.stdout)["namespaces"][0]["snapshot_id"])
    return ids


def test_cli_prune_dry_run_then_prune(env: dict[str, str], tmp_path: Path) -> None:
    repo_url = env["KVSNAP_REPOSITORY"]
    ids = backup_times(env, 3)
    verified = run_cli(["verify"], env)
    assert verified.code == 0, verified.stderr

    dry = run_cli(["prune", "--keep-last", "1", "--dry-run"], env)
    assert dry.code == 0, dry.stderr
    assert dry.stdout.startswith("rules: last 1\n")
    lines = dry.stdout.splitlines()
    for old in ids[:2]:
        assert any(line.startswith("would remove") and old in line for line in lines)
    newest = next(line for line in lines if ids[2] in line)
    assert newest.startswith("keep")
    assert "last 1, newest verified" in newest
    assert "would remove 2 snapshots and 0 orphan folders" in dry.stdout
    assert len(snapshots(repo_url)) == 3

    done = run_cli(["prune", "--keep-last", "1", "--json"], env)
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["type"] == "prune"
    assert report["dry_run"] is False
    assert report["rules"] == ["last 1"]
    assert [item["id"] for item in report["removed"]] == ids[:2]
    assert [item["id"] for item in report["kept"]] == [ids[2]]
    assert report["kept"][0]["reasons"] == ["last 1", "newest verified"]
    assert [m.id for m in snapshots(repo_url)] == [ids[2]]
    assert run_cli(["verify", "--read-data"], env).code == 0


def test_cli_prune_default_keeps_recent(env: dict[str, str]) -> None:
    backup_times(env, 2)
    done = run_cli(["prune"], env)
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("rules: within 30d\n")
    assert "removed 0 snapshots" in done.stdout
    assert len(snapshots(env["KVSNAP_REPOSITORY"])) == 2


def test_cli_prune_reads_policy_file(env: dict[str, str], tmp_path: Path) -> None:
    ids = backup_times(env, 3)
    config = tmp_path / "kvsnap.toml"
    config.write_text('[retention]\nkeep_within = "0"\nkeep_last = 2\n')
    done = run_cli(["prune", "--config", str(config), "--json"], env)
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rules"] == ["last 2"]
    assert [item["id"] for item in report["removed"]] == ids[:1]
    # A flag replaces the whole table.
    flagged = run_cli(
        ["prune", "--config", str(config), "--keep-last", "1", "--dry-run", "--json"],
        env,
    )
    assert json.loads(flagged.stdout)["rules"] == ["last 1"]


def test_cli_prune_removes_orphans(env: dict[str, str]) -> None:
    backup_times(env, 1)
    root = Path(env["KVSNAP_REPOSITORY"])
    folder = root / "data" / "0f2ac74b498b48028cb68387c421e279" / "2025-01-01"
    orphan = folder / "00112233aabbccdd" / "000001.jsonl.zst"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a failed run")
    os.utime(orphan, (OLD, OLD))

    done = run_cli(["prune"], env)
    assert done.code == 0, done.stderr
    assert "00112233aabbccdd" in done.stdout
    assert "orphan parts (1), no manifest" in done.stdout
    assert "removed 0 snapshots and 1 orphan folder" in done.stdout
    assert not orphan.exists()


def test_cli_prune_invalid_options(env: dict[str, str]) -> None:
    bad_duration = run_cli(["prune", "--keep-within", "soon"], env)
    assert bad_duration.code == 10
    assert "invalid --keep-within 'soon'" in bad_duration.stderr
    negative = run_cli(["prune", "--keep-last", "-1"], env)
    assert negative.code == 2
    assert negative.stdout == ""


def test_cli_prune_missing_repository(env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli(["prune", "--repo", str(tmp_path / "nothing"), "--json"], env)
    assert done.code == 21
    assert json.loads(done.stdout)["type"] == "error"


def test_cli_prune_locked_exits_23(env: dict[str, str]) -> None:
    backup_times(env, 2)
    repo_url = env["KVSNAP_REPOSITORY"]

    async def hold_lock() -> None:
        repo = await Repository.open(repo_url)
        # Left behind on purpose: this live process is its holder.
        await acquire(repo, exclusive=False, command="kvsnap backup")

    run(hold_lock())
    done = run_cli(["prune", "--keep-last", "1"], env)
    assert done.code == 23
    assert f"error: repository {repo_url} is locked: shared lock" in done.stderr
    assert f"(pid {os.getpid()} on" in done.stderr
    assert "hint: wait for it to finish, or pass --lock-wait SECONDS" in done.stderr
    assert done.stdout == ""
    assert len(snapshots(repo_url)) == 2


def test_prune_removes_stale_temporary_files(repo: Repository, repo_dir: Path) -> None:
    run(make_snapshot(repo, 1))
    # What a process killed while obstore wrote a local object leaves behind.
    stale = repo_dir / "data" / NAMESPACE / "2025-02-27" / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "000001.jsonl.zst#1").write_bytes(b"half a part")
    os.utime(stale / "000001.jsonl.zst#1", (OLD, OLD))
    (stale / "000002.jsonl.zst#2").write_bytes(b"being written now")

    dry = run(prune(repo, KEEP_LAST_2, dry_run=True, now=NOW))
    assert dry.stale_uploads == []
    assert (stale / "000001.jsonl.zst#1").exists()

    result = run(prune(repo, KEEP_LAST_2, dry_run=False, now=NOW))

    prefix = f"data/{NAMESPACE}/2025-02-27/0123456789abcdef"
    assert result.stale_uploads == [f"{prefix}/000001.jsonl.zst#1"]
    assert not (stale / "000001.jsonl.zst#1").exists()
    assert (stale / "000002.jsonl.zst#2").exists()
