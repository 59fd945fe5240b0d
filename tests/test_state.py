"""Verify records and holds under state/: written, read back, and when damaged."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvsnap.repository import Repository
from kvsnap.retention import prune
from kvsnap.state import (
    Hold,
    add_hold,
    hold_path,
    holds,
    record_verify,
    release_hold,
    verify_path,
    verify_records,
)
from tests.test_prune import KEEP_LAST_2, NOW, make_snapshot


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_quick_verify_keeps_last_full_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = await Repository.init(str(tmp_path / "repo"))
        full = await record_verify(
            repo, snapshot_id="a" * 16, namespace_id="ns", read_data=True, ok=True,
            problems=[],
        )  # fmt: skip
        quick = await record_verify(
            repo, snapshot_id="a" * 16, namespace_id="ns", read_data=False, ok=False,
            problems=["part 1: missing"],
        )  # fmt: skip
        assert quick.ok is False
        assert quick.read_data_checked == full.read_data_checked
        assert quick.read_data_ok is True
        assert (await verify_records(repo))["a" * 16] == quick

    run(scenario())


def test_unreadable_verify_record_is_ignored(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = await Repository.init(str(tmp_path / "repo"))
        await repo.storage.put(verify_path("b" * 16), b"{not json")
        assert await verify_records(repo) == {}

    run(scenario())


def test_unreadable_hold_still_holds(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = await Repository.init(str(tmp_path / "repo"))
        hold = Hold(
            snapshot_id="c" * 16, namespace_id="ns", created="2026-01-01T00:00:00Z",
            reason="anomaly",
        )  # fmt: skip
        await add_hold(repo, hold)
        await repo.storage.put(hold_path("c" * 16), b'{"snapshot_id": "cccc')

        [found] = await holds(repo)
        assert found.snapshot_id == "c" * 16
        assert "unreadable" in found.reason

        released = await release_hold(repo, "c" * 16)
        assert released is not None
        assert await holds(repo) == []
        assert await release_hold(repo, "c" * 16) is None

    run(scenario())


def test_prune_keeps_snapshot_with_damaged_hold(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = await Repository.init(str(tmp_path / "repo"))
        made = [await make_snapshot(repo, days) for days in (3, 2, 1)]
        await repo.storage.put(hold_path(made[0].id), b"\x00damaged")

        result = await prune(repo, KEEP_LAST_2, dry_run=False, now=NOW)

        reasons = {m.id: r for m, r in result.kept}
        assert reasons[made[0].id][0].startswith("held: its hold object")
        assert result.removed == []

    run(scenario())
