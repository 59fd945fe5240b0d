"""Crash safety: kvsnap killed with SIGKILL, and data changing under a backup.

Each kill point is drawn from a seeded random generator, so a failing seed
repeats. The default run kills the backup at 20 points (5 seeds of 4 kills)
and the restore at 3; `KVSNAP_SLOW=1` adds 20 more backup seeds.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.format import Manifest
from kvsnap.lock import LOCKS_DIR
from kvsnap.policy import Retention
from kvsnap.repository import Repository, parse_timestamp
from kvsnap.retention import prune
from kvsnap.seed import SeedEntry, write_entries
from kvsnap.verify import verify_snapshot
from tests.kvtools import (
    cloudflare_env,
    create_namespace,
    records_by_key,
    run_cli,
    sdk,
    snapshots,
)

# The emulator responds at once, so Cloudflare's request budget would only
# slow the tests down.
FAST = ["--rate-limit", "100000/1"]
# One request at a time and small parts make the backup of BUSY_KEYS keys
# take a few seconds against the slow emulator, spread over many parts.
SLOW_BACKUP = ["--concurrency", "1", "--part-size", "16KiB", *FAST]
BUSY_KEYS = 4000
KILLS_PER_SEED = 4


def kvsnap_process(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvsnap", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after(process: subprocess.Popen[str], seconds: float) -> bool:
    """Kill our child with SIGKILL after `seconds`, or return False if it ended."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        return True
    return False


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


async def verify_all(repo_url: str) -> list[str]:
    """Return the problems of every visible snapshot, read in full."""
    if not Path(repo_url, "kvsnap.json").exists():
        return []  # killed before it created the repository
    repo = await Repository.open(repo_url)
    manifests, unreadable = await repo.scan_snapshots()
    problems = [f"{item.path}: {item.reason}" for item in unreadable]
    for manifest in manifests:
        checked = await verify_snapshot(repo, manifest, read_data=True)
        problems += [f"{p.path}: {p.message}" for p in checked.problems]
    return problems


def stored_files(repo_url: str, folder: str) -> list[str]:
    root = Path(repo_url)
    return sorted(
        str(path.relative_to(root))
        for path in (root / folder).rglob("*")
        if path.is_file()
    )


def part_paths(manifests: list[Manifest]) -> list[str]:
    return sorted(part.path for manifest in manifests for part in manifest.parts)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    """An emulator that responds to each request after 10 to 20 ms."""
    with EmulatorServer(
        tmp_path_factory.mktemp("slow-emulator"), latency_ms=(10.0, 20.0), seed=7
    ) as server:
        entries = [
            SeedEntry(f"busy/{number:05d}", f"{number:05d}".encode() * 30)
            for number in range(BUSY_KEYS)
        ]
        create_namespace(server, "busy", entries)
        yield server


@pytest.fixture(scope="module")
def backup_seconds(
    slow_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> float:
    """How long one whole backup of the busy namespace takes, process start included."""
    repo_url = str(tmp_path_factory.mktemp("timing") / "repo")
    env = cloudflare_env(slow_server, KVSNAP_REPOSITORY=repo_url)
    started = time.monotonic()
    done = run_cli(["backup", "busy", *SLOW_BACKUP], env)
    assert done.code == 0, done.stderr
    return time.monotonic() - started


# Backup killed at random points.


def kill_backups_then_recover(
    server: EmulatorServer, repo_url: str, seed: int, backup_seconds: float
) -> None:
    env = cloudflare_env(server, KVSNAP_REPOSITORY=repo_url)
    rng = random.Random(seed)
    killed = 0
    for _ in range(KILLS_PER_SEED):
        delay = rng.uniform(0.0, backup_seconds)
        process = kvsnap_process(["backup", "busy", *SLOW_BACKUP], env)
        if kill_after(process, delay):
            killed += 1
        else:
            assert process.returncode == 0, process.stderr.read()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
        problems = run(verify_all(repo_url))
        assert problems == [], f"seed {seed}, kill at {delay:.2f} s: {problems}"
    assert killed >= 1, f"seed {seed}: every backup ended before its kill"

    # The next backup succeeds, and prune with no grace removes what the
    # killed runs left: orphan parts and the locks of their dead processes.
    done = run_cli(["backup", "busy", *SLOW_BACKUP, "--json"], env)
    assert done.code == 0, done.stderr
    new_id = json.loads(done.stdout)["namespaces"][0]["snapshot_id"]

    async def prune_orphans() -> None:
        repo = await Repository.open(repo_url)
        await prune(
            repo, Retention(keep_last=1000), dry_run=False, orphan_grace=timedelta(0)
        )

    run(prune_orphans())
    manifests = snapshots(repo_url)
    assert new_id in {manifest.id for manifest in manifests}
    assert stored_files(repo_url, "data") == part_paths(manifests)
    assert stored_files(repo_url, LOCKS_DIR) == []
    verify = run_cli(["verify", "--read-data"], env)
    assert verify.code == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("seed", range(5))
def test_backup_killed_at_random_points(
    slow_server: EmulatorServer, backup_seconds: float, tmp_path: Path, seed: int
) -> None:
    kill_backups_then_recover(slow_server, str(tmp_path / "repo"), seed, backup_seconds)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_backup_killed_at_more_points(
    slow_server: EmulatorServer, backup_seconds: float, tmp_path: Path, seed: int
) -> None:
    kill_backups_then_recover(slow_server, str(tmp_path / "repo"), seed, backup_seconds)


# Restore killed while it writes.

RESTORE_KEYS = 25_000  # three bulk writes of at most 10,000 pairs
WRITE_DELAY_MS = 500.0


def count_keys(server: EmulatorServer, namespace_id: str) -> int:
    client = sdk(server)
    total = 0
    cursor = None
    for _page in range(100):
        options: dict[str, Any] = {"limit": 1000}
        if cursor:
            options["cursor"] = cursor
        raw = client.kv.namespaces.keys.with_raw_response.list(
            namespace_id, account_id=server.account_id, **options
        )
        body = json.loads(raw.http_response.content)
        total += len(body["result"])
        cursor = body["result_info"]["cursor"]
        if not cursor:
            return total
    raise AssertionError("the key list did not end after 100 pages")


def namespace_id_of(server: EmulatorServer, title: str) -> str | None:
    client = sdk(server)
    for namespace in client.kv.namespaces.list(
        account_id=server.account_id, per_page=100
    ):
        if namespace.title == title:
            return namespace.id
    return None


def bulk_writes(server: EmulatorServer) -> int:
    return server.stats()["requests"].get("PUT bulk", 0)


@dataclass(frozen=True)
class RestoreSource:
    server: EmulatorServer
    env: dict[str, str]
    snapshot_id: str


@pytest.fixture(scope="module")
def restore_source(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RestoreSource]:
    """An emulator with a backed-up namespace of RESTORE_KEYS keys."""
    folder = tmp_path_factory.mktemp("restore")
    with EmulatorServer(folder / "emulator") as server:
        entries = [
            SeedEntry(f"key/{number:05d}", f"value {number}".encode())
            for number in range(RESTORE_KEYS)
        ]
        create_namespace(server, "source", entries)
        repo_url = str(folder / "repo")
        env = cloudflare_env(server, KVSNAP_REPOSITORY=repo_url)
        assert run_cli(["backup", "source", *FAST], env).code == 0
        yield RestoreSource(server, env, snapshots(repo_url)[0].id)


@pytest.mark.parametrize("seed", range(3))
def test_restore_killed_then_rerun_converges(
    restore_source: RestoreSource, seed: int
) -> None:
    rng = random.Random(seed)
    emulator, env = restore_source.server, restore_source.env
    snapshot_id = restore_source.snapshot_id
    target = f"copy-{seed}"
    restore = ["restore", snapshot_id, "--to", target, "--create", "--yes", *FAST]

    # Every bulk write waits before it is stored, so the kill lands between
    # or during writes: after the first, second or third one has arrived.
    emulator.inject(
        "PUT bulk",
        [Fault(pass_through=True, delay_ms=WRITE_DELAY_MS)],
        repeat_last=True,
    )
    emulator.reset_stats()
    kill_at_write = rng.randint(1, 3)
    process = kvsnap_process(restore, env)
    deadline = time.monotonic() + 60
    while bulk_writes(emulator) < kill_at_write and process.poll() is None:
        assert time.monotonic() < deadline, "the restore never reached its writes"
        time.sleep(0.01)
    assert kill_after(process, rng.uniform(0.0, WRITE_DELAY_MS / 1000))
    process.stderr.close()  # type: ignore[union-attr]
    # A write that arrived before the kill is still stored after its delay.
    time.sleep(WRITE_DELAY_MS / 1000 + 0.5)
    emulator.clear_faults()

    target_id = namespace_id_of(emulator, target)
    assert target_id is not None, "the killed restore created no namespace"
    written_before = count_keys(emulator, target_id)
    # Writes go in key order, 10,000 pairs at a time, each stored whole.
    assert written_before in (0, 10_000, 20_000, RESTORE_KEYS)
    emulator.reset_stats()
    rerun = run_cli([*restore, "--json"], env)

    assert rerun.code == 0, rerun.stdout + rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["namespace_id"] == target_id
    assert report["plan"]["unchanged"] == written_before
    assert report["plan"]["create"] == RESTORE_KEYS - written_before
    assert report["written"] == RESTORE_KEYS - written_before
    expected_requests = math.ceil((RESTORE_KEYS - written_before) / 10_000)
    assert bulk_writes(emulator) == expected_requests
    diff = run_cli(["diff", snapshot_id, f"live:{target_id}"], env)
    assert diff.code == 0, diff.stdout + diff.stderr


# Keys changing while a backup reads them.


@dataclass(frozen=True)
class Change:
    """One write or delete by the writer thread, timed on the local clock."""

    key: str
    state: tuple[str, Any] | None  # (value, metadata), or None for a delete
    started: float
    finished: float


class Writer(threading.Thread):
    """Writes and deletes keys through the API until stopped or out of steps."""

    def __init__(self, server: EmulatorServer, namespace_id: str, seed: int) -> None:
        super().__init__(name="kvsnap-test-writer", daemon=True)
        self.server = server
        self.namespace_id = namespace_id
        self.rng = random.Random(seed)
        self.changes: list[Change] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        client = sdk(self.server)
        try:
            for step in range(2000):
                if self.stop.is_set():
                    return
                key = f"churn/{self.rng.randrange(CHURN_KEYS + 100):05d}"
                started = time.time()
                if self.rng.random() < 0.3:
                    client.kv.namespaces.values.delete(
                        key,
                        account_id=self.server.account_id,
                        namespace_id=self.namespace_id,
                    )
                    state = None
                else:
                    state = (f"{key} version {step}", {"version": step})
                    write_entries(
                        client,
                        self.server.account_id,
                        self.namespace_id,
                        [SeedEntry(key, state[0].encode(), metadata=state[1])],
                    )
                self.changes.append(Change(key, state, started, time.time()))
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


CHURN_KEYS = 3000


def possible_states(
    initial: dict[str, tuple[str, Any]],
    changes: list[Change],
    key: str,
    window: tuple[float, float],
) -> list[tuple[str, Any] | None]:
    """Return the states `key` had at some moment of the read window.

    The writer changes one key at a time, so the state at the window's start
    is the one left by the last change that ended before it.
    """
    start, end = window
    before: tuple[str, Any] | None = initial.get(key)
    during: list[tuple[str, Any] | None] = []
    for change in changes:
        if change.key != key:
            continue
        if change.finished < start:
            before = change.state
        elif change.started <= end:
            during.append(change.state)
    return [before, *during]


def test_backup_during_writes_reads_real_states(
    slow_server: EmulatorServer, tmp_path: Path
) -> None:
    initial = {
        f"churn/{number:05d}": (f"churn/{number:05d} initial", {"version": -1})
        for number in range(CHURN_KEYS)
    }
    namespace_id = create_namespace(
        slow_server,
        "churn",
        [
            SeedEntry(key, value.encode(), metadata=meta)
            for key, (value, meta) in initial.items()
        ],
    )
    repo_url = str(tmp_path / "repo")
    env = cloudflare_env(slow_server, KVSNAP_REPOSITORY=repo_url)
    writer = Writer(slow_server, namespace_id, seed=11)

    writer.start()
    try:
        done = run_cli(["backup", "churn", *SLOW_BACKUP], env)
    finally:
        writer.stop.set()
        writer.join(timeout=30)

    assert writer.error is None, repr(writer.error)
    assert done.code == 0, done.stderr
    assert len(writer.changes) >= 20, "the writer barely ran during the backup"
    assert run(verify_all(repo_url)) == []
    manifest = snapshots(repo_url)[0]
    # The manifest's times are cut to milliseconds; widen the window by 1 ms.
    window = (
        parse_timestamp(manifest.read_started).timestamp() - 0.001,
        parse_timestamp(manifest.read_finished).timestamp() + 0.001,
    )
    found = records_by_key(repo_url, manifest)
    universe = {f"churn/{number:05d}" for number in range(CHURN_KEYS + 100)}
    assert set(found) <= universe
    wrong = []
    for key in sorted(universe):
        record = found.get(key)
        state = (
            None
            if record is None
            else (record.value_bytes().decode(), record.metadata or None)
        )
        if state not in possible_states(initial, writer.changes, key, window):
            wrong.append((key, state))
    assert wrong == [], f"{len(wrong)} keys hold a state they never had: {wrong[:5]}"


def test_backup_pairs_value_with_its_metadata(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A key rewritten between the key list and the bulk get is read whole."""
    namespace_id = create_namespace(
        emulator, "torn", [SeedEntry("k", b"old", metadata={"version": "old"})]
    )
    repo_url = str(tmp_path / "repo")
    # The bulk get is handled 1 s after it arrives, long after the key list.
    emulator.inject("POST bulk/get", [Fault(pass_through=True, delay_ms=1000.0)])

    def rewrite_during_bulk_get() -> None:
        deadline = time.monotonic() + 30
        while emulator.stats()["requests"].get("POST bulk/get", 0) == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        write_entries(
            sdk(emulator),
            emulator.account_id,
            namespace_id,
            [SeedEntry("k", b"new", metadata={"version": "new"})],
        )

    writer = threading.Thread(target=rewrite_during_bulk_get, daemon=True)
    writer.start()
    done = run_cli(
        ["backup", "torn", "--repo", repo_url, *FAST], cloudflare_env(emulator)
    )
    writer.join(timeout=30)

    assert done.code == 0, done.stderr
    record = records_by_key(repo_url, snapshots(repo_url)[0])["k"]
    assert record.value_bytes() == b"new"
    assert record.metadata == {"version": "new"}


def test_backup_pairs_binary_value_with_its_metadata(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A binary key, read alone, is not torn by a write after the key list."""
    old = SeedEntry("b", b"\xff\x00old", metadata={"version": "old"})
    namespace_id = create_namespace(emulator, "torn-binary", [old])
    repo_url = str(tmp_path / "repo")
    expiration = int(time.time()) + 7200
    # The raw read is handled 1 s after it arrives, long after the key list.
    emulator.inject("GET values", [Fault(pass_through=True, delay_ms=1000.0)])

    def rewrite_during_raw_read() -> None:
        deadline = time.monotonic() + 30
        while emulator.stats()["requests"].get("GET values", 0) == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        new = SeedEntry(
            "b", b"\xff\x00new", metadata={"version": "new"}, expiration=expiration
        )
        write_entries(sdk(emulator), emulator.account_id, namespace_id, [new])

    writer = threading.Thread(target=rewrite_during_raw_read, daemon=True)
    writer.start()
    done = run_cli(
        ["backup", "torn-binary", "--repo", repo_url, *FAST], cloudflare_env(emulator)
    )
    writer.join(timeout=30)

    assert done.code == 0, done.stderr
    record = records_by_key(repo_url, snapshots(repo_url)[0])["b"]
    assert record.value_bytes() == b"\xff\x00new"
    assert record.metadata == {"version": "new"}
    assert record.expiration == expiration
