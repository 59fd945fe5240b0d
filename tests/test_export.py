"""Tests of kvsnap.export and the `kvsnap export` command."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import threading
from pathlib import Path

import msgspec
import pytest

from kvsnap.errors import ConfigError, CorruptPart, VerifyError
from kvsnap.export import export_snapshot, export_to_file
from kvsnap.format import Manifest, Record, encode_json
from kvsnap.repository import Repository, manifest_path_of
from tests.test_repository import make_records, run, write_snapshot
from tests.test_verify import cli, truncate_parts

RECORDS = [
    Record("binary", base64.b64encode(b"\x00\x9f\xff").decode(), base64=True),
    Record("json-text", '{"b":1, "a":2}'),
    Record("number-text", "123"),
    Record("with-expiration", "soon", expiration=1_900_000_000),
    Record("with-metadata", "v", metadata={"owner": "ops", "n": [1, 2]}),
    Record("\u00e9t\u00e9", "unicode key", metadata=None),
]

EXPECTED = [
    {"key": "binary", "value": "AJ//", "base64": True},
    {"key": "json-text", "value": '{"b":1, "a":2}'},
    {"key": "number-text", "value": "123"},
    {"key": "with-expiration", "value": "soon", "expiration": 1_900_000_000},
    {"key": "with-metadata", "value": "v", "metadata": {"owner": "ops", "n": [1, 2]}},
    {"key": "\u00e9t\u00e9", "value": "unicode key", "metadata": None},
]


def export_bytes(repo: Repository, manifest) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    run(export_snapshot(repo, manifest, out))
    return out.getvalue()


def test_export_matches_records_exactly(repo_url: str) -> None:
    repo = run(Repository.init(repo_url))
    manifest = run(write_snapshot(repo, [RECORDS[:2], RECORDS[2:5], RECORDS[5:]]))
    exported = export_bytes(repo, manifest)
    assert json.loads(exported) == EXPECTED
    # Values are copied, never parsed: the text keeps its spaces and key order.
    assert b'"value":"{\\"b\\":1, \\"a\\":2}"' in exported
    assert b'"value":"123"' in exported
    assert b'"base64":false' not in exported
    assert exported.startswith(b'[\n{"key":"binary",')
    assert exported.endswith(b'"metadata":null}\n]\n')
    assert exported.count(b",\n") == len(RECORDS) - 1


def test_export_decodes_binary_exactly(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    raw = bytes(range(256))
    manifest = run(write_snapshot(repo, [[Record.from_bytes("blob", raw)]]))
    (element,) = json.loads(export_bytes(repo, manifest))
    assert element["base64"] is True
    assert base64.b64decode(element["value"]) == raw


def test_export_warns_of_scalar_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    records = [
        Record("a", "v", metadata="a string"),
        Record("b", "v", metadata=7),
        Record("c", "v", metadata=None),
        Record("d", "v", metadata={"ok": True}),
    ]
    manifest = run(write_snapshot(repo, [records]))

    with caplog.at_level("WARNING", logger="kvsnap.export"):
        export_bytes(repo, manifest)

    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("2 keys have metadata that is not a JSON object")


def test_export_empty_snapshot(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, []))
    assert export_bytes(repo, manifest) == b"[]\n"


def test_export_to_file_renames_when_complete(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    target = tmp_path / "out.json"
    result = run(export_to_file(repo, manifest, target))
    assert result.records == 20
    assert result.bytes_written == target.stat().st_size
    assert len(json.loads(target.read_bytes())) == 20
    assert not (tmp_path / "out.json.partial").exists()


def test_export_bad_part_leaves_no_file(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    truncate_parts(repo, manifest)
    target = tmp_path / "out.json"
    with pytest.raises(CorruptPart, match="size is 0 bytes"):
        run(export_to_file(repo, manifest, target))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo"]


def test_export_bad_second_part_keeps_old_file(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    run(repo.storage.put(manifest.parts[1].path, b"garbage"))
    target = tmp_path / "out.json"
    target.write_text("previous export")
    with pytest.raises(CorruptPart) as caught:
        run(export_to_file(repo, manifest, target))
    assert caught.value.path == manifest.parts[1].path
    assert target.read_text() == "previous export"
    assert not (tmp_path / "out.json.partial").exists()


def test_export_to_fifo_writes_in_place(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    # About 150 KB, more than the 64 KiB of a Linux pipe, so both sides alternate.
    manifest = run(write_snapshot(repo, [make_records(2000), make_records(2000, "z")]))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    # A second name for the FIFO lets the test release a blocked reader even
    # if the export renamed a file over `fifo`.
    spare_name = tmp_path / "spare.fifo"
    os.link(fifo, spare_name)
    received: list[bytes] = []

    def read_all() -> None:
        with fifo.open("rb") as reader:
            received.append(reader.read())

    reader_thread = threading.Thread(target=read_all, daemon=True)
    reader_thread.start()
    try:
        result = run(export_to_file(repo, manifest, fifo))
        reader_thread.join(timeout=30)
    finally:
        if reader_thread.is_alive():
            os.close(os.open(spare_name, os.O_WRONLY | os.O_NONBLOCK))
            reader_thread.join(timeout=30)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert len(received) == 1
    assert len(json.loads(received[0])) == 4000
    assert result.bytes_written == len(received[0])
    assert not (tmp_path / "out.fifo.partial").exists()


def test_export_through_symlink_keeps_link(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(5)]))
    (tmp_path / "exports").mkdir()
    real = tmp_path / "exports" / "real.json"
    real.write_text("previous export")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    missing = tmp_path / "exports" / "new.json"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(missing)

    run(export_to_file(repo, manifest, link))
    run(export_to_file(repo, manifest, dangling))
    assert link.is_symlink()
    assert link.readlink() == real
    assert dangling.is_symlink()
    assert len(json.loads(real.read_bytes())) == 5
    assert missing.read_bytes() == real.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "dangling.json",
        "exports",
        "link.json",
        "repo",
    ]
    assert sorted(path.name for path in real.parent.iterdir()) == [
        "new.json",
        "real.json",
    ]


def test_export_to_folder_is_config_error(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(1)]))
    with pytest.raises(ConfigError) as caught:
        run(export_to_file(repo, manifest, tmp_path))
    assert str(caught.value) == f"cannot write export file {tmp_path}: it is a folder"


def store_manifest(repo: Repository, manifest: Manifest) -> None:
    run(repo.storage.put(manifest_path_of(manifest), encode_json(manifest)))


def test_export_rejects_manifest_without_last_part(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    forged = msgspec.structs.replace(manifest, parts=manifest.parts[:1])
    store_manifest(repo, forged)
    target = tmp_path / "out.json"
    with pytest.raises(VerifyError) as caught:
        run(export_to_file(repo, forged, target))
    message = str(caught.value)
    assert message.startswith(f"snapshot {manifest.id} failed verification: ")
    assert "keys is 20 but the parts hold 10 records" in message
    assert caught.value.exit_code == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo"]


def test_export_rejects_wrong_value_bytes(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    manifest = run(write_snapshot(repo, [make_records(10)]))
    forged = msgspec.structs.replace(manifest, value_bytes=manifest.value_bytes + 1)
    target = tmp_path / "out.json"
    with pytest.raises(VerifyError, match="value_bytes is") as caught:
        run(export_to_file(repo, forged, target))
    assert caught.value.exit_code == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo"]

    out = io.BytesIO()
    with pytest.raises(VerifyError):
        run(export_snapshot(repo, forged, out))
    assert not out.getvalue().rstrip().endswith(b"]")


# The command line.


def test_cli_export_stdout_and_file(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [RECORDS[:3], RECORDS[3:]]))

    to_stdout = cli("export", "latest", repo=url)
    assert to_stdout.returncode == 0
    assert to_stdout.stderr == ""
    assert json.loads(to_stdout.stdout) == EXPECTED

    target = tmp_path / "export.json"
    to_file = cli("export", manifest.id[:8], "-o", str(target), repo=url)
    assert to_file.returncode == 0
    assert to_file.stdout == ""
    assert to_file.stderr == (
        f"exported 6 records of snapshot {manifest.id} to {target}\n"
    )
    assert target.read_text() == to_stdout.stdout


def test_cli_export_corrupt_part_fails(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    first_path, _ = truncate_parts(repo, manifest)
    target = tmp_path / "export.json"

    to_file = cli("export", "latest", "-o", str(target), repo=url)
    assert to_file.returncode == 4
    assert to_file.stdout == ""
    assert to_file.stderr.startswith(
        f"error: part {first_path} is corrupt: size is 0 bytes"
    )
    assert not target.exists()
    assert not (tmp_path / "export.json.partial").exists()

    to_stdout = cli("export", "latest", repo=url)
    assert to_stdout.returncode == 4
    assert to_stdout.stdout == "["
    assert to_stdout.stderr.startswith(f"error: part {first_path} is corrupt")


def test_cli_export_checks_manifest_totals(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = run(Repository.init(url))
    manifest = run(write_snapshot(repo, [make_records(10), make_records(10, "z")]))
    store_manifest(repo, msgspec.structs.replace(manifest, parts=manifest.parts[:1]))
    target = tmp_path / "export.json"

    to_file = cli("export", "latest", "-o", str(target), repo=url)
    assert to_file.returncode == 4
    assert to_file.stdout == ""
    assert to_file.stderr.startswith(
        f"error: snapshot {manifest.id} failed verification:"
        f" {manifest_path_of(manifest)}: keys is 20 but the parts hold 10 records"
    )
    assert not target.exists()
    assert not (tmp_path / "export.json.partial").exists()

    store_manifest(repo, msgspec.structs.replace(manifest, keys=19))
    to_stdout = cli("export", "latest", repo=url)
    assert to_stdout.returncode == 4
    assert to_stdout.stdout == ""
    assert "keys is 19 but the parts hold 20 records" in to_stdout.stderr


def test_cli_export_needs_repository(tmp_path: Path) -> None:
    done = cli("export", "latest", repo="")
    assert done.returncode == 10
    assert done.stdout == ""
    assert done.stderr == (
        "error: no repository given: pass --repo or set KVSNAP_REPOSITORY\n"
        "hint: for example --repo ./backups, s3://bucket/kv or r2://bucket/kv\n"
    )
