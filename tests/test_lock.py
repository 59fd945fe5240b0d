"""Tests of kvsnap.lock, `kvsnap unlock` and commands racing for the repository."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.errors import RepositoryError, RepositoryLocked
from kvsnap.format import encode_json
from kvsnap.lock import (
    LockInfo,
    acquire,
    list_locks,
    lock_path,
    locked,
    process_scope,
)
from kvsnap.repository import Repository, format_timestamp
from kvsnap.seed import SeedEntry
from tests.kvtools import cloudflare_env, create_namespace, run_cli, snapshots


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    url = str(tmp_path / "repo")
    run(Repository.init(url))
    return url


def dead_pid() -> int:
    """Return the id of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def plant_lock(
    repo: Repository,
    lock_id: str,
    *,
    exclusive: bool = False,
    hostname: str | None = None,
    pid: int | None = None,
    age: timedelta = timedelta(0),
    scope: str | None = None,
) -> None:
    """Write a lock object as another process would have left it."""
    moment = format_timestamp(datetime.now(UTC) - age)
    info = LockInfo(
        id=lock_id,
        exclusive=exclusive,
        hostname=hostname or socket.gethostname(),
        pid=pid or os.getpid(),
        command="kvsnap backup",
        created=moment,
        refreshed=moment,
        scope=process_scope() if scope is None else scope,
    )
    await repo.storage.put(lock_path(lock_id), encode_json(info))


def test_shared_locks_coexist(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        first = await acquire(repo, exclusive=False, command="kvsnap backup")
        second = await acquire(repo, exclusive=False, command="kvsnap verify")
        assert len(await list_locks(repo)) == 2
        await first.release()
        await second.release()
        assert await list_locks(repo) == []

    run(scenario())


@pytest.mark.parametrize(
    ("held_exclusive", "wanted_exclusive"),
    [(False, True), (True, False), (True, True)],
    ids=["shared-blocks-exclusive", "exclusive-blocks-shared", "exclusive-pair"],
)
def test_lock_conflicts(
    repo_url: str, held_exclusive: bool, wanted_exclusive: bool
) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        async with locked(repo, exclusive=held_exclusive, command="kvsnap prune"):
            with pytest.raises(RepositoryLocked) as caught:
                await acquire(repo, exclusive=wanted_exclusive, command="other")
            kind = "exclusive" if held_exclusive else "shared"
            assert f"is locked: {kind} lock" in str(caught.value)
            assert caught.value.exit_code == 23
            # The loser removed its own lock object again.
            assert len(await list_locks(repo)) == 1
        assert await list_locks(repo) == []

    run(scenario())


def test_lock_wait_outlasts_holder(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        holder = await acquire(repo, exclusive=False, command="kvsnap backup")

        async def release_soon() -> None:
            await asyncio.sleep(0.3)
            await holder.release()

        releasing = asyncio.create_task(release_soon())
        async with locked(repo, exclusive=True, command="kvsnap prune", wait=30):
            assert [h.info.exclusive for h in await list_locks(repo)] == [True]
        await releasing

    run(scenario())


def test_stale_by_dead_pid_is_removed_on_sight(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        pid = dead_pid()
        await plant_lock(repo, "deadbeef00000001", exclusive=True, pid=pid)
        [held] = await list_locks(repo)
        assert held.stale_reason == f"process {pid} no longer runs on this host"
        async with locked(repo, exclusive=True, command="kvsnap prune"):
            ids = [h.info.id for h in await list_locks(repo)]
            assert "deadbeef00000001" not in ids

    run(scenario())


def test_dead_pid_of_other_pid_namespace_blocks(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        # Another container with the same host name: its pids are not ours.
        await plant_lock(
            repo, "deadbeef00000003", pid=dead_pid(), scope="other-boot/4026531836"
        )
        [held] = await list_locks(repo)
        assert held.stale_reason is None
        assert held.removable is False
        with pytest.raises(RepositoryLocked):
            await acquire(repo, exclusive=True, command="kvsnap prune")
        assert [h.info.id for h in await list_locks(repo)] == ["deadbeef00000003"]

    run(scenario())


def test_old_lock_of_live_process_is_kept(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        # A paused process, or one whose refreshes fail: alive, but late.
        await plant_lock(
            repo, "deadbeef00000004", pid=os.getppid(), age=timedelta(minutes=31)
        )
        [held] = await list_locks(repo)
        assert held.stale_reason == "not refreshed for 31 minutes"
        assert held.removable is False
        with pytest.raises(RepositoryLocked):
            await acquire(repo, exclusive=True, command="kvsnap prune")

    run(scenario())


def test_unreadable_lock_blocks_prune_only(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        await repo.storage.put(lock_path("deadbeef00000005"), b'{"id": "trunc')
        [held] = await list_locks(repo)
        assert held.stale_reason == "its lock object is unreadable"
        async with locked(repo, exclusive=False, command="kvsnap backup"):
            pass
        with pytest.raises(RepositoryLocked) as caught:
            await acquire(repo, exclusive=True, command="kvsnap prune")
        assert "deadbeef00000005" in caught.value.message

    run(scenario())


def test_lost_lock_stops_its_holder(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        with pytest.raises(RepositoryLocked) as caught:
            async with locked(
                repo, exclusive=False, command="kvsnap backup", refresh_seconds=0.05
            ) as lock:
                await repo.storage.delete(lock.path)  # as `kvsnap unlock --all`
                await asyncio.sleep(10)
        assert "lock object was removed by another process" in caught.value.message
        assert await list_locks(repo) == []

    run(scenario())


def test_failed_listing_leaves_no_lock(
    repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)

        async def failing_list(prefix: str = "", **kwargs: object) -> None:
            raise RepositoryError("LIST locks failed: 503 Slow Down")

        with monkeypatch.context() as patch:
            patch.setattr(repo.storage, "list", failing_list)
            with pytest.raises(RepositoryError):
                await acquire(repo, exclusive=True, command="kvsnap prune")
        assert await list_locks(repo) == []

    run(scenario())


def test_stale_by_age_of_other_host_still_blocks(repo_url: str) -> None:
    async def scenario() -> None:
        repo = await Repository.open(repo_url)
        await plant_lock(
            repo, "deadbeef00000002", hostname="elsewhere", age=timedelta(hours=2)
        )
        [held] = await list_locks(repo)
        assert held.stale_reason == "not refreshed for 120 minutes"
        with pytest.raises(RepositoryLocked) as caught:
            await acquire(repo, exclusive=True, command="kvsnap prune")
        assert caught.value.hint is not None
        assert "kvsnap unlock" in caught.value.hint

    run(scenario())


def test_unlock_removes_only_stale(repo_url: str) -> None:
    async def plant() -> None:
        repo = await Repository.open(repo_url)
        await plant_lock(
            repo, "aaaa000000000001", hostname="elsewhere", age=timedelta(hours=1)
        )
        await plant_lock(repo, "aaaa000000000002", pid=dead_pid())
        await plant_lock(repo, "aaaa000000000003", hostname="elsewhere")

    run(plant())
    env = dict(os.environ, KVSNAP_REPOSITORY=repo_url)

    listed = run_cli(["unlock", "--list", "--json"], env)
    assert listed.code == 0, listed.stderr
    states = {item["id"]: item["stale"] for item in json.loads(listed.stdout)["locks"]}
    assert states == {
        "aaaa000000000001": True,
        "aaaa000000000002": True,
        "aaaa000000000003": False,
    }

    done = run_cli(["unlock"], env)
    assert done.code == 0, done.stderr
    removed = sorted(line for line in done.stdout.splitlines())
    assert len(removed) == 2
    assert removed[0].startswith("removed shared lock aaaa000000000001")
    assert "stale: not refreshed for 60 minutes" in removed[0]
    assert removed[1].startswith("removed shared lock aaaa000000000002")
    assert "kept shared lock aaaa000000000003" in done.stderr
    assert "--all removes it" in done.stderr

    again = run_cli(["unlock", "--all", "--json"], env)
    assert again.code == 0, again.stderr
    report = json.loads(again.stdout)
    assert [item["id"] for item in report["removed"]] == ["aaaa000000000003"]
    assert report["remaining"] == []

    empty = run_cli(["unlock", "--list"], env)
    assert empty.code == 0
    assert empty.stdout == ""
    assert "no locks in" in empty.stderr


def test_unlock_all_with_list_is_usage_error(repo_url: str) -> None:
    done = run_cli(["unlock", "--all", "--list", "--repo", repo_url], dict(os.environ))
    assert done.code == 2
    assert "--all removes locks" in done.stderr


# Commands racing on the emulator.


def kvsnap_process(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvsnap", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=240)
    return process.returncode, out, err


def test_backup_exits_23_under_prune_lock(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    create_namespace(emulator, "locked-ns", [SeedEntry("k", b"v")])
    repo_url = str(tmp_path / "repo")
    env = cloudflare_env(emulator, KVSNAP_REPOSITORY=repo_url)
    run(Repository.init(repo_url))

    async def hold_exclusive() -> None:
        repo = await Repository.open(repo_url)
        await acquire(repo, exclusive=True, command="kvsnap prune")

    run(hold_exclusive())
    done = run_cli(["backup", "locked-ns"], env)
    assert done.code == 23
    assert "is locked: exclusive lock" in done.stderr
    assert "'kvsnap prune'" in done.stderr
    verify = run_cli(["verify"], env)
    assert verify.code == 23
    assert snapshots(repo_url) == []


def test_concurrent_backups_and_prune(emulator: EmulatorServer, tmp_path: Path) -> None:
    entries = [SeedEntry(f"key-{n:05d}", os.urandom(200)) for n in range(600)]
    create_namespace(emulator, "busy", entries)
    repo_url = str(tmp_path / "repo")
    env = cloudflare_env(emulator, KVSNAP_REPOSITORY=repo_url)
    # The emulator answers at once, so Cloudflare's request budget only slows
    # the test down.
    fast = ["--rate-limit", "100000/1"]
    for _ in range(2):
        assert run_cli(["backup", "busy", *fast], env).code == 0
    older = [m.id for m in snapshots(repo_url)]

    # Two backups of the same namespace run at once, with small parts so that
    # each writes many objects. Prune starts once both hold their shared
    # locks, so it has to wait for both to end.
    backup_args = [
        "backup",
        "busy",
        *fast,
        "--part-size",
        "8KiB",
        "--lock-wait",
        "120",
        "--json",
    ]
    backups = [kvsnap_process(backup_args, env) for _ in range(2)]
    locks = Path(repo_url) / "locks"
    for _ in range(400):
        if any(backup.poll() is not None for backup in backups) or (
            locks.exists() and len(list(locks.iterdir())) >= 2
        ):
            break
        time.sleep(0.05)
    prune = kvsnap_process(
        ["prune", "--keep-last", "2", "--lock-wait", "120", "--json"], env
    )
    finished = [finish(backup) for backup in backups]
    prune_code, prune_out, prune_err = finish(prune)

    for backup_code, _out, backup_err in finished:
        assert backup_code == 0, backup_err
    assert prune_code == 0, prune_err
    new_ids = {
        json.loads(out)["namespaces"][0]["snapshot_id"] for _c, out, _e in finished
    }
    assert len(new_ids) == 2
    report = json.loads(prune_out)
    assert {item["id"] for item in report["removed"]} == set(older)
    assert {item["id"] for item in report["kept"]} == new_ids
    assert report["orphans_removed"] == []
    assert {m.id for m in snapshots(repo_url)} == new_ids

    verify = run_cli(["verify", "--read-data", "--json"], env)
    assert verify.code == 0, verify.stderr
    results = json.loads(verify.stdout)
    assert {item["snapshot_id"] for item in results} == new_ids
    assert all(item["ok"] for item in results)
    assert list(locks.iterdir()) == []
