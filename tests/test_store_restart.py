"""Backup and restore while the S3 server is killed and started again.

A test starts its own `rclone serve s3`, with a `FaultProxy` in front that
slows part transfers down so that the run is still moving parts when the
server is killed (SIGKILL). The server comes back on the same port and
folder about a second later. The run must be correct or loud: exit 0 with
exactly the source's records, or a non-zero exit with an `error:` line, no
traceback and no snapshot that it did not report. Parts of a failed backup
stay as orphans, which no listing shows as a snapshot and which prune
removes once they are older than its orphan grace.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.format import Manifest, encode_record
from kvsnap.repository import Repository
from kvsnap.retention import Retention, prune
from kvsnap.seed import SeedEntry
from tests.kvtools import (
    CliResult,
    cloudflare_env,
    create_namespace,
    records,
    run_cli,
    snapshots,
)
from tests.s3servers import (
    FaultProxy,
    RcloneProcess,
    new_rclone_url,
    running_proxy,
    set_s3_environment,
)
from tests.test_faults import (
    Records,
    assert_loud,
    assert_only_reported_writes,
    damage,
    namespace_records,
)

pytestmark = pytest.mark.s3

TITLE = "faulty"
# 1200 text keys (as tests.test_faults.damage expects) and 2000 keys of
# random bytes in base64, which compress little: about 35 parts of 16 KiB.
# Values that are not UTF-8 would be read one request each, and the rate
# limit would stretch the run to minutes.
TEXT_KEYS = 1200
RANDOM_KEYS = 2000
RANDOM_VALUE_BYTES = 150
PART_SIZE = "16KiB"
PART = r"/data/.*\.jsonl\.zst$"
# Each part transfer waits this long in the proxy, so a run takes seconds.
PART_DELAY_SECONDS = 0.05
# The server is killed once the run has moved this many parts.
PARTS_BEFORE_KILL = 5
OUTAGE_SECONDS = 1.0
# Longer than kvsnap's retries last against a refused connection (about 5 s
# with the STORAGE_* defaults, measured 4-5 s), so the run fails.
LONG_OUTAGE_SECONDS = 12.0
RUN_TIMEOUT_SECONDS = 240.0


@dataclass
class Source:
    data_dir: Path
    namespace_id: str


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    folder = tmp_path_factory.mktemp("restart-source")
    generator = random.Random(7)
    entries = [
        SeedEntry(f"text/{i:05d}", f"value {i} {'x' * (i % 50)}".encode())
        for i in range(TEXT_KEYS)
    ]
    entries += [
        SeedEntry(
            f"random/{i:05d}",
            base64.b64encode(generator.randbytes(RANDOM_VALUE_BYTES)),
        )
        for i in range(RANDOM_KEYS)
    ]
    with EmulatorServer(folder / "kv") as server:
        namespace_id = create_namespace(server, TITLE, entries)
    return Source(folder / "kv", namespace_id)


@dataclass
class Setup:
    """An emulator over a copy of the source, and rclone behind a proxy."""

    server: EmulatorServer
    rclone: RcloneProcess
    proxy: FaultProxy
    url: str
    source: Source

    def env(self) -> dict[str, str]:
        aws = {
            name: text for name, text in os.environ.items() if name.startswith("AWS_")
        }
        return cloudflare_env(self.server, **aws)


@pytest.fixture
def setup(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    data_dir = tmp_path / "kv"
    shutil.copytree(source.data_dir, data_dir)
    rclone = RcloneProcess(tmp_path / "rclone-s3")
    rclone.start()
    try:
        with (
            EmulatorServer(data_dir) as server,
            running_proxy(rclone.port) as (proxy, endpoint),
        ):
            set_s3_environment(monkeypatch, endpoint)
            yield Setup(server, rclone, proxy, new_rclone_url(), source)
    finally:
        rclone.stop()


def run_with_restart(
    setup: Setup, args: list[str], method: str, outage: float, logs: Path
) -> tuple[CliResult, int]:
    """Run kvsnap; kill rclone after a few part transfers, restart it later.

    The proxy's rules are cleared after the restart, so the rest of the run
    and the later runs are not slowed down.

    Returns the result and the number of part transfers seen before the kill,
    counting earlier runs too. Fails the test if the run ended before the
    server was killed.
    """
    earlier = len(setup.proxy.requests_to(method, PART))
    stdout_path, stderr_path = logs / "stdout.txt", logs / "stderr.txt"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kvsnap", *args],
            env=setup.env(),
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    try:
        moved = wait_for_parts(setup.proxy, method, earlier, process, stderr_path)
        setup.rclone.kill()
        time.sleep(outage)
        setup.rclone.start()
        setup.proxy.clear()
        code = process.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    result = CliResult(code, stdout_path.read_text(), stderr_path.read_text())
    return result, moved


def wait_for_parts(
    proxy: FaultProxy,
    method: str,
    earlier: int,
    process: subprocess.Popen[str],
    stderr: Path,
) -> int:
    """Wait for PARTS_BEFORE_KILL part transfers after `earlier` ones; return all."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        moved = len(proxy.requests_to(method, PART))
        ended = process.poll() is not None
        assert not ended, f"the run ended after {moved} parts: {stderr.read_text()}"
        if moved >= earlier + PARTS_BEFORE_KILL:
            return moved
        time.sleep(0.02)
    raise AssertionError("no part transfers within the time limit")


def backup_args(url: str) -> list[str]:
    return ["backup", TITLE, "--repo", url, "--part-size", PART_SIZE]


def stored_records(url: str, manifest: Manifest) -> Records:
    return {record.key: encode_record(record) for record in records(url, manifest)}


def prune_orphans(url: str, grace: timedelta) -> tuple[list[str], list[str]]:
    """Prune keeping every snapshot; return removed and kept orphan folders."""

    async def run() -> tuple[list[str], list[str]]:
        repository = await Repository.open(url)
        result = await prune(
            repository, Retention(keep_last=1000), dry_run=False, orphan_grace=grace
        )
        return (
            [orphan.folder for orphan in result.orphans_removed],
            [orphan.folder for orphan in result.orphans_kept],
        )

    return asyncio.run(run())


def part_folders(url: str) -> set[str]:
    """The snapshot folders data/<namespace>/<day>/<snapshot id> that hold parts."""

    async def run() -> list[tuple[str, int]]:
        repository = await Repository.open(url)
        return await repository.storage.list("data")

    return {path.rsplit("/", 1)[0] for path, _size in asyncio.run(run())}


def check_backup_with_restart(setup: Setup, outage: float, logs: Path) -> CliResult:
    """Back up with a restart; check correct or loud, then the repository's state."""
    setup.proxy.fail("PUT", PART, action="delay", delay=PART_DELAY_SECONDS)
    expected = namespace_records(setup.server, setup.source.namespace_id)

    result, moved = run_with_restart(setup, backup_args(setup.url), "PUT", outage, logs)

    assert moved < len(setup.proxy.requests_to("PUT", PART)), "no part after kill"
    if result.code == 0:
        assert len(snapshots(setup.url)) == 1
    else:
        assert_loud(result)
        assert result.code == 20, result.stderr
        assert snapshots(setup.url) == []

    # A second backup, with the server up all along, succeeds.
    again = run_cli(backup_args(setup.url), setup.env())
    assert again.code == 0, again.stderr
    found = snapshots(setup.url)
    assert len(found) == (2 if result.code == 0 else 1)
    for manifest in found:
        assert stored_records(setup.url, manifest) == expected, manifest.id
    published = {manifest.id for manifest in found}

    # Parts of the failed run are orphans: no snapshot, and prune removes them
    # once they are older than its grace (24 h by default, 0 here).
    orphans = {
        folder
        for folder in part_folders(setup.url)
        if folder.rsplit("/", 1)[1] not in published
    }
    if result.code == 0:
        assert orphans == set()
    else:
        assert len(orphans) == 1
    listed = run_cli(["snapshots", "--json", "--repo", setup.url], setup.env())
    assert listed.code == 0, listed.stderr
    for folder in orphans:
        assert folder.rsplit("/", 1)[1] not in listed.stdout
    removed, kept = prune_orphans(setup.url, timedelta(hours=24))
    assert (removed, set(kept)) == ([], orphans)
    removed, kept = prune_orphans(setup.url, timedelta(0))
    assert (set(removed), kept) == (orphans, [])
    assert {folder.rsplit("/", 1)[1] for folder in part_folders(setup.url)} == (
        published
    )
    # Every snapshot, including one made through the restart, reads in full.
    for manifest in found:
        verify = run_cli(
            ["verify", manifest.id, "--read-data", "--repo", setup.url], setup.env()
        )
        assert verify.code == 0, verify.stderr
    return result


def test_backup_server_restart_brief(setup: Setup, tmp_path: Path) -> None:
    check_backup_with_restart(setup, OUTAGE_SECONDS, tmp_path)


@pytest.mark.slow
def test_backup_server_restart_long_loud(setup: Setup, tmp_path: Path) -> None:
    result = check_backup_with_restart(setup, LONG_OUTAGE_SECONDS, tmp_path)

    assert result.code == 20, result.stderr


def check_restore_with_restart(setup: Setup, outage: float, logs: Path) -> CliResult:
    """Restore from S3 with a restart during the part downloads."""
    namespace_id = setup.source.namespace_id
    expected = namespace_records(setup.server, namespace_id)
    made = run_cli(backup_args(setup.url), setup.env())
    assert made.code == 0, made.stderr
    [original] = snapshots(setup.url)
    damage(setup.server, namespace_id)
    before = namespace_records(setup.server, namespace_id)
    setup.proxy.fail("GET", PART, action="delay", delay=PART_DELAY_SECONDS)

    options = ["--conflict", "overwrite", "--exact", "--yes", "--readback-window", "5"]
    args = ["restore", original.id, "--repo", setup.url, *options]
    result, _moved = run_with_restart(setup, args, "GET", outage, logs)

    after = namespace_records(setup.server, namespace_id)
    if result.code == 0:
        assert after == expected, result.stderr
    else:
        assert_loud(result)
        assert_only_reported_writes(before, expected, after, result)
    # Only the pre-restore snapshot may be added, and a failed run names it.
    added = [
        manifest for manifest in snapshots(setup.url) if manifest.id != original.id
    ]
    assert all("pre-restore" in manifest.tags for manifest in added)
    if result.code != 0:
        for manifest in added:
            assert manifest.id in result.stderr
    return result


def test_restore_server_restart_brief(setup: Setup, tmp_path: Path) -> None:
    check_restore_with_restart(setup, OUTAGE_SECONDS, tmp_path)


@pytest.mark.slow
def test_restore_server_restart_long_loud(setup: Setup, tmp_path: Path) -> None:
    result = check_restore_with_restart(setup, LONG_OUTAGE_SECONDS, tmp_path)

    assert result.code == 20, result.stderr
