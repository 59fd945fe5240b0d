"""Backup and restore through the CLI under injected faults: correct or loud.

Each run either exits 0 with exactly the fault-free result, or exits
non-zero with an error message and leaves no trace it did not report: a
failed backup publishes no manifest, and a failed restore leaves every key
either as it was before or as the plan writes it, in the order the plan
writes, up to the keys that its output reports.

API faults come from the emulator's random faults (`--fault-rate`);
object-store faults from `FaultProxy` in front of `rclone serve s3`. The
default run covers a few seeds; the ``slow`` variants cover many more.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvsnap import limits
from kvsnap.cloudflare import KvClient, ReadStats
from kvsnap.emulator import EmulatorServer, Fault
from kvsnap.emulator.faults import RandomFaults
from kvsnap.format import encode_record
from kvsnap.seed import SeedEntry, write_entries
from tests.kvtools import (
    CliResult,
    cloudflare_env,
    create_namespace,
    records,
    run_cli,
    sdk,
    snapshots,
)
from tests.s3servers import FaultProxy, free_port, running_proxy

TITLE = "faulty"
# Enough keys for several list pages, bulk gets and raw reads (binary values).
TEXT_KEYS = 1200
BINARY_KEYS = 40
FAST_SEEDS = [1, 2]
SLOW_SEEDS = [3, *range(10, 30)]
FAULT_RATE = 0.15
# Fewer attempts make some runs fail, so the failure path is checked too.
FEW_ATTEMPTS = "2"


def source_entries() -> list[SeedEntry]:
    generator = random.Random(5)
    entries = [
        SeedEntry(f"text/{i:05d}", f"value {i} {'x' * (i % 50)}".encode())
        for i in range(TEXT_KEYS)
    ]
    entries += [
        SeedEntry(f"bin/{i:03d}", generator.randbytes(64) + b"\xff\xfe")
        for i in range(BINARY_KEYS)
    ]
    for index in range(0, len(entries), 7):
        entry = entries[index]
        entries[index] = SeedEntry(entry.key, entry.value, metadata={"n": index})
    return entries


Records = dict[str, bytes]


def namespace_records(server: EmulatorServer, namespace_id: str) -> Records:
    """Read a namespace without faults: {key: encoded record}."""

    async def read() -> Records:
        client = KvClient(
            api_token=server.token,
            account_id=server.account_id,
            base_url=server.base_url,
        )
        async with client:
            return {
                record.key: encode_record(record)
                async for record in client.read_records(namespace_id, ReadStats())
            }

    saved = server.random_faults
    server.random_faults = None
    try:
        return asyncio.run(read())
    finally:
        server.random_faults = saved


def snapshot_records(repo: str) -> list[bytes]:
    [manifest] = snapshots(repo)
    return [encode_record(record) for record in records(repo, manifest)]


@dataclass
class Source:
    """A seeded emulator folder, its namespace and a fault-free backup of it."""

    data_dir: Path
    namespace_id: str
    clean_repo: str
    clean_records: list[bytes]
    clean_by_key: Records


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    folder = tmp_path_factory.mktemp("fault-source")
    repo = str(folder / "clean-repo")
    with EmulatorServer(folder / "kv") as server:
        namespace_id = create_namespace(server, TITLE, source_entries())
        done = run_cli(["backup", TITLE, "--repo", repo], cloudflare_env(server))
        assert done.code == 0, done.stderr
    [manifest] = snapshots(repo)
    by_key = {record.key: encode_record(record) for record in records(repo, manifest)}
    return Source(folder / "kv", namespace_id, repo, snapshot_records(repo), by_key)


def faulty_server(
    source: Source, tmp_path: Path, seed: int, kinds: list[str] | None = None
) -> EmulatorServer:
    """An emulator over a copy of the source data, with random faults on."""
    data_dir = tmp_path / "kv"
    shutil.copytree(source.data_dir, data_dir)
    return EmulatorServer(
        data_dir, fault_rate=FAULT_RATE, fault_seed=seed, fault_kinds=kinds or ()
    )


def assert_loud(result: CliResult) -> None:
    assert result.code != 0
    assert "error:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# Backups.


def check_backup(source: Source, tmp_path: Path, seed: int, *args: str) -> CliResult:
    repo = str(tmp_path / "repo")
    with faulty_server(source, tmp_path, seed) as server:
        result = run_cli(
            ["backup", TITLE, "--repo", repo, *args], cloudflare_env(server)
        )
        faults = server.stats()["faults"]

    assert faults, "the run saw no fault; raise the rate or the data size"
    if result.code == 0:
        assert snapshot_records(repo) == source.clean_records, result.stderr
    else:
        assert_loud(result)
        assert manifest_files(repo) == []
    return result


def manifest_files(repo: str) -> list[Path]:
    """The manifests under a local repository, or none if it was never made."""
    return [path for path in Path(repo, "snapshots").rglob("*") if path.is_file()]


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_backup_under_api_faults(source: Source, tmp_path: Path, seed: int) -> None:
    check_backup(source, tmp_path, seed)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_backup_under_api_faults_few_attempts(
    source: Source, tmp_path: Path, seed: int
) -> None:
    check_backup(source, tmp_path, seed, "--max-attempts", FEW_ATTEMPTS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
@pytest.mark.parametrize("attempts", ["8", FEW_ATTEMPTS])
def test_backup_under_api_faults_many_seeds(
    source: Source, tmp_path: Path, seed: int, attempts: str
) -> None:
    check_backup(source, tmp_path, seed, "--max-attempts", attempts)


# Restores.


def damage(server: EmulatorServer, namespace_id: str) -> None:
    """Change the namespace so a restore must write and delete."""
    client = sdk(server)
    changed = [
        SeedEntry(f"text/{i:05d}", b"changed") for i in range(0, TEXT_KEYS, 3)
    ] + [SeedEntry(f"extra/{i:03d}", b"not in the snapshot") for i in range(150)]
    write_entries(client, server.account_id, namespace_id, changed)
    client.kv.namespaces.bulk_delete(
        namespace_id,
        account_id=server.account_id,
        body=[f"text/{i:05d}" for i in range(1, TEXT_KEYS, 5)],
    )


def reported_counts(result: CliResult, verb: str) -> tuple[int, int]:
    """Keys a failed restore reports as written (or deleted), and as maybe so."""
    found = re.search(
        rf"{verb} (\d+) of \d+ planned keys(?: and up to (\d+) more)?",
        result.stderr,
    )
    if found is None:
        return 0, 0
    return int(found.group(1)), int(found.group(2) or 0)


def check_restore(source: Source, tmp_path: Path, seed: int, *args: str) -> None:
    # The restore adds a pre-restore snapshot, so it gets its own repository.
    repo = str(tmp_path / "repo")
    shutil.copytree(source.clean_repo, repo)
    with faulty_server(source, tmp_path, seed) as server:
        saved = server.random_faults
        server.random_faults = None
        damage(server, source.namespace_id)
        before = namespace_records(server, source.namespace_id)
        server.random_faults = saved

        options = ["--conflict", "overwrite", "--exact", "--yes"]
        options += ["--readback-window", "5", *args]
        result = run_cli(
            ["restore", f"latest@{source.namespace_id}", "--repo", repo, *options],
            cloudflare_env(server),
        )
        faults = server.stats()["faults"]
        after = namespace_records(server, source.namespace_id)

    assert faults, "the run saw no fault; raise the rate or the data size"
    expected = source.clean_by_key
    if result.code == 0:
        assert after == expected, result.stderr
        return
    assert_loud(result)
    assert_only_reported_writes(before, expected, after, result)


def assert_only_reported_writes(
    before: Records, expected: Records, after: Records, result: CliResult
) -> None:
    """Check a failed restore: each key as before, or as planned if reported.

    The plan writes keys in byte order, then deletes them in byte order, so
    the first N of each are done, the next M (the failed request) may be
    done, and the rest must be as they were.
    """
    writes = sorted(key for key in expected if before.get(key) != expected[key])
    deletes = sorted(set(before) - set(expected))
    for keys, verb, planned in (
        (writes, "wrote", expected.get),
        (deletes, "deleted", lambda _key: None),
    ):
        done, maybe = reported_counts(result, verb)
        for index, key in enumerate(keys):
            if index < done:
                assert after.get(key) == planned(key), (key, result.stderr)
            elif index < done + maybe:
                assert after.get(key) in (before.get(key), planned(key)), key
            else:
                assert after.get(key) == before.get(key), (key, result.stderr)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_restore_under_api_faults(source: Source, tmp_path: Path, seed: int) -> None:
    check_restore(source, tmp_path, seed)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_restore_under_api_faults_few_attempts(
    source: Source, tmp_path: Path, seed: int
) -> None:
    check_restore(source, tmp_path, seed, "--max-attempts", FEW_ATTEMPTS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
@pytest.mark.parametrize("attempts", ["8", FEW_ATTEMPTS])
def test_restore_under_api_faults_many_seeds(
    source: Source, tmp_path: Path, seed: int, attempts: str
) -> None:
    check_restore(source, tmp_path, seed, "--max-attempts", attempts)


def test_random_faults_property_round_trip(tmp_path: Path) -> None:
    server = EmulatorServer(tmp_path / "kv")
    faults = RandomFaults(0.5, seed=1)
    server.random_faults = faults
    assert server.random_faults is faults
    server.random_faults = None
    assert server.random_faults is None


_ = FaultProxy


# A restore that fails after its first write names what it changed.


def scripted_restore(
    source: Source, tmp_path: Path, endpoint: str, fault: Fault
) -> tuple[CliResult, Records, Records]:
    """Restore with `fault` on every request to `endpoint`; no random faults."""
    repo = str(tmp_path / "repo")
    shutil.copytree(source.clean_repo, repo)
    data_dir = tmp_path / "kv"
    shutil.copytree(source.data_dir, data_dir)
    with EmulatorServer(data_dir) as server:
        damage(server, source.namespace_id)
        before = namespace_records(server, source.namespace_id)
        server.inject(endpoint, [fault], repeat_last=True)
        options = ["--conflict", "overwrite", "--exact", "--yes"]
        options += ["--max-attempts", "2"]
        result = run_cli(
            ["restore", f"latest@{source.namespace_id}", "--repo", repo, *options],
            cloudflare_env(server),
        )
        server.clear_faults()
        after = namespace_records(server, source.namespace_id)
    return result, before, after


def test_restore_failed_delete_reports_writes(source: Source, tmp_path: Path) -> None:
    result, before, after = scripted_restore(
        source, tmp_path, "POST bulk/delete", Fault(status=500)
    )

    assert result.code == 12
    assert re.search(r"wrote (\d+) of \1 planned keys and deleted 0 of", result.stderr)
    assert "pre-restore snapshot" in result.stderr
    assert_only_reported_writes(before, source.clean_by_key, after, result)


def test_restore_lost_write_answer_reported(source: Source, tmp_path: Path) -> None:
    # The server stores every bulk write but the answers are cut short.
    result, before, after = scripted_restore(
        source, tmp_path, "PUT bulk", Fault(truncate=True, pass_through=True)
    )

    assert result.code == 12
    assert re.search(r"wrote 0 of (\d+) planned keys and up to \1 more", result.stderr)
    assert_only_reported_writes(before, source.clean_by_key, after, result)
    assert after != before, "the cut answers came after the writes were stored"


# Object-store faults: part and manifest uploads through FaultProxy.

PART = r"/data/.*\.jsonl\.zst$"
MANIFEST = r"/snapshots/"


def s3_backup(
    source: Source, tmp_path: Path, url: str, **extra_env: str
) -> tuple[CliResult, list[bytes] | None]:
    """Back up the source namespace to `url`; return the result and records."""
    data_dir = tmp_path / "kv"
    shutil.copytree(source.data_dir, data_dir)
    aws = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
    with EmulatorServer(data_dir) as server:
        result = run_cli(
            ["backup", TITLE, "--repo", url, "--part-size", "16KiB"],
            cloudflare_env(server, **aws, **extra_env),
        )
    found = snapshots(url)
    if not found:
        return result, None
    [manifest] = found
    return result, [encode_record(record) for record in records(url, manifest)]


@pytest.mark.s3
@pytest.mark.parametrize(
    ("action", "status", "times"),
    [
        ("status", 503, 2),
        ("cut", 0, 2),
        pytest.param("drop", 0, 1, marks=pytest.mark.slow),
        ("lose_answer", 0, 2),
    ],
)
def test_backup_part_faults_recovered(
    source: Source,
    tmp_path: Path,
    fault_proxy: tuple[FaultProxy, str],
    action: str,
    status: int,
    times: int,
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", PART, status, times=times, action=action)

    result, stored = s3_backup(source, tmp_path, url)

    assert result.code == 0, result.stderr
    assert stored == source.clean_records
    assert len(proxy.requests_to("PUT", PART)) > times


@pytest.mark.s3
@pytest.mark.parametrize(
    ("path", "action", "status"),
    [
        (PART, "status", 500),
        pytest.param(PART, "cut", 0, marks=pytest.mark.slow),
        pytest.param(MANIFEST, "status", 503, marks=pytest.mark.slow),
        (MANIFEST, "drop", 0),
    ],
)
def test_backup_store_faults_loud(
    source: Source,
    tmp_path: Path,
    fault_proxy: tuple[FaultProxy, str],
    path: str,
    action: str,
    status: int,
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", path, status, action=action)

    result, stored = s3_backup(source, tmp_path, url)

    assert_loud(result)
    assert result.code == 20
    assert stored is None


@pytest.mark.s3
def test_backup_lost_manifest_answer_publishes_once(
    source: Source, tmp_path: Path, fault_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", MANIFEST, times=1, action="lose_answer")

    result, stored = s3_backup(source, tmp_path, url)

    # The manifest was stored though its answer was lost: either the retry
    # finds it and the run succeeds, or the run fails loudly. Never two.
    if result.code == 0:
        assert stored == source.clean_records
    else:
        assert_loud(result)
    assert len(snapshots(url)) <= 1


# Hung part uploads: the proxy never answers, so only the object-store request
# timeout (KVSNAP_STORAGE_TIMEOUT, 120 s by default) ends each request.


def test_fault_proxy_hang_ends_on_close() -> None:
    # No client timeout here: closing the proxy must end the hanging request.
    with running_proxy(free_port()) as (proxy, endpoint):
        proxy.fail("PUT", "/bucket/", action="hang")
        port = int(endpoint.rsplit(":", 1)[1])
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        client.request("PUT", "/bucket/key", body=b"data")
        deadline = time.monotonic() + 10
        while not proxy.requests_to("PUT", "/bucket/") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.open_connections() == 1
        started = time.monotonic()
    closed_after = time.monotonic() - started

    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        client.getresponse()
    client.close()
    assert closed_after < 2
    assert proxy.open_connections() == 0


def hung_requests(proxy: FaultProxy) -> Counter[str]:
    """Count the hung part PUTs by path."""
    return Counter(
        request.path for request in proxy.requests_to("PUT", PART) if request.injected
    )


@pytest.mark.s3
def test_backup_part_hang_once_recovered(
    source: Source, tmp_path: Path, fault_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", PART, times=1, action="hang")

    started = time.monotonic()
    result, stored = s3_backup(source, tmp_path, url, KVSNAP_STORAGE_TIMEOUT="3s")
    elapsed = time.monotonic() - started

    assert result.code == 0, result.stderr
    assert stored == source.clean_records
    assert sum(hung_requests(proxy).values()) == 1
    # The hung request ended by the 3 s timeout, not the 120 s default.
    assert 3 <= elapsed < 60, result.stderr


@pytest.mark.s3
def test_backup_part_hang_always_loud(
    source: Source, tmp_path: Path, fault_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", PART, action="hang")

    started = time.monotonic()
    result, stored = s3_backup(source, tmp_path, url, KVSNAP_STORAGE_TIMEOUT="1s")
    elapsed = time.monotonic() - started

    assert_loud(result)
    assert result.code == 20
    assert stored is None
    assert "(timed out)" in result.stderr
    assert "hint: each request may take 1 s" in result.stderr
    # Each of kvsnap's attempts is one request plus obstore's retries.
    tries = limits.STORAGE_MAX_ATTEMPTS * (limits.STORAGE_CLIENT_MAX_RETRIES + 1)
    assert max(hung_requests(proxy).values()) == tries
    assert elapsed < 60, result.stderr


def env_with_storage_timeout(value: str) -> dict[str, str]:
    env = {
        name: text
        for name, text in os.environ.items()
        if not name.startswith(("KVSNAP_", "AWS_"))
    }
    env["KVSNAP_STORAGE_TIMEOUT"] = value
    return env


@pytest.mark.parametrize("value", ["soon", "0s", "500ms", "0.5s"])
def test_storage_timeout_invalid_rejected(tmp_path: Path, value: str) -> None:
    env = env_with_storage_timeout(value)

    result = run_cli(["snapshots", "--repo", str(tmp_path / "repo")], env)

    assert result.code == 10
    assert f"invalid KVSNAP_STORAGE_TIMEOUT {value!r}" in result.stderr
    assert "unset it for the default of 120s" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_config_show_lists_storage_timeout(tmp_path: Path) -> None:
    env = env_with_storage_timeout("30s")

    result = run_cli(["config", "show", "--json"], env, tmp_path)

    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["storage"]["variables"] == {"KVSNAP_STORAGE_TIMEOUT": "30s"}
