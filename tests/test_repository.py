"""Tests of kvsnap.repository against a local folder and S3 servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from kvsnap.errors import (
    ConfigError,
    CorruptPart,
    ObjectExists,
    RepositoryError,
    RepositoryNotFound,
    SnapshotNotFound,
)
from kvsnap.format import (
    REPOSITORY_CONFIG_NAME,
    Manifest,
    PartBuilder,
    Record,
    decode_manifest,
    encode_json,
)
from kvsnap.repository import (
    Repository,
    SnapshotWriter,
    UnreadableManifest,
    manifest_path,
    manifest_path_of,
    parse_manifest_path,
)
from kvsnap.storage import RetryPolicy, Storage
from tests.s3servers import FaultProxy

NAMESPACE = "0f2ac74b498b48028cb68387c421e279"
OTHER_NAMESPACE = "9a3c1f0e2d4b4c6a8e0f1a2b3c4d5e6f"
STARTED = datetime(2025, 3, 1, 2, 0, 5, 250000, tzinfo=UTC)

# Retries in milliseconds, so failure tests stay fast.
FAST_RETRY = RetryPolicy(
    attempts=3,
    backoff_base=0.01,
    backoff_max=0.02,
    client_max_retries=1,
    client_init_backoff=0.01,
    client_max_backoff=0.02,
    client_retry_timeout=5.0,
    request_timeout=10.0,
)


def make_records(count: int, prefix: str = "key") -> list[Record]:
    return [Record(f"{prefix}-{index:05d}", f"value {index}") for index in range(count)]


def build_part(records: list[Record]) -> PartBuilder:
    builder = PartBuilder()
    for record in records:
        builder.add(record)
    return builder


async def write_snapshot(
    repo: Repository,
    parts: list[list[Record]],
    *,
    namespace_id: str = NAMESPACE,
    title: str = "production-config",
    started: datetime = STARTED,
    snapshot_id: str | None = None,
) -> Manifest:
    """Write and commit a snapshot whose parts hold the given records."""
    if snapshot_id is None:
        writer = repo.start_snapshot(namespace_id=namespace_id, read_started=started)
    else:
        writer = SnapshotWriter(repo, namespace_id, started, snapshot_id)
    for records in parts:
        await writer.write_part(build_part(records))
    all_records = [record for records in parts for record in records]
    return await writer.commit(
        account_id="a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        namespace_title=title,
        read_finished=started + timedelta(seconds=42),
        keys=len(all_records),
        value_bytes=sum(len(record.value_bytes()) for record in all_records),
    )


async def read_all(repo: Repository, manifest: Manifest) -> list[Record]:
    return [record async for record in repo.iter_records(manifest)]


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


# Open, init, open_or_init.


def test_open_missing_repository_raises_not_found(repo_url: str) -> None:
    with pytest.raises(RepositoryNotFound) as caught:
        run(Repository.open(repo_url))
    message = str(caught.value)
    assert message.startswith("no kvsnap repository at ")
    assert "kvsnap.json not found" in message
    assert caught.value.hint is not None
    assert "kvsnap init" in caught.value.hint


def test_open_missing_local_folder_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "repo"
    with pytest.raises(RepositoryNotFound):
        run(Repository.open(str(target)))
    assert not target.exists()
    assert not (tmp_path / "absent").exists()


def test_init_then_open_returns_same_config(repo_url: str) -> None:
    created = run(Repository.init(repo_url))
    opened = run(Repository.open(repo_url))
    assert opened.config == created.config
    assert re.fullmatch(r"[0-9a-f]{32}", created.config.repository_id)
    assert created.config.format_version == 1


def test_init_twice_raises_repository_error(repo_url: str) -> None:
    first = run(Repository.init(repo_url))
    with pytest.raises(RepositoryError) as caught:
        run(Repository.init(repo_url))
    assert str(caught.value) == f"a kvsnap repository already exists at {first.url}"
    assert run(Repository.open(repo_url)).config == first.config


def test_open_or_init_creates_in_empty_location(repo_url: str) -> None:
    repo = run(Repository.open_or_init(repo_url))
    assert run(repo.storage.exists(REPOSITORY_CONFIG_NAME))
    assert run(Repository.open_or_init(repo_url)).config == repo.config


def test_open_or_init_rejects_foreign_objects(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("photos/cat.jpg", b"\xff\xd8"))
    with pytest.raises(RepositoryError) as caught:
        run(Repository.open_or_init(repo_url))
    assert "contains objects but no kvsnap.json" in str(caught.value)
    assert not run(storage.exists(REPOSITORY_CONFIG_NAME))


def test_init_beside_foreign_objects_is_allowed(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("notes.txt", b"hello"))
    repo = run(Repository.init(repo_url))
    assert run(repo.storage.get("notes.txt")) == b"hello"


def test_open_rejects_newer_format(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    storage = Storage.from_url(url)
    config = b'{"format_version": 2, "repository_id": "x", "created": "2030-01-01"}'
    run(storage.put(REPOSITORY_CONFIG_NAME, config))
    with pytest.raises(RepositoryError) as caught:
        run(Repository.open(url))
    assert "uses repository format 2" in str(caught.value)


def test_open_rejects_invalid_config(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    run(Storage.from_url(url).put(REPOSITORY_CONFIG_NAME, b"not json"))
    with pytest.raises(RepositoryError) as caught:
        run(Repository.open(url))
    assert "is not a valid repository configuration" in str(caught.value)


# Snapshot writing and reading.


def test_snapshot_round_trip(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    parts = [
        make_records(3, "a"),
        [
            Record.from_bytes("b-binary", b"\x00\xff\xfe", metadata={"k": [1, 2]}),
            Record("b-expiring", "soon", expiration=1_900_000_000),
        ],
        [Record("c-\u00e9t\u00e9", '{"b":1, "a":2}')],
    ]
    manifest = run(write_snapshot(repo, parts))

    assert run(read_all(repo, manifest)) == [r for records in parts for r in records]
    assert manifest.keys == 6
    assert [part.number for part in manifest.parts] == [1, 2, 3]
    assert [part.records for part in manifest.parts] == [3, 2, 1]
    assert manifest.parts[1].first_key == "b-binary"
    assert manifest.parts[1].last_key == "b-expiring"
    assert manifest.stored_bytes == sum(part.size for part in manifest.parts)
    assert manifest.read_started == "2025-03-01T02:00:05.250Z"
    assert manifest.read_finished == "2025-03-01T02:00:47.250Z"
    assert manifest.namespace_title == "production-config"
    assert manifest.tool == "kvsnap"


def test_snapshot_object_names(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [make_records(2), make_records(2, "z")]))
    listed = [path for path, _ in run(repo.storage.list())]
    day = f"data/{NAMESPACE}/2025-03-01/{manifest.id}"
    assert listed == [
        f"{day}/000001.jsonl.zst",
        f"{day}/000002.jsonl.zst",
        REPOSITORY_CONFIG_NAME,
        f"snapshots/{NAMESPACE}/2025-03-01T020005Z-{manifest.id}.json",
    ]
    assert re.fullmatch(r"[0-9a-f]{16}", manifest.id)
    assert manifest_path_of(manifest) == listed[3]


def test_manifest_is_readable_json(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [make_records(1)]))
    stored = run(repo.storage.get(manifest_path_of(manifest)))
    assert decode_manifest(stored) == manifest
    assert stored == encode_json(manifest)


def test_snapshots_sorted_and_filtered(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    later = STARTED + timedelta(hours=1)
    second = run(write_snapshot(repo, [make_records(1)], started=later))
    first = run(write_snapshot(repo, [make_records(1)]))
    other = run(
        write_snapshot(
            repo, [make_records(1)], namespace_id=OTHER_NAMESPACE, title="sessions"
        )
    )

    all_ids = [manifest.id for manifest in run(repo.snapshots())]
    assert all_ids == [*sorted([first.id, other.id]), second.id]
    assert [m.id for m in run(repo.snapshots(NAMESPACE))] == [first.id, second.id]
    assert [m.id for m in run(repo.snapshots("production-config"))] == [
        first.id,
        second.id,
    ]
    assert [m.id for m in run(repo.snapshots("sessions"))] == [other.id]
    assert run(repo.snapshots("unknown")) == []


def test_empty_snapshot_commits(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, []))
    assert manifest.keys == 0
    assert manifest.parts == []
    assert run(read_all(repo, manifest)) == []
    assert [m.id for m in run(repo.snapshots())] == [manifest.id]


def test_commit_rejects_wrong_key_count(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    writer = repo.start_snapshot(namespace_id=NAMESPACE, read_started=STARTED)
    run(writer.write_part(build_part(make_records(2))))
    with pytest.raises(ValueError, match="keys is 3 but the parts hold 2 records"):
        run(
            writer.commit(
                account_id="a",
                namespace_title="t",
                read_finished=STARTED,
                keys=3,
                value_bytes=0,
            )
        )
    assert run(repo.snapshots()) == []


def test_write_part_rejects_keys_not_ascending(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    writer = repo.start_snapshot(namespace_id=NAMESPACE, read_started=STARTED)
    run(writer.write_part(build_part([Record("m", "1")])))
    with pytest.raises(ValueError, match="part keys must ascend"):
        run(writer.write_part(build_part([Record("a", "1")])))


@pytest.mark.parametrize("namespace_id", ["", "../etc", "a/b", "x" * 65, "sp ace"])
def test_start_snapshot_rejects_bad_namespace_id(
    tmp_path: Path, namespace_id: str
) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    with pytest.raises(ConfigError, match="invalid namespace id"):
        repo.start_snapshot(namespace_id=namespace_id, read_started=STARTED)


def test_start_snapshot_rejects_naive_time(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.start_snapshot(namespace_id=NAMESPACE, read_started=datetime(2025, 1, 1))


# Create-only manifests.


def _occupy_manifest_path(repo: Repository, snapshot_id: str) -> str:
    path = manifest_path(NAMESPACE, STARTED, snapshot_id)
    run(repo.storage.put(path, b"placeholder"))
    return path


def test_commit_never_overwrites_manifest_local(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    path = _occupy_manifest_path(repo, "00000000000000aa")
    with pytest.raises(ObjectExists, match="already exists"):
        run(write_snapshot(repo, [make_records(1)], snapshot_id="00000000000000aa"))
    assert run(repo.storage.get(path)) == b"placeholder"


@pytest.mark.s3
def test_commit_never_overwrites_manifest_rclone(rclone_bucket: str) -> None:
    repo = run(Repository.init(rclone_bucket))
    path = _occupy_manifest_path(repo, "00000000000000aa")
    with pytest.raises(ObjectExists, match="already exists"):
        run(write_snapshot(repo, [make_records(1)], snapshot_id="00000000000000aa"))
    assert run(repo.storage.get(path)) == b"placeholder"


@pytest.mark.s3
def test_create_only_conditional_write_moto(moto_bucket: str) -> None:
    # Skip the HEAD check so the PUT itself meets the existing object: moto
    # honours If-None-Match and must reject the second write.
    repo = run(Repository.init(moto_bucket))
    path = _occupy_manifest_path(repo, "00000000000000aa")

    real_head = repo.storage.head

    async def manifest_seems_absent(checked: str) -> int | None:
        return None if checked == path else await real_head(checked)

    repo.storage.head = manifest_seems_absent  # type: ignore[method-assign]
    with pytest.raises(ObjectExists, match="already exists"):
        run(write_snapshot(repo, [make_records(1)], snapshot_id="00000000000000aa"))
    del repo.storage.head
    assert run(repo.storage.get(path)) == b"placeholder"


@pytest.mark.s3
def test_init_twice_raises_on_moto(moto_bucket: str) -> None:
    run(Repository.init(moto_bucket))
    with pytest.raises(RepositoryError, match="already exists"):
        run(Repository.init(moto_bucket))


# Selectors.


def _three_snapshots(repo: Repository) -> tuple[Manifest, Manifest, Manifest]:
    first = run(write_snapshot(repo, [make_records(1)], snapshot_id="abcd111100000000"))
    second = run(
        write_snapshot(
            repo,
            [make_records(1)],
            snapshot_id="abcd222200000000",
            started=STARTED + timedelta(minutes=5),
        )
    )
    third = run(
        write_snapshot(
            repo,
            [make_records(1)],
            namespace_id=OTHER_NAMESPACE,
            title="sessions",
            snapshot_id="ef01333300000000",
            started=STARTED + timedelta(minutes=1),
        )
    )
    return first, second, third


def test_resolve_id_and_unique_prefix(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    first, second, third = _three_snapshots(repo)
    assert run(repo.resolve("abcd111100000000")) == first
    assert run(repo.resolve("abcd2")) == second
    assert run(repo.resolve("EF01")) == third


def test_resolve_ambiguous_prefix_lists_candidates(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    _three_snapshots(repo)
    with pytest.raises(SnapshotNotFound) as caught:
        run(repo.resolve("abcd"))
    assert str(caught.value) == (
        "snapshot prefix 'abcd' is ambiguous: it matches"
        " abcd111100000000 (production-config, 2025-03-01T02:00:05.250Z),"
        " abcd222200000000 (production-config, 2025-03-01T02:05:05.250Z)"
    )


def test_resolve_unknown_id_raises_not_found(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    _three_snapshots(repo)
    with pytest.raises(SnapshotNotFound, match="no snapshot '9999' in"):
        run(repo.resolve("9999"))


@pytest.mark.parametrize("selector", ["abc", "xyz12", "abcd111100000000ff", "", "a b"])
def test_resolve_malformed_selector_raises_config_error(
    tmp_path: Path, selector: str
) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    with pytest.raises(ConfigError, match="invalid snapshot selector"):
        run(repo.resolve(selector))


def test_resolve_latest(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    _first, second, third = _three_snapshots(repo)
    assert run(repo.resolve(f"latest@{NAMESPACE}")) == second
    assert run(repo.resolve("latest@production-config")) == second
    assert run(repo.resolve("latest@sessions")) == third
    assert run(repo.resolve(f"latest@{OTHER_NAMESPACE}")) == third


def test_resolve_latest_ambiguous_across_namespaces(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    _three_snapshots(repo)
    with pytest.raises(SnapshotNotFound) as caught:
        run(repo.resolve("latest"))
    assert "latest is ambiguous" in str(caught.value)
    assert f"production-config ({NAMESPACE})" in str(caught.value)
    assert f"sessions ({OTHER_NAMESPACE})" in str(caught.value)
    assert caught.value.hint == "use one of latest@production-config, latest@sessions"


def test_resolve_latest_hint_uses_ids_for_shared_titles(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    third_namespace = "5d6e7f8091a2b3c4d5e6f708192a3b4c"
    for namespace_id, title in [
        (NAMESPACE, "shared"),
        (OTHER_NAMESPACE, "shared"),
        (third_namespace, "sessions"),
    ]:
        run(
            write_snapshot(
                repo, [make_records(1)], namespace_id=namespace_id, title=title
            )
        )
    with pytest.raises(SnapshotNotFound) as caught:
        run(repo.resolve("latest"))
    assert caught.value.hint == (
        f"use one of latest@{NAMESPACE}, latest@{OTHER_NAMESPACE}, latest@sessions"
    )
    with pytest.raises(SnapshotNotFound) as caught:
        run(repo.resolve("latest@shared"))
    assert str(caught.value).startswith("latest@shared is ambiguous")
    assert (
        caught.value.hint == f"use one of latest@{NAMESPACE}, latest@{OTHER_NAMESPACE}"
    )
    selected = run(repo.resolve(caught.value.hint.split(", ")[-1]))
    assert selected.namespace_id == OTHER_NAMESPACE


def test_resolve_latest_single_namespace(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    run(write_snapshot(repo, [make_records(1)]))
    newer = run(
        write_snapshot(repo, [make_records(1)], started=STARTED + timedelta(days=1))
    )
    assert run(repo.resolve("latest")) == newer


def test_resolve_latest_unknown_namespace(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    run(write_snapshot(repo, [make_records(1)]))
    with pytest.raises(SnapshotNotFound) as caught:
        run(repo.resolve("latest@nope"))
    assert "no snapshot of namespace 'nope'" in str(caught.value)
    assert (
        caught.value.hint
        == f"namespaces with snapshots: production-config ({NAMESPACE})"
    )


def test_resolve_latest_in_empty_repository(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    with pytest.raises(SnapshotNotFound, match="no snapshots in"):
        run(repo.resolve("latest"))


def test_parse_manifest_path_rejects_other_names() -> None:
    assert parse_manifest_path("snapshots/ns/notes.txt") is None
    assert (
        parse_manifest_path("snapshots/2025-03-01T020005Z-abcd111100000000.json")
        is None
    )
    entry = parse_manifest_path("snapshots/ns/2025-03-01T020005Z-abcd111100000000.json")
    assert entry is not None
    assert entry.namespace_id == "ns"
    assert entry.snapshot_id == "abcd111100000000"


def test_manifest_with_wrong_id_is_rejected(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(1)]))
    forged = msgspec.structs.replace(manifest, id="ffffffffffffffff")
    run(repo.storage.put(manifest_path_of(manifest), encode_json(forged)))
    assert run(repo.snapshots()) == []
    with pytest.raises(RepositoryError, match="but its name says otherwise"):
        run(repo.resolve(manifest.id))


# Paths of part 1 that a damaged or forged manifest of the snapshot
# written at STARTED might list. Only its own folder is allowed.
FOREIGN_PART_PATHS = {
    "other snapshot": f"data/{NAMESPACE}/2025-03-01/ffffffffffffffff/000001.jsonl.zst",
    "other day": f"data/{NAMESPACE}/2025-03-02/{{id}}/000001.jsonl.zst",
    "other namespace": f"data/{OTHER_NAMESPACE}/2025-03-01/{{id}}/000001.jsonl.zst",
    "subfolder": f"data/{NAMESPACE}/2025-03-01/{{id}}/sub/000001.jsonl.zst",
    "outside data": "locks/000001.jsonl.zst",
}


@pytest.mark.parametrize("case", FOREIGN_PART_PATHS)
def test_manifest_with_foreign_part_is_rejected(tmp_path: Path, case: str) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(1)]))
    [part] = manifest.parts
    foreign = FOREIGN_PART_PATHS[case].format(id=manifest.id)
    forged = msgspec.structs.replace(
        manifest, parts=[msgspec.structs.replace(part, path=foreign)]
    )
    run(repo.storage.put(manifest_path_of(manifest), encode_json(forged)))

    manifests, unreadable = run(repo.scan_snapshots())

    assert manifests == []
    [item] = unreadable
    assert item.reason == (
        f"part 1 path {foreign!r} is outside the snapshot's folder"
        f" data/{NAMESPACE}/2025-03-01/{manifest.id}/"
    )


def test_manifest_with_other_read_start_is_rejected(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(1)]))
    moved = "2025-03-01T05:00:00.000Z"
    forged = msgspec.structs.replace(manifest, read_started=moved)
    run(repo.storage.put(manifest_path_of(manifest), encode_json(forged)))

    manifests, unreadable = run(repo.scan_snapshots())

    assert manifests == []
    [item] = unreadable
    assert item.reason.startswith(
        f"its name does not match its read start {moved} (expected"
    )


def truncate_manifest(repo: Repository, manifest: Manifest) -> str:
    """Cut a stored manifest to half its length; return its object path."""
    path = manifest_path_of(manifest)
    data = run(repo.storage.get(path))
    run(repo.storage.put(path, data[: len(data) // 2]))
    return path


def _good_and_truncated(repo: Repository) -> tuple[Manifest, Manifest, str]:
    bad = run(write_snapshot(repo, [make_records(2)]))
    good = run(
        write_snapshot(
            repo,
            [make_records(3)],
            namespace_id=OTHER_NAMESPACE,
            title="sessions",
            started=STARTED + timedelta(minutes=1),
        )
    )
    return good, bad, truncate_manifest(repo, bad)


def test_snapshots_skip_truncated_manifest(
    repo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    repo = run(Repository.init(repo_url))
    good, _bad, bad_path = _good_and_truncated(repo)
    with caplog.at_level(logging.WARNING, logger="kvsnap.repository"):
        assert run(repo.snapshots()) == [good]
        assert run(repo.snapshots(NAMESPACE)) == []
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"skipping manifest {repo.storage.describe(bad_path)}: it is invalid:"
        " Input data was truncated"
    ]


def test_resolve_around_truncated_manifest(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    good, bad, bad_path = _good_and_truncated(repo)
    assert run(repo.resolve("latest")) == good
    assert run(repo.resolve("latest@sessions")) == good
    assert run(repo.resolve(good.id[:6])) == good
    with pytest.raises(RepositoryError) as caught:
        run(repo.resolve(bad.id))
    assert str(caught.value) == (
        f"manifest {repo.storage.describe(bad_path)} is invalid:"
        " Input data was truncated"
    )
    found = run(repo.resolve_any(bad.id))
    assert isinstance(found, UnreadableManifest)
    assert found.path == bad_path
    assert found.entry.started == "2025-03-01T02:00:05Z"


# Reading parts.


def test_read_part_detects_missing_and_changed_parts(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [make_records(5), make_records(5, "z")]))
    first, second = manifest.parts
    run(repo.storage.delete(first.path))
    data = run(repo.storage.get(second.path))
    run(repo.storage.put(second.path, data[:-1] + bytes([data[-1] ^ 1])))

    with pytest.raises(CorruptPart) as missing:
        run(repo.read_part(first))
    assert str(missing.value) == f"part {first.path} is corrupt: missing"
    with pytest.raises(CorruptPart) as changed:
        run(repo.read_part(second))
    assert changed.value.path == second.path
    assert changed.value.problem.startswith("sha256 is ")
    assert changed.value.problem.endswith(f", expected {second.sha256}")
    assert changed.value.exit_code == 4


def test_iter_records_stops_at_bad_part(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(2), make_records(2, "z")]))
    run(repo.storage.put(manifest.parts[1].path, b""))
    seen: list[str] = []

    async def consume() -> None:
        async for record in repo.iter_records(manifest):
            seen.append(record.key)

    with pytest.raises(CorruptPart, match="size is 0 bytes"):
        run(consume())
    assert seen == ["key-00000", "key-00001"]


# The store fails part uploads.


@pytest.mark.s3
def test_part_upload_faults_abort_snapshot(
    fault_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, url = fault_proxy
    repo = run(Repository.init(url, retry=FAST_RETRY))
    proxy.fail("PUT", r"/000001\.jsonl\.zst$", 503, times=1)
    proxy.fail("PUT", r"/000002\.jsonl\.zst$", 500)
    writer = repo.start_snapshot(namespace_id=NAMESPACE, read_started=STARTED)

    flaky = run(writer.write_part(build_part(make_records(3, "a"))))
    with pytest.raises(RepositoryError) as caught:
        run(writer.write_part(build_part(make_records(3, "b"))))
    with pytest.raises(RepositoryError, match="parts 2 were not written"):
        run(
            writer.commit(
                account_id="a",
                namespace_title="t",
                read_finished=STARTED,
                keys=3,
                value_bytes=21,
            )
        )

    # The 503 part was retried and stored intact.
    assert [r.status for r in proxy.requests_to("PUT", r"/000001\.jsonl\.zst$")] == [
        503,
        200,
    ]
    assert run(repo.read_part(flaky))
    # The 500 part failed after 3 attempts of 2 requests each (1 client retry).
    failing = proxy.requests_to("PUT", r"/000002\.jsonl\.zst$")
    assert [r.status for r in failing] == [500] * 6
    message = str(caught.value)
    assert message.startswith(f"PUT {url}/data/{NAMESPACE}/2025-03-01/")
    assert "000002.jsonl.zst failed: " in message
    assert "500 Internal Server Error" in message
    # No manifest was written.
    assert run(repo.storage.list("snapshots")) == []
    assert run(repo.snapshots()) == []


# The command line: init and snapshots.


def kvsnap(*args: str, repo: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVSNAP_REPOSITORY": repo}
    binary = str(Path(sys.executable).parent / "kvsnap")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_init_twice(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    first = kvsnap("init", repo=url)
    assert first.returncode == 0
    repository_id = run(Repository.open(url)).config.repository_id
    assert first.stdout == f"created repository {url} (id {repository_id})\n"
    second = kvsnap("init", "--repo", url, repo="")
    assert second.returncode == 20
    assert second.stdout == ""
    assert second.stderr == (
        f"error: a kvsnap repository already exists at {url}\n"
        "hint: use it as it is: kvsnap never overwrites a repository\n"
    )


def test_cli_snapshots_json_and_table(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [make_records(3)]))
    run(
        write_snapshot(
            repo,
            [make_records(1)],
            namespace_id=OTHER_NAMESPACE,
            title="sessions",
            started=STARTED + timedelta(minutes=1),
        )
    )

    listed = kvsnap("snapshots", "--json", "--namespace", "production-config", repo=url)
    assert listed.returncode == 0
    assert listed.stderr == ""
    assert json.loads(listed.stdout) == [
        {
            "id": manifest.id,
            "namespace_id": NAMESPACE,
            "namespace_title": "production-config",
            "account_id": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
            "time": "2025-03-01T02:00:05.250Z",
            "read_finished": "2025-03-01T02:00:47.250Z",
            "keys": 3,
            "value_bytes": 21,
            "bytes": manifest.stored_bytes,
            "parts": 1,
            "skipped_keys": 0,
            "tags": [],
        }
    ]

    table = kvsnap("snapshots", repo=url)
    assert table.returncode == 0
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[0] == [
        "ID",
        "NAMESPACE",
        "NAMESPACE",
        "ID",
        "TIME",
        "(UTC)",
        "KEYS",
        "SIZE",
        "TAGS",
    ]
    assert lines[1][:6] == [
        manifest.id,
        "production-config",
        NAMESPACE,
        "2025-03-01",
        "02:00:05",
        "3",
    ]
    assert len(lines) == 3


def test_cli_snapshots_empty_and_missing(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    missing = kvsnap("snapshots", repo=url)
    assert missing.returncode == 21
    assert missing.stdout == ""
    assert missing.stderr.startswith(f"error: no kvsnap repository at {url}:")
    run(Repository.init(url))
    empty = kvsnap("snapshots", repo=url)
    assert empty.returncode == 0
    assert empty.stdout == ""
    assert empty.stderr == f"no snapshots in {url}\n"
    assert kvsnap("snapshots", "--json", repo=url).stdout == "[]\n"


def test_cli_snapshots_skip_truncated_manifest(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    good, _bad, bad_path = _good_and_truncated(repo)

    listed = kvsnap("snapshots", "--json", repo=url)
    assert listed.returncode == 0
    assert [item["id"] for item in json.loads(listed.stdout)] == [good.id]
    assert listed.stderr == (
        f"warning: skipping manifest {url}/{bad_path}: it is invalid:"
        " Input data was truncated\n"
    )

    table = kvsnap("snapshots", repo=url)
    assert table.returncode == 0
    assert good.id in table.stdout
    assert table.stderr == listed.stderr

    exported = kvsnap("export", "latest@sessions", repo=url)
    assert exported.returncode == 0
    assert len(json.loads(exported.stdout)) == 3


def test_cli_latest_hint_lists_titles(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    _three_snapshots(repo)
    done = kvsnap("export", "latest", repo=url)
    assert done.returncode == 22
    assert done.stdout == ""
    assert done.stderr.endswith(
        "\nhint: use one of latest@production-config, latest@sessions\n"
    )


def test_cli_rejects_repository_location_typos(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for command in (["snapshots"], ["init"], ["export", "latest"]):
        done = kvsnap(*command, "--repo", str(afile), repo="")
        assert done.returncode == 10, command
        assert done.stderr.startswith(f"error: --repo {afile} is a file, not a folder")

    typo = kvsnap("snapshots", repo="s3:bucket2")
    assert typo.returncode == 10
    assert typo.stderr.startswith("error: invalid repository URL 's3:bucket2'")
    assert not (Path.cwd() / "s3:bucket2").exists()


def test_cli_s3_without_credentials(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "R2_", "KVSNAP_"))
    }
    # If the check ever regressed, obstore's instance metadata requests would
    # go to a closed port on 127.0.0.1, never to the real metadata address.
    env["AWS_METADATA_ENDPOINT"] = "http://127.0.0.1:1"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    binary = str(Path(sys.executable).parent / "kvsnap")
    done = subprocess.run(
        [binary, "snapshots", "--repo", "s3://bucket/p"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 10
    assert done.stdout == ""
    assert done.stderr.startswith(
        "error: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n"
        "hint: to use a role instead, set AWS_WEB_IDENTITY_TOKEN_FILE"
    )


def test_cli_rejects_bad_url() -> None:
    done = kvsnap("snapshots", repo="gs://bucket/x")
    assert done.returncode == 10
    assert done.stderr.startswith("error: unsupported repository URL 'gs://bucket/x'")
