"""End-to-end restores against the emulator, through the kvsnap CLI."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import cloudflare
import pytest

from kvsnap.emulator import DEFAULT_ACCOUNT_ID, EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.format import PartBuilder, Record, key_order
from kvsnap.repository import Repository
from kvsnap.restore import Selection
from kvsnap.seed import SeedEntry, auth_entries, demo_namespaces, write_entries
from tests.kvtools import (
    cloudflare_env,
    create_namespace,
    records_by_key,
    run_cli,
    sdk,
    snapshots,
)

SECOND_ACCOUNT = "b" * 32


def value_of(server: EmulatorServer, namespace_id: str, key: str) -> bytes | None:
    client = sdk(server)
    try:
        response = client.kv.namespaces.values.get(
            key, account_id=server.account_id, namespace_id=namespace_id
        )
    except cloudflare.NotFoundError:
        return None
    return response.read()


def put(server: EmulatorServer, namespace_id: str, entries: list[SeedEntry]) -> None:
    write_entries(sdk(server), server.account_id, namespace_id, entries)


def writes(server: EmulatorServer) -> int:
    requests = server.stats()["requests"]
    return sum(requests.get(name, 0) for name in ("PUT bulk", "POST bulk/delete"))


@pytest.fixture
def repo(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


def restore(server: EmulatorServer, repo: str, *args: str, **env: str):
    return run_cli(["restore", "--repo", repo, *args], cloudflare_env(server, **env))


def restore_backup(server: EmulatorServer, repo: str, namespace: str):
    return run_cli(["backup", namespace, "--repo", repo], cloudflare_env(server))


def changed_users_state(server: EmulatorServer, repo: str) -> str:
    """Back up user/1 and user/2 at v1, then change the live namespace."""
    namespace_id = create_namespace(
        server, "users", [SeedEntry("user/1", b"v1"), SeedEntry("user/2", b"v1")]
    )
    backup = run_cli(["backup", "users", "--repo", repo], cloudflare_env(server))
    assert backup.code == 0, backup.stderr
    put(server, namespace_id, [SeedEntry("user/1", b"v2"), SeedEntry("user/3", b"new")])
    client = sdk(server)
    client.kv.namespaces.values.delete(
        "user/2", account_id=server.account_id, namespace_id=namespace_id
    )
    return namespace_id


def test_restore_dry_run_plan_counts(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)
    emulator.reset_stats()

    result = restore(emulator, repo, "latest@users", "--dry-run", "--json")

    assert result.code == 6, result.stderr
    summary = json.loads(result.stdout)
    assert "--conflict overwrite" in result.stderr
    assert "1 live keys differ" in summary["refused"]
    plan = summary["plan"]
    assert plan["overwrite"] == 1
    assert plan["create"] == 1
    assert plan["live_only"] == 1
    assert plan["delete"] == 0
    assert writes(emulator) == 0


def test_restore_dry_run_overwrite_ok(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)
    emulator.reset_stats()

    result = restore(
        emulator, repo, "latest@users", "--dry-run", "--conflict", "overwrite"
    )

    assert result.code == 0, result.stderr
    assert "overwrite" in result.stderr
    assert "'user/1'" in result.stderr
    assert result.stdout == "dry run: nothing was written\n"
    assert writes(emulator) == 0


def test_restore_conflict_error_writes_nothing(
    emulator: EmulatorServer, repo: str
) -> None:
    namespace_id = changed_users_state(emulator, repo)
    emulator.reset_stats()

    result = restore(emulator, repo, "latest@users", "--yes")

    assert result.code == 6
    assert "--conflict overwrite" in result.stderr
    assert "'user/1'" in result.stderr
    assert writes(emulator) == 0
    assert value_of(emulator, namespace_id, "user/2") is None


def test_restore_skip_existing_keeps_live(emulator: EmulatorServer, repo: str) -> None:
    namespace_id = changed_users_state(emulator, repo)

    result = restore(
        emulator, repo, "latest@users", "--conflict", "skip-existing", "--yes"
    )

    assert result.code == 0, result.stderr
    assert value_of(emulator, namespace_id, "user/1") == b"v2"
    assert value_of(emulator, namespace_id, "user/2") == b"v1"
    assert value_of(emulator, namespace_id, "user/3") == b"new"


def test_restore_exact_overwrite_saves_pre_restore(
    emulator: EmulatorServer, repo: str
) -> None:
    namespace_id = changed_users_state(emulator, repo)

    result = restore(
        emulator,
        repo,
        "latest@users",
        "--conflict",
        "overwrite",
        "--exact",
        "--yes",
        "--json",
    )

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == 2
    assert summary["deleted"] == 1
    assert summary["verified"] == 2
    assert value_of(emulator, namespace_id, "user/1") == b"v1"
    assert value_of(emulator, namespace_id, "user/2") == b"v1"
    assert value_of(emulator, namespace_id, "user/3") is None
    [saved] = [m for m in snapshots(repo) if "pre-restore" in m.tags]
    assert saved.id == summary["pre_restore_snapshot"]
    prior = records_by_key(repo, saved)
    assert {key: r.value for key, r in prior.items()} == {
        "user/1": "v2",
        "user/3": "new",
    }


def test_restore_rerun_writes_nothing(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)
    first = restore(emulator, repo, "latest@users", "--conflict", "overwrite", "--yes")
    emulator.reset_stats()

    second = restore(
        emulator, repo, "latest@users", "--conflict", "overwrite", "--yes", "--json"
    )

    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    assert json.loads(second.stdout)["plan"]["unchanged"] == 2
    assert writes(emulator) == 0


def test_restore_create_of_empty_snapshot(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "empty")
    assert restore_backup(emulator, repo, "empty").code == 0

    result = restore(
        emulator,
        repo,
        "latest@empty",
        "--to",
        "empty-copy",
        "--create",
        "--yes",
        "--json",
    )

    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["namespace_id"] is not None
    assert report["written"] == 0
    titles = {
        namespace.title: namespace.id
        for namespace in sdk(emulator).kv.namespaces.list(
            account_id=emulator.account_id
        )
    }
    assert titles["empty-copy"] == report["namespace_id"]


def test_restore_needs_yes_without_tty(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)
    emulator.reset_stats()

    result = restore(emulator, repo, "latest@users", "--conflict", "overwrite")

    assert result.code == 10
    assert "--yes" in result.stderr
    assert writes(emulator) == 0


def test_restore_max_writes_cap(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)

    result = restore(
        emulator,
        repo,
        "latest@users",
        "--conflict",
        "overwrite",
        "--max-writes",
        "1",
        "--yes",
    )

    assert result.code == 6
    assert "--max-writes 1" in result.stderr


def test_restore_rejects_empty_keys_file(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    create_namespace(emulator, "users", [SeedEntry("k", b"v")])
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "users", "--repo", repo], env).code == 0
    # What `kvsnap diff --keys-only` writes when nothing changed.
    keys_file = tmp_path / "no-keys.txt"
    keys_file.write_text("")
    emulator.reset_stats()

    result = restore(
        emulator, repo, "latest@users", "--keys-from", str(keys_file), "--dry-run"
    )

    assert result.code == 10
    assert "lists no key" in result.stderr
    assert emulator.stats()["requests"].get("PUT bulk", 0) == 0


def test_restore_corrupted_keys_from_diff(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    entries = auth_entries()
    namespace_id = create_namespace(emulator, "auth-state", entries)
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "auth-state", "--repo", repo], env).code == 0
    damaged = [entries[0].key, "jwks.json", "user/李小龍"]
    put(emulator, namespace_id, [SeedEntry(key, b"garbage") for key in damaged])
    keys_file = tmp_path / "bad-keys.txt"

    diff = run_cli(
        ["diff", "latest@auth-state", "live:auth-state", "--keys-only", "--repo", repo],
        env,
    )
    keys_file.write_text(diff.stdout)
    emulator.reset_stats()
    result = restore(
        emulator,
        repo,
        "latest@auth-state",
        "--keys-from",
        str(keys_file),
        "--conflict",
        "overwrite",
        "--yes",
        "--json",
    )

    assert diff.code == 5, diff.stderr
    assert sorted(diff.stdout.split("\n")[:-1]) == sorted(damaged)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == 3
    assert summary["verified"] == 3
    assert summary["write_requests"] == 1
    originals = {e.key: e.value for e in entries}
    for key in damaged:
        assert value_of(emulator, namespace_id, key) == originals[key]


def test_restore_into_new_account_with_create(tmp_path: Path, repo: str) -> None:
    with EmulatorServer(
        tmp_path / "kv", accounts=[DEFAULT_ACCOUNT_ID, SECOND_ACCOUNT]
    ) as server:
        entries = auth_entries()
        old_id = create_namespace(server, "auth-state", entries)
        env = cloudflare_env(server)
        assert run_cli(["backup", "auth-state", "--repo", repo], env).code == 0
        map_file = tmp_path / "map.json"

        result = run_cli(
            [
                "restore",
                "latest@auth-state",
                "--repo",
                repo,
                "--account",
                SECOND_ACCOUNT,
                "--create",
                "--map-out",
                str(map_file),
                "--yes",
            ],
            env,
        )
        new_id = json.loads(map_file.read_text())[old_id]
        check = run_cli(
            ["diff", "latest@auth-state", f"live:{new_id}", "--repo", repo],
            env | {"CLOUDFLARE_ACCOUNT_ID": SECOND_ACCOUNT},
        )

    assert result.code == 0, result.stderr
    assert f"{old_id} -> {new_id}" in result.stdout
    assert new_id != old_id
    assert check.code == 0, check.stdout + check.stderr


def test_restore_other_account_needs_flag(tmp_path: Path, repo: str) -> None:
    with EmulatorServer(
        tmp_path / "kv", accounts=[DEFAULT_ACCOUNT_ID, SECOND_ACCOUNT]
    ) as server:
        create_namespace(server, "cfg", [SeedEntry("a", b"1")])
        env = cloudflare_env(server)
        assert run_cli(["backup", "cfg", "--repo", repo], env).code == 0
        server.reset_stats()

        result = run_cli(
            ["restore", "latest@cfg", "--repo", repo, "--create", "--yes"],
            env | {"CLOUDFLARE_ACCOUNT_ID": SECOND_ACCOUNT},
        )
        write_count = writes(server)

    assert result.code == 10
    assert f"--account {SECOND_ACCOUNT}" in result.stderr
    assert write_count == 0


def test_restore_missing_part_writes_nothing(
    emulator: EmulatorServer, repo: str
) -> None:
    entries = [SeedEntry(f"k{i:04d}", b"x" * 300) for i in range(400)]
    namespace_id = create_namespace(emulator, "parts", entries)
    env = cloudflare_env(emulator)
    assert (
        run_cli(["backup", "parts", "--repo", repo, "--part-size", "16KiB"], env).code
        == 0
    )
    [manifest] = snapshots(repo)
    Path(repo, manifest.parts[1].path).unlink()
    put(emulator, namespace_id, [SeedEntry("k0000", b"changed")])
    emulator.reset_stats()

    result = restore(emulator, repo, "latest@parts", "--conflict", "overwrite", "--yes")

    assert result.code == 4
    assert manifest.parts[1].path in result.stderr
    assert writes(emulator) == 0


def write_snapshot(repo_url: str, namespace_id: str, records: list[Record]) -> None:
    async def write() -> None:
        repo = await Repository.open_or_init(repo_url)
        writer = repo.start_snapshot(
            namespace_id=namespace_id, read_started=datetime.now(UTC)
        )
        builder = PartBuilder()
        for record in sorted(records, key=lambda r: key_order(r.key)):
            builder.add(record)
        await writer.write_part(builder)
        await writer.commit(
            account_id=DEFAULT_ACCOUNT_ID,
            namespace_title="expiring",
            read_finished=datetime.now(UTC),
            keys=len(records),
            value_bytes=sum(len(r.value_bytes()) for r in records),
        )

    asyncio.run(write())


@pytest.mark.parametrize("extend", [False, True])
def test_restore_expired_and_expiring(
    emulator: EmulatorServer, repo: str, extend: bool
) -> None:
    now = int(time.time())
    namespace_id = create_namespace(emulator, "expiring")
    records = [
        Record("a/expired", "old", expiration=now - 3600),
        Record("b/expiring", "soon", expiration=now + 30),
        Record("c/normal", "keep"),
    ]
    write_snapshot(repo, namespace_id, records)
    flags = ["--extend-expiring"] if extend else []

    result = restore(emulator, repo, "latest@expiring", "--yes", "--json", *flags)

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["plan"]["expired"] == 1
    assert summary["plan"]["expiring"] == 1
    assert value_of(emulator, namespace_id, "a/expired") is None
    assert value_of(emulator, namespace_id, "c/normal") == b"keep"
    expiring = value_of(emulator, namespace_id, "b/expiring")
    assert expiring == (b"soon" if extend else None)
    assert summary["written"] == (2 if extend else 1)


def test_restore_write_requests_for_12000_keys(
    emulator: EmulatorServer, repo: str
) -> None:
    entries = [SeedEntry(f"k{i:05d}", f"v{i}".encode()) for i in range(12_000)]
    create_namespace(emulator, "many", entries)
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "many", "--repo", repo], env).code == 0

    result = restore(
        emulator, repo, "latest@many", "--to", "fresh", "--create", "--yes", "--json"
    )

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == 12_000
    assert summary["write_requests"] == 3  # create namespace + 2 bulk writes
    assert summary["verified"] == 12_000


def test_restore_oversize_value_refused(emulator: EmulatorServer, repo: str) -> None:
    namespace_id = create_namespace(emulator, "sizes")
    limit = 26_214_400
    records = [
        Record.from_bytes("exact", b"a" * limit),
        Record.from_bytes("under", b"b" * 25_000_001),
        Record.from_bytes("over", b"c" * (limit + 1)),
    ]
    write_snapshot(repo, namespace_id, records)
    emulator.reset_stats()

    result = restore(emulator, repo, "latest@expiring", "--yes")

    assert result.code == 6
    assert "'over'" in result.stderr
    assert writes(emulator) == 0


def test_restore_binary_and_metadata_exact(emulator: EmulatorServer, repo: str) -> None:
    namespace_id = create_namespace(emulator, "expiring")
    records = [
        Record("img/header", "iVBORw0KGgoAgP/+", base64=True),
        Record("cfg/app", '{"hello":"world"}', metadata={"v": 2}),
        Record("cfg/plain", "no metadata"),
    ]
    write_snapshot(repo, namespace_id, records)

    result = restore(emulator, repo, "latest@expiring", "--yes")

    assert result.code == 0, result.stderr
    header = value_of(emulator, namespace_id, "img/header")
    assert header == bytes.fromhex("89504e470d0a1a0a0080fffe")
    assert value_of(emulator, namespace_id, "cfg/app") == b'{"hello":"world"}'
    client = sdk(emulator)
    metadata = client.kv.namespaces.metadata.get(
        "cfg/app", account_id=emulator.account_id, namespace_id=namespace_id
    )
    absent = client.kv.namespaces.metadata.get(
        "cfg/plain", account_id=emulator.account_id, namespace_id=namespace_id
    )
    assert metadata == {"v": 2}
    assert absent is None


def test_restore_waits_for_stale_reads(tmp_path: Path, repo: str) -> None:
    with EmulatorServer(tmp_path / "kv", stale_reads_seconds=3.0) as server:
        namespace_id = create_namespace(server, "cfg", [SeedEntry("cfg/x", b"new")])
        env = cloudflare_env(server)
        time.sleep(3.1)  # each write is invisible to reads for 3 s
        assert run_cli(["backup", "cfg", "--repo", repo], env).code == 0
        put(server, namespace_id, [SeedEntry("cfg/x", b"old")])
        time.sleep(3.1)
        server.reset_stats()

        command = ["restore", "latest@cfg", "--repo", repo, "--conflict", "overwrite"]
        result = run_cli([*command, "--yes", "--json", "--readback-window", "20"], env)
        requests = server.stats()["requests"]

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["verified"] == 1
    assert summary["mismatched"] == []
    assert summary["seconds"]["read_back"] >= 1.0
    assert requests["PUT bulk"] == 1


def test_restore_under_faults(emulator: EmulatorServer, repo: str) -> None:
    entries = [SeedEntry(f"k{i:04d}", f"v{i}".encode()) for i in range(500)]
    namespace_id = create_namespace(emulator, "faulty", entries)
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "faulty", "--repo", repo], env).code == 0
    put(emulator, namespace_id, [SeedEntry(e.key, b"bad") for e in entries[:300]])
    emulator.inject("PUT bulk", [Fault(status=429, retry_after=1), Fault(status=503)])
    emulator.inject("POST bulk/get", [None, Fault(status=500), Fault(drop=True)])

    result = restore(
        emulator, repo, "latest@faulty", "--conflict", "overwrite", "--yes"
    )

    assert result.code == 0, result.stderr
    assert "retry" in result.stderr
    for entry in entries[:300:37]:
        assert value_of(emulator, namespace_id, entry.key) == entry.value


def namespace_titles(server: EmulatorServer) -> dict[str, list[str]]:
    titles: dict[str, list[str]] = {}
    for namespace in sdk(server).kv.namespaces.list(account_id=server.account_id):
        titles.setdefault(namespace.title, []).append(namespace.id)
    return titles


def test_restore_create_survives_a_lost_create_answer(
    emulator: EmulatorServer, repo: str
) -> None:
    entries = [SeedEntry(f"k{i}", f"v{i}".encode()) for i in range(30)]
    create_namespace(emulator, "orders", entries)
    assert restore_backup(emulator, repo, "orders").code == 0
    # The namespace is created, then the response is cut off, so the client retries.
    lost = Fault(pass_through=True, truncate=True)
    emulator.inject("POST namespaces", [lost])

    result = restore(
        emulator,
        repo,
        "latest@orders",
        "--to",
        "orders-copy",
        "--create",
        "--yes",
        "--json",
    )

    assert result.code == 0, result.stderr
    assert "earlier attempt created" in result.stderr
    report = json.loads(result.stdout)
    assert namespace_titles(emulator)["orders-copy"] == [report["namespace_id"]]
    assert report["written"] == 30
    assert value_of(emulator, report["namespace_id"], "k7") == b"v7"


def test_restore_demo_namespaces_into_new_account(tmp_path: Path, repo: str) -> None:
    accounts = [DEFAULT_ACCOUNT_ID, SECOND_ACCOUNT]
    with EmulatorServer(tmp_path / "kv", accounts=accounts) as server:
        old_ids = {
            title: create_namespace(server, title, entries)
            for title, entries in demo_namespaces().items()
        }
        env = cloudflare_env(server)
        assert run_cli(["backup", "--all", "--repo", repo], env).code == 0
        second = env | {"CLOUDFLARE_ACCOUNT_ID": SECOND_ACCOUNT}
        for title in old_ids:
            command = ["restore", f"latest@{title}", "--repo", repo]
            result = run_cli(
                [*command, "--account", SECOND_ACCOUNT, "--create", "--yes", "--json"],
                env,
            )
            assert result.code == 0, result.stderr
            new_id = json.loads(result.stdout)["namespace_map"][old_ids[title]]
            check = run_cli(
                ["diff", f"latest@{title}", f"live:{new_id}", "--repo", repo], second
            )
            assert check.code == 0, check.stdout + check.stderr


def test_restore_prefix_lists_only_prefix(emulator: EmulatorServer, repo: str) -> None:
    entries = [SeedEntry(f"a/{i:04d}", b"a") for i in range(1500)]
    entries += [SeedEntry(f"z/{i:04d}", b"z") for i in range(5)]
    namespace_id = create_namespace(emulator, "wide", entries)
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "wide", "--repo", repo], env).code == 0
    put(emulator, namespace_id, [SeedEntry("z/0001", b"broken")])
    emulator.reset_stats()

    result = restore(
        emulator,
        repo,
        "latest@wide",
        "--prefix",
        "z/",
        "--conflict",
        "overwrite",
        "--yes",
    )
    requests = emulator.stats()["requests"]

    assert result.code == 0, result.stderr
    assert value_of(emulator, namespace_id, "z/0001") == b"z"
    assert requests["GET keys"] == 1  # one page: only keys under z/ are listed
    assert requests["POST bulk/get"] == 2  # the plan's read and the read-back


def test_restore_token_env(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "tok", [SeedEntry("a", b"1")])
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "tok", "--repo", repo], env).code == 0
    flags = ["restore", "latest@tok", "--repo", repo, "--token-env", "TARGET_TOKEN"]

    unset = run_cli([*flags, "--dry-run"], env)
    wrong = run_cli([*flags, "--dry-run"], env | {"TARGET_TOKEN": "not-the-token"})
    right = run_cli([*flags, "--dry-run"], env | {"TARGET_TOKEN": emulator.token})

    assert unset.code == 10
    assert "TARGET_TOKEN" in unset.stderr
    assert wrong.code == 11
    assert "not-the-token" not in wrong.stderr
    assert right.code == 0, right.stderr


def test_selection_matches_keys_prefixes_globs(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text('from-file\n"with\\nnewline"\n')
    selection = Selection.build(
        keys=["exact"], prefixes=["user/"], globs=["cfg/*.json"], keys_files=[keys_file]
    )

    assert selection.matches("exact")
    assert selection.matches("from-file")
    assert selection.matches("with\nnewline")
    assert selection.matches("user/42")
    assert selection.matches("cfg/app.json")
    assert not selection.matches("cfg/app.yaml")
    assert not selection.matches("exactly")
    assert selection.list_prefix is None
    assert Selection.build(prefixes=["p/"]).list_prefix == "p/"
    assert Selection().everything


def test_restore_as_of_picks_older_snapshot(
    emulator: EmulatorServer, repo: str
) -> None:
    namespace_id = create_namespace(emulator, "hist", [SeedEntry("k", b"first")])
    env = cloudflare_env(emulator)
    assert run_cli(["backup", "hist", "--repo", repo], env).code == 0
    time.sleep(1.1)
    middle = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)
    put(emulator, namespace_id, [SeedEntry("k", b"second")])
    assert run_cli(["backup", "hist", "--repo", repo], env).code == 0

    result = restore(
        emulator,
        repo,
        "latest@hist",
        "--as-of",
        middle,
        "--conflict",
        "overwrite",
        "--yes",
    )

    assert result.code == 0, result.stderr
    assert value_of(emulator, namespace_id, "k") == b"first"


def test_restore_latest_skips_pre_restore_only(
    emulator: EmulatorServer, repo: str
) -> None:
    namespace_id = changed_users_state(emulator, repo)
    assert (
        restore(emulator, repo, "latest@users", "--conflict", "overwrite", "--yes").code
        == 0
    )
    [backup, saved] = sorted(snapshots(repo), key=lambda m: "pre-restore" in m.tags)

    by_title = restore(emulator, repo, "latest@users", "--dry-run", "--json", "--exact")
    by_id = restore(emulator, repo, f"latest@{namespace_id}", "--dry-run", "--json")

    assert by_title.code == 0, by_title.stderr
    assert json.loads(by_title.stdout)["snapshot"] == backup.id
    assert json.loads(by_title.stdout)["plan"]["delete"] == 1
    assert json.loads(by_id.stdout)["snapshot"] == backup.id
    assert saved.id != backup.id


@pytest.mark.parametrize(
    ("flags", "code", "named"),
    [
        (["--account", "6f3e"], 10, "--account '6f3e'"),
        (["--max-writes", "-1"], 2, "--max-writes"),
        (["--readback-window", "-5"], 2, "--readback-window"),
    ],
)
def test_restore_invalid_options(
    emulator: EmulatorServer, repo: str, flags: list[str], code: int, named: str
) -> None:
    changed_users_state(emulator, repo)

    result = restore(emulator, repo, "latest@users", "--dry-run", *flags)

    assert result.code == code
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_restore_warns_about_unknown_keys(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)

    result = restore(
        emulator,
        repo,
        "latest@users",
        "--key",
        "user/2",
        "--key",
        "nosuch",
        "--dry-run",
    )

    assert result.code == 0, result.stderr
    assert "1 of the 2 keys named by --key" in result.stderr


def test_restore_honours_rate_limit_option(emulator: EmulatorServer, repo: str) -> None:
    changed_users_state(emulator, repo)

    result = restore(
        emulator,
        repo,
        "latest@users",
        "--conflict",
        "overwrite",
        "--yes",
        "--rate-limit",
        "0/5",
    )

    assert result.code == 10
    assert "'0/5'" in result.stderr
