"""Tests of kvsnap.verify and the `kvsnap verify` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import zstandard

from kvsnap.errors import SnapshotNotFound, VerifyError
from kvsnap.format import Manifest, Record, encode_record, sha256_hex
from kvsnap.repository import Repository, manifest_path_of
from kvsnap.verify import (
    Problem,
    raise_for_failures,
    verify_repository,
    verify_snapshot,
)
from tests.test_repository import (
    NAMESPACE,
    OTHER_NAMESPACE,
    STARTED,
    make_records,
    run,
    truncate_manifest,
    write_snapshot,
)

KVSNAP = str(Path(sys.executable).parent / "kvsnap")


class RawPart:
    """Stands in for a PartBuilder: stores chosen bytes under a chosen description."""

    def __init__(
        self, data: bytes, records: int, first_key: str, last_key: str
    ) -> None:
        self.data = data
        self.records = records
        self.raw_size = 0
        self.first_key = first_key
        self.last_key = last_key

    def finish(self) -> bytes:
        return self.data


def compress_lines(records: list[Record]) -> bytes:
    lines = b"".join(encode_record(record) for record in records)
    return zstandard.ZstdCompressor(write_checksum=True).compress(lines)


async def write_raw_snapshot(
    repo: Repository, parts: list[RawPart], value_bytes: int = 0
) -> Manifest:
    writer = repo.start_snapshot(namespace_id=NAMESPACE, read_started=STARTED)
    for part in parts:
        await writer.write_part(part)  # type: ignore[arg-type]
    keys = sum(part.records for part in parts)
    return await writer.commit(
        account_id="acct",
        namespace_title="production-config",
        read_finished=STARTED,
        keys=keys,
        value_bytes=value_bytes,
    )


def truncate_parts(repo: Repository, manifest: Manifest) -> tuple[str, str]:
    """Truncate part 1 to 0 bytes and part 2 to half its length."""
    first, second = manifest.parts[0], manifest.parts[1]
    data = run(repo.storage.get(second.path))
    run(repo.storage.put(first.path, b""))
    run(repo.storage.put(second.path, data[: len(data) // 2]))
    return first.path, second.path


def cli(*args: str, repo: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVSNAP_REPOSITORY": repo}
    return subprocess.run(
        [KVSNAP, *args], capture_output=True, text=True, env=env, timeout=60
    )


# The quick check and the full read.


def test_intact_snapshot_passes(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [make_records(4), make_records(3, "z")]))
    quick = run(verify_snapshot(repo, manifest, read_data=False))
    full = run(verify_snapshot(repo, manifest, read_data=True))
    assert quick.ok is True
    assert quick.problems == []
    assert quick.parts_checked == 2
    assert quick.records_checked == 0
    assert quick.bytes_read == 0
    assert full.ok is True
    assert full.problems == []
    assert full.records_checked == 7
    assert full.bytes_read == manifest.stored_bytes
    assert full.snapshot_id == manifest.id
    assert full.namespace_title == "production-config"


def test_truncated_parts_detected(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(
        write_snapshot(
            repo, [make_records(50), make_records(50, "z"), make_records(5, "zz")]
        )
    )
    first, second = manifest.parts[0], manifest.parts[1]
    truncate_parts(repo, manifest)

    quick = run(verify_snapshot(repo, manifest, read_data=False))
    assert quick.ok is False
    assert quick.problems == [
        Problem(first.path, f"size is 0 bytes, expected {first.size}"),
        Problem(
            second.path,
            f"size is {second.size // 2} bytes, expected {second.size}",
        ),
    ]

    full = run(verify_snapshot(repo, manifest, read_data=True))
    assert full.ok is False
    assert [problem.path for problem in full.problems] == [first.path, second.path]
    empty_sha = sha256_hex(b"")
    assert full.problems[0].message == (
        f"size is 0 bytes, expected {first.size};"
        f" sha256 is {empty_sha}, expected {first.sha256}"
    )
    assert full.problems[1].message.startswith(
        f"size is {second.size // 2} bytes, expected {second.size}; sha256 is "
    )
    assert full.records_checked == 5


def test_missing_part(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [make_records(2), make_records(2, "z")]))
    run(repo.storage.delete(manifest.parts[1].path))
    for read_data in (False, True):
        result = run(verify_snapshot(repo, manifest, read_data=read_data))
        assert result.problems == [Problem(manifest.parts[1].path, "missing")]


def test_record_out_of_order(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    records = [Record("a", "1"), Record("c", "2"), Record("b", "3"), Record("d", "4")]
    part = RawPart(compress_lines(records), 4, "a", "d")
    manifest = run(write_raw_snapshot(repo, [part]))
    assert run(verify_snapshot(repo, manifest, read_data=False)).ok is True
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert result.problems == [
        Problem(
            manifest.parts[0].path,
            "record 3 key 'b' does not sort after the previous key 'c'",
        )
    ]


def test_duplicate_key_is_out_of_order(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    records = [Record("a", "1"), Record("a", "2")]
    manifest = run(
        write_raw_snapshot(repo, [RawPart(compress_lines(records), 2, "a", "a")])
    )
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert result.problems[0].message == (
        "record 2 key 'a' does not sort after the previous key 'a'"
    )


def test_key_order_across_parts(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    first = RawPart(compress_lines([Record("a", "1"), Record("m", "1")]), 2, "a", "b")
    second = RawPart(compress_lines([Record("c", "1")]), 1, "c", "c")
    manifest = run(write_raw_snapshot(repo, [first, second]))
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert result.problems == [
        Problem(manifest.parts[0].path, "last key 'm', expected 'b'"),
    ]
    # The byte order is UTF-8: "é" (0xC3 0xA9) sorts after "z".
    repo2 = run(Repository.init(str(tmp_path / "repo2")))
    good = RawPart(
        compress_lines([Record("z", "1"), Record("\u00e9", "1")]), 2, "z", "\u00e9"
    )
    manifest2 = run(write_raw_snapshot(repo2, [good], value_bytes=2))
    assert run(verify_snapshot(repo2, manifest2, read_data=True)).ok is True


def test_wrong_record_count(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    records = make_records(3)
    part = RawPart(compress_lines(records), 4, records[0].key, records[-1].key)
    manifest = run(write_raw_snapshot(repo, [part]))
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert result.problems == [Problem(manifest.parts[0].path, "3 records, expected 4")]


def test_corrupt_zstd_frame(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    records = make_records(200)
    data = bytearray(compress_lines(records))
    data[len(data) // 2] ^= 0xFF
    part = RawPart(bytes(data), 200, records[0].key, records[-1].key)
    manifest = run(write_raw_snapshot(repo, [part]))
    assert run(verify_snapshot(repo, manifest, read_data=False)).ok is True
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert len(result.problems) == 1
    assert result.problems[0].path == manifest.parts[0].path
    assert result.problems[0].message.startswith("invalid zstd data: ")


def test_invalid_record_line(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    lines = b'{"key":"a","value":"1"}\n{"key":"b"}\n'
    data = zstandard.ZstdCompressor().compress(lines)
    manifest = run(write_raw_snapshot(repo, [RawPart(data, 2, "a", "b")]))
    result = run(verify_snapshot(repo, manifest, read_data=True))
    assert result.problems[0].message.startswith("record 2 is not a valid record: ")


def test_totals_must_match_manifest(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(3)]))
    path = manifest_path_of(manifest)
    forged = msgspec.structs.replace(manifest, value_bytes=1, stored_bytes=5)
    result = run(verify_snapshot(repo, forged, read_data=True))
    assert result.problems == [
        Problem(
            path, f"stored_bytes is 5 but the parts add up to {manifest.stored_bytes}"
        ),
        Problem(
            path, f"value_bytes is 1 but the values add up to {manifest.value_bytes}"
        ),
    ]


def test_totals_keys_mismatch_reported_once(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(3)]))
    forged = msgspec.structs.replace(manifest, keys=4)
    result = run(verify_snapshot(repo, forged, read_data=True))
    assert result.problems == [
        Problem(manifest_path_of(manifest), "keys is 4 but the parts hold 3 records")
    ]


# Choosing snapshots and reporting failures.


def test_verify_repository_selects(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    first = run(write_snapshot(repo, [make_records(1)]))
    other = run(
        write_snapshot(
            repo, [make_records(1)], namespace_id=OTHER_NAMESPACE, title="sessions"
        )
    )
    every = run(verify_repository(repo))
    assert sorted(result.snapshot_id for result in every) == sorted(
        [first.id, other.id]
    )
    latest = run(verify_repository(repo, "latest", namespace="sessions"))
    assert [result.snapshot_id for result in latest] == [other.id]
    by_namespace = run(verify_repository(repo, namespace=NAMESPACE))
    assert [result.snapshot_id for result in by_namespace] == [first.id]
    with pytest.raises(SnapshotNotFound, match="not sessions"):
        run(verify_repository(repo, first.id, namespace="sessions"))


def test_verify_repository_reports_truncated_manifest(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    bad = run(write_snapshot(repo, [make_records(1)]))
    good = run(
        write_snapshot(
            repo, [make_records(1)], namespace_id=OTHER_NAMESPACE, title="sessions"
        )
    )
    bad_path = truncate_manifest(repo, bad)
    expected_problem = Problem(bad_path, "invalid manifest: Input data was truncated")

    for read_data in (False, True):
        every = run(verify_repository(repo, read_data=read_data))
        assert [(result.snapshot_id, result.ok) for result in every] == [
            (good.id, True),
            (bad.id, False),
        ]
        assert every[1].problems == [expected_problem]
        assert every[1].namespace_id == NAMESPACE
        assert every[1].read_started == "2025-03-01T02:00:05Z"

    (selected,) = run(verify_repository(repo, bad.id[:6]))
    assert selected.ok is False
    assert selected.problems == [expected_problem]
    by_namespace = run(verify_repository(repo, namespace=NAMESPACE))
    assert [result.snapshot_id for result in by_namespace] == [bad.id]
    latest = run(verify_repository(repo, "latest@sessions"))
    assert [result.snapshot_id for result in latest] == [good.id]


def test_raise_for_failures_names_each_part(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    good = run(write_snapshot(repo, [make_records(1)]))
    bad = run(write_snapshot(repo, [make_records(2), make_records(2, "z")]))
    first_path, second_path = truncate_parts(repo, bad)
    results = run(verify_repository(repo))
    assert {result.snapshot_id: result.ok for result in results} == {
        good.id: True,
        bad.id: False,
    }
    with pytest.raises(VerifyError) as caught:
        raise_for_failures(results)
    lines = str(caught.value).splitlines()
    assert lines[0] == "1 of 2 snapshots failed verification:"
    assert lines[1].startswith(f"{bad.id}: {first_path}: size is 0 bytes")
    assert lines[2].startswith(f"{bad.id}: {second_path}: size is ")
    assert caught.value.exit_code == 4
    raise_for_failures([r for r in results if r.ok])


# The command line.


def test_cli_verify_truncated_exit_4(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [make_records(20), make_records(20, "z")]))
    first_path, second_path = truncate_parts(repo, manifest)

    full = cli("verify", "--read-data", repo=url)
    assert full.returncode == 4
    stdout_lines = full.stdout.splitlines()
    assert stdout_lines[0] == (
        f"FAILED {manifest.id} production-config 2025-03-01T02:00:05.250Z"
        " (2 parts, 0 records)"
    )
    assert stdout_lines[1].startswith(f"  {first_path}: size is 0 bytes")
    assert "; sha256 is " in stdout_lines[1]
    assert stdout_lines[2].startswith(f"  {second_path}: size is ")
    assert "; sha256 is " in stdout_lines[2]
    assert full.stderr.startswith("error: 1 of 1 snapshots failed verification:\n")
    assert first_path in full.stderr
    assert second_path in full.stderr

    quick = cli("verify", manifest.id[:6], "--json", repo=url)
    assert quick.returncode == 4
    result = json.loads(quick.stdout)
    assert result["ok"] is False
    assert result["read_data"] is False
    assert [problem["path"] for problem in result["problems"]] == [
        first_path,
        second_path,
    ]
    assert result["problems"][0]["message"] == (
        f"size is 0 bytes, expected {manifest.parts[0].size}"
    )


def test_cli_verify_ok(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [make_records(3)]))
    done = cli("verify", "--read-data", "--json", repo=url)
    assert done.returncode == 0
    assert done.stderr == ""
    results = json.loads(done.stdout)
    assert len(results) == 1
    assert results[0]["snapshot_id"] == manifest.id
    assert results[0]["records_checked"] == 3
    assert results[0]["problems"] == []
    text = cli("verify", "latest", repo=url)
    assert text.returncode == 0
    assert text.stdout == (
        f"ok     {manifest.id} production-config 2025-03-01T02:00:05.250Z (1 parts)\n"
    )


def test_cli_verify_truncated_manifest_exit_4(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    bad = run(write_snapshot(repo, [make_records(1)]))
    good = run(
        write_snapshot(
            repo, [make_records(1)], namespace_id=OTHER_NAMESPACE, title="sessions"
        )
    )
    bad_path = truncate_manifest(repo, bad)
    problem = f"{bad_path}: invalid manifest: Input data was truncated"

    for extra in ([], ["--read-data"], [bad.id]):
        done = cli("verify", *extra, repo=url)
        assert done.returncode == 4, extra
        lines = done.stdout.splitlines()
        failed = f"FAILED {bad.id} {NAMESPACE} 2025-03-01T02:00:05Z (0 parts"
        assert any(line.startswith(failed) for line in lines)
        assert f"  {problem}" in lines
        assert done.stderr.startswith("error: 1 of ")
        assert f"{bad.id}: {problem}" in done.stderr
    every = cli("verify", repo=url)
    assert every.stdout.splitlines()[0].startswith(f"ok     {good.id} sessions ")


def test_cli_verify_unknown_snapshot_exit_22(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    run(Repository.init(url))
    done = cli("verify", "abcdef", repo=url)
    assert done.returncode == 22
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: no snapshot 'abcdef' in {url}\n")


@pytest.mark.s3
def test_cli_verify_on_s3(rclone_bucket: str) -> None:
    repo = run(Repository.init(rclone_bucket))
    manifest = run(write_snapshot(repo, [make_records(20), make_records(20, "z")]))
    truncate_parts(repo, manifest)
    done = cli("verify", "--read-data", repo=rclone_bucket)
    assert done.returncode == 4
    assert done.stdout.startswith(f"FAILED {manifest.id} ")
    assert "AWS_SECRET_ACCESS_KEY" not in done.stderr
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
