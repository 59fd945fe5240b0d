"""Tests of kvsnap.anomaly.check_anomaly on a local repository."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvsnap.anomaly import Anomaly, check_anomaly
from kvsnap.emulator import EmulatorServer
from kvsnap.errors import CorruptPart
from kvsnap.format import Manifest, PartBuilder, Record
from kvsnap.repository import IMPORTED_TAG, PRE_RESTORE_TAG, Repository
from kvsnap.seed import SeedEntry
from kvsnap.state import Hold, add_hold, holds, record_verify
from tests.kvtools import cloudflare_env, create_namespace, run_cli, sdk, snapshots
from tests.test_repository import NAMESPACE, OTHER_NAMESPACE

START = datetime(2025, 3, 1, 3, 0, tzinfo=UTC)
SHARE = 0.2


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def base_records(count: int = 100) -> dict[str, Record]:
    return {f"key-{n:04d}": Record(f"key-{n:04d}", f"value {n}") for n in range(count)}


async def store(
    repo: Repository,
    records: dict[str, Record],
    hours: int,
    *,
    namespace_id: str = NAMESPACE,
    tags: list[str] | None = None,
    part_records: int = 7,
) -> Manifest:
    """Commit a snapshot of `records`, split into parts of `part_records`."""
    started = START + timedelta(hours=hours)
    writer = repo.start_snapshot(namespace_id=namespace_id, read_started=started)
    ordered = [records[key] for key in sorted(records)]
    for offset in range(0, len(ordered), part_records):
        builder = PartBuilder()
        for record in ordered[offset : offset + part_records]:
            builder.add(record)
        await writer.write_part(builder)
    return await writer.commit(
        account_id="account",
        namespace_title="config",
        read_finished=started + timedelta(seconds=2),
        keys=len(ordered),
        value_bytes=0,
        tags=tags or [],
    )


def changed(
    records: dict[str, Record], *, delete: int = 0, change: int = 0, add: int = 0
) -> dict[str, Record]:
    """Delete the first `delete` keys, change the next `change`, add `add` new."""
    keys = sorted(records)
    result = dict(records)
    for key in keys[:delete]:
        del result[key]
    for key in keys[delete : delete + change]:
        result[key] = Record(key, "changed")
    for n in range(add):
        result[f"new-{n:04d}"] = Record(f"new-{n:04d}", "new")
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return run(Repository.init(str(tmp_path / "repo")))


def test_anomaly_above_share_holds_previous(repo: Repository) -> None:
    before = base_records()
    previous = run(store(repo, before, 0))
    new = run(store(repo, changed(before, delete=15, change=10, add=5), 24))

    found = run(check_anomaly(repo, new, share=SHARE))

    assert found == Anomaly(
        namespace_id=NAMESPACE,
        previous_id=previous.id,
        new_id=new.id,
        deleted=15,
        changed=10,
        added=5,
        previous_keys=100,
        share=0.25,
        threshold=SHARE,
    )
    [hold] = run(holds(repo))
    assert hold.snapshot_id == previous.id
    assert hold.namespace_id == NAMESPACE
    assert hold.trigger_snapshot == new.id
    assert hold.share == 0.25
    assert hold.reason.startswith(f"anomaly: snapshot {new.id} deleted 15 and changed")
    assert "(25.0%, above 20%)" in hold.reason
    assert found.to_dict()["type"] == "anomaly"


def test_anomaly_at_share_is_not_flagged(repo: Repository) -> None:
    before = base_records()
    run(store(repo, before, 0))
    new = run(store(repo, changed(before, delete=5, change=15), 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is None
    assert run(holds(repo)) == []


def test_anomaly_below_share_is_not_flagged(repo: Repository) -> None:
    before = base_records()
    run(store(repo, before, 0))
    new = run(store(repo, changed(before, delete=3, change=4, add=80), 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is None
    assert run(holds(repo)) == []


def test_anomaly_counts_metadata_change(repo: Repository) -> None:
    before = base_records(10)
    run(store(repo, before, 0))
    after = dict(before)
    for key in sorted(before)[:3]:
        after[key] = Record(key, before[key].value, metadata={"v": 2})
    new = run(store(repo, after, 24))
    found = run(check_anomaly(repo, new, share=SHARE))
    assert found is not None
    assert found.changed == 3
    assert found.deleted == 0


def test_anomaly_wiped_namespace(repo: Repository) -> None:
    previous = run(store(repo, base_records(), 0))
    new = run(store(repo, {}, 24))
    found = run(check_anomaly(repo, new, share=SHARE))
    assert found is not None
    assert found.previous_id == previous.id
    assert found.deleted == 100
    assert found.share == 1.0


def test_first_snapshot_is_never_anomaly(repo: Repository) -> None:
    new = run(store(repo, base_records(), 0))
    run(store(repo, {}, 0, namespace_id=OTHER_NAMESPACE))
    assert run(check_anomaly(repo, new, share=SHARE)) is None


def test_empty_previous_is_never_anomaly(repo: Repository) -> None:
    run(store(repo, {}, 0))
    new = run(store(repo, base_records(), 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is None


def test_compares_with_previous_backup_only(repo: Repository) -> None:
    before = base_records()
    previous = run(store(repo, before, 0))
    # A pre-restore snapshot holds a few keys; it must not be the baseline.
    run(store(repo, changed(before, delete=95), 12, tags=[PRE_RESTORE_TAG]))
    run(store(repo, {}, 13, namespace_id=OTHER_NAMESPACE))
    new = run(store(repo, changed(before, change=1), 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is None
    wiped = run(store(repo, {}, 48))
    found = run(check_anomaly(repo, wiped, share=SHARE))
    assert found is not None
    assert found.previous_id == new.id
    assert found.previous_id != previous.id


def test_pre_restore_snapshot_is_never_anomaly(repo: Repository) -> None:
    run(store(repo, base_records(), 0))
    partial = run(store(repo, base_records(2), 24, tags=[PRE_RESTORE_TAG]))
    assert run(check_anomaly(repo, partial, share=SHARE)) is None


def test_existing_hold_keeps_its_reason(repo: Repository) -> None:
    before = base_records()
    previous = run(store(repo, before, 0))
    manual = Hold(
        snapshot_id=previous.id,
        namespace_id=NAMESPACE,
        created="2025-03-01T04:00:00.000Z",
        reason="legal hold",
    )
    run(add_hold(repo, manual))
    new = run(store(repo, {}, 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is not None
    assert run(holds(repo)) == [manual]


# Which earlier snapshot is the baseline.


async def fail_verify(repo: Repository, manifest: Manifest, *, read_data: bool) -> None:
    await record_verify(
        repo,
        snapshot_id=manifest.id,
        namespace_id=manifest.namespace_id,
        read_data=read_data,
        ok=False,
        problems=["part 1 is corrupt"],
    )


async def damage_part(repo: Repository, manifest: Manifest) -> None:
    await repo.storage.put(manifest.parts[0].path, b"not a part")


SKIPPED_PREDECESSORS = {
    "failed quick verify": (
        [],
        lambda repo, manifest: fail_verify(repo, manifest, read_data=False),
    ),
    "failed full read": (
        [],
        lambda repo, manifest: fail_verify(repo, manifest, read_data=True),
    ),
    "imported": ([IMPORTED_TAG], None),
}


@pytest.mark.parametrize("kind", SKIPPED_PREDECESSORS)
def test_baseline_skips_predecessor(repo: Repository, kind: str) -> None:
    tags, mark = SKIPPED_PREDECESSORS[kind]
    before = base_records()
    good = run(store(repo, before, 0))
    # The skipped snapshot already lacks the keys that the new one lacks,
    # so only a comparison with `good` finds the deletion.
    after = changed(before, delete=50)
    skipped = run(store(repo, after, 12, tags=tags))
    if mark is not None:
        run(mark(repo, skipped))
    new = run(store(repo, after, 24))

    found = run(check_anomaly(repo, new, share=SHARE))

    assert found is not None
    assert found.previous_id == good.id
    assert found.deleted == 50
    assert [hold.snapshot_id for hold in run(holds(repo))] == [good.id]


def test_baseline_uses_unverified_predecessor(repo: Repository) -> None:
    before = base_records()
    run(store(repo, before, 0))
    after = changed(before, delete=50)
    middle = run(store(repo, after, 12))  # never verified, so still a baseline
    new = run(store(repo, after, 24))
    assert run(check_anomaly(repo, new, share=SHARE)) is None
    assert middle.id not in {hold.snapshot_id for hold in run(holds(repo))}


def test_damaged_predecessor_falls_back(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    before = base_records()
    good = run(store(repo, before, 0))
    damaged = run(store(repo, before, 12))
    run(damage_part(repo, damaged))
    new = run(store(repo, changed(before, delete=30), 24))

    with caplog.at_level(logging.WARNING, logger="kvsnap.anomaly"):
        found = run(check_anomaly(repo, new, share=SHARE))

    assert found is not None
    assert found.previous_id == good.id
    assert found.deleted == 30
    assert [hold.snapshot_id for hold in run(holds(repo))] == [good.id]
    assert f"cannot compare with snapshot {damaged.id}" in caplog.text
    assert "trying the next older backup" in caplog.text


def test_only_damaged_predecessor_returns_none(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    before = base_records()
    damaged = run(store(repo, before, 0))
    run(damage_part(repo, damaged))
    new = run(store(repo, {}, 24))

    with caplog.at_level(logging.WARNING, logger="kvsnap.anomaly"):
        found = run(check_anomaly(repo, new, share=SHARE))

    assert found is None
    assert run(holds(repo)) == []
    assert f"anomaly check of snapshot {new.id} skipped" in caplog.text


def test_damaged_new_snapshot_raises(repo: Repository) -> None:
    before = base_records()
    run(store(repo, before, 0))
    new = run(store(repo, changed(before, delete=30), 24))
    run(damage_part(repo, new))
    with pytest.raises(CorruptPart) as caught:
        run(check_anomaly(repo, new, share=SHARE))
    assert caught.value.path == new.parts[0].path
    assert run(holds(repo)) == []


# `kvsnap backup` checks each new snapshot too.


def seed_entries(count: int) -> list[SeedEntry]:
    return [SeedEntry(f"user/{i:04d}", f"v1 {i}".encode()) for i in range(count)]


def write_backup_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "kvsnap.toml"
    path.write_text(
        f'repository = "{tmp_path / "repo"}"\nnamespaces = ["sessions"]\n{extra}'
    )
    return path


def overwrite(emulator: EmulatorServer, namespace_id: str, count: int) -> None:
    sdk(emulator).kv.namespaces.bulk_update(
        namespace_id,
        account_id=emulator.account_id,
        body=[{"key": f"user/{i:04d}", "value": "garbage"} for i in range(count)],
    )


def held_ids(emulator: EmulatorServer, tmp_path: Path) -> list[str]:
    listed = run_cli(
        ["hold", "list", "--json", "--repo", str(tmp_path / "repo")],
        cloudflare_env(emulator),
    )
    assert listed.code == 0, listed.stderr
    return [hold["snapshot_id"] for hold in json.loads(listed.stdout)["holds"]]


def test_backup_holds_previous_on_anomaly(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    namespace_id = create_namespace(emulator, "sessions", seed_entries(100))
    config = write_backup_config(tmp_path)
    env = cloudflare_env(emulator)
    first = run_cli(["backup", "--config", str(config)], env)
    assert first.code == 0, first.stderr
    [clean] = snapshots(str(tmp_path / "repo"))
    overwrite(emulator, namespace_id, 30)

    second = run_cli(["backup", "--config", str(config), "--json"], env)

    assert second.code == 0, second.stderr
    document = json.loads(second.stdout)
    assert document["ok"] is True
    [anomaly] = document["anomalies"]
    assert anomaly["previous_id"] == clean.id
    assert anomaly["changed"] == 30
    warning = next(line for line in second.stderr.splitlines() if "anomaly in" in line)
    assert warning.startswith("warning: anomaly in sessions:")
    assert f"snapshot {clean.id} is held" in warning
    assert held_ids(emulator, tmp_path) == [clean.id]


def test_backup_uses_policy_anomaly_share(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    namespace_id = create_namespace(emulator, "sessions", seed_entries(100))
    config = write_backup_config(tmp_path, "[policy]\nanomaly_share = 0.5\n")
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "--config", str(config)], env).code == 0
    overwrite(emulator, namespace_id, 30)

    result = run_cli(["backup", "--config", str(config), "--json"], env)

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["anomalies"] == []
    assert held_ids(emulator, tmp_path) == []


def test_backup_without_anomaly_check(emulator: EmulatorServer, tmp_path: Path) -> None:
    namespace_id = create_namespace(emulator, "sessions", seed_entries(100))
    config = write_backup_config(tmp_path)
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "--config", str(config)], env).code == 0
    overwrite(emulator, namespace_id, 100)

    result = run_cli(
        ["backup", "--config", str(config), "--json", "--no-anomaly-check"], env
    )

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["anomalies"] == []
    assert "anomaly" not in result.stderr
    assert held_ids(emulator, tmp_path) == []


def test_manual_backup_between_runs_holds(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    # A `kvsnap backup` between two runs becomes the run's baseline, so it
    # must catch the damage itself.
    namespace_id = create_namespace(emulator, "sessions", seed_entries(100))
    config = write_backup_config(tmp_path)
    env = cloudflare_env(emulator)
    first = run_cli(["run", "--config", str(config)], env)
    assert first.code == 0, first.stderr
    clean = snapshots(str(tmp_path / "repo"))[-1]
    overwrite(emulator, namespace_id, 100)

    manual = run_cli(["backup", "--config", str(config)], env)
    later = run_cli(["run", "--config", str(config), "--json"], env)

    assert manual.code == 0, manual.stderr
    assert f"snapshot {clean.id} is held" in manual.stderr
    assert json.loads(later.stdout)["anomalies"] == []
    assert held_ids(emulator, tmp_path) == [clean.id]


def test_backup_help_names_anomaly_check() -> None:
    result = run_cli(["backup", "--help"], dict(os.environ, COLUMNS="200"))
    assert result.code == 0, result.stderr
    assert "--no-anomaly-check" in result.stdout
    assert "exit code 8" in result.stdout


# The `kvsnap hold` commands.


@pytest.fixture
def two_snapshots(tmp_path: Path) -> tuple[dict[str, str], list[Manifest]]:
    url = str(tmp_path / "repo")

    async def make() -> list[Manifest]:
        repo = await Repository.init(url)
        return [await store(repo, base_records(3), hours) for hours in (0, 24)]

    made = run(make())
    return dict(os.environ, KVSNAP_REPOSITORY=url), made


def test_hold_add_list_release(
    two_snapshots: tuple[dict[str, str], list[Manifest]],
) -> None:
    env, made = two_snapshots
    empty = run_cli(["hold", "list"], env)
    assert empty.code == 0
    assert empty.stdout == ""
    assert "no held snapshots" in empty.stderr

    added = run_cli(["hold", "add", made[0].id[:6], "--reason", "legal hold"], env)
    assert added.code == 0, added.stderr
    assert added.stdout == f"holding snapshot {made[0].id}: legal hold\n"
    again = run_cli(["hold", "add", made[0].id, "--reason", "case 42"], env)
    assert again.stdout == f"replaced the hold on snapshot {made[0].id}: case 42\n"

    listed = run_cli(["hold", "list", "--json"], env)
    assert listed.code == 0, listed.stderr
    [item] = json.loads(listed.stdout)["holds"]
    assert item["snapshot_id"] == made[0].id
    assert item["reason"] == "case 42"
    assert item["namespace_title"] == "config"
    assert item["snapshot_exists"] is True
    table = run_cli(["hold", "list"], env)
    assert made[0].id in table.stdout
    assert "case 42" in table.stdout

    # Without a terminal, release needs --yes and changes nothing.
    refused = run_cli(["hold", "release", made[0].id], env)
    assert refused.code == 10
    assert "needs confirmation" in refused.stderr
    released = run_cli(["hold", "release", made[0].id[:8], "--yes"], env)
    assert released.code == 0, released.stderr
    assert released.stdout == (
        f"released the hold on snapshot {made[0].id} (case 42)\n"
    )
    assert json.loads(run_cli(["hold", "list", "--json"], env).stdout)["holds"] == []


def test_hold_errors(two_snapshots: tuple[dict[str, str], list[Manifest]]) -> None:
    env, made = two_snapshots
    missing = run_cli(["hold", "add", "ffffffff", "--reason", "x"], env)
    assert missing.code == 22
    blank = run_cli(["hold", "add", made[0].id, "--reason", "  "], env)
    assert blank.code == 10
    assert "invalid --reason" in blank.stderr
    not_held = run_cli(["hold", "release", made[1].id, "--yes"], env)
    assert not_held.code == 22
    assert f"no held snapshot '{made[1].id}'" in not_held.stderr
    short = run_cli(["hold", "release", "ab", "--yes"], env)
    assert short.code == 10
