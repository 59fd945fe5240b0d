"""End-to-end backups against the emulator over HTTP, through the kvsnap CLI."""

from __future__ import annotations

import hashlib
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.seed import SeedEntry, auth_entries
from tests.kvtools import (
    cloudflare_env,
    create_namespace,
    metadata_of,
    records,
    records_by_key,
    run_cli,
    snapshots,
)

RANDOM_4096 = random.Random(1).randbytes(4096 - 5) + bytes.fromhex("fffe80c328")
SIXTEEN_BYTES = bytes.fromhex("d2da1e773c50d9359a89d553c3816d20")


@pytest.fixture
def repo(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


def backup(server: EmulatorServer, repo: str, *args: str, **env: str):
    return run_cli(["backup", "--repo", repo, *args], cloudflare_env(server, **env))


def test_backup_pagination_2501_keys(emulator: EmulatorServer, repo: str) -> None:
    entries = [SeedEntry(f"key/{i:05d}", f"value {i}".encode()) for i in range(2501)]
    namespace_id = create_namespace(emulator, "paged", entries)
    emulator.reset_stats()

    result = backup(emulator, repo, "paged", "--json")

    assert result.code == 0, result.stderr
    [manifest] = snapshots(repo)
    assert manifest.namespace_id == namespace_id
    assert manifest.keys == 2501
    keys = [record.key for record in records(repo, manifest)]
    assert keys == [entry.key for entry in entries]
    assert len(set(keys)) == 2501
    stats = emulator.stats()["requests"]
    assert stats["GET keys"] == 3
    assert stats["POST bulk/get"] == 26
    assert stats.get("GET values", 0) == 0


def test_backup_request_count_bound(emulator: EmulatorServer, repo: str) -> None:
    n = 4321
    entries = [SeedEntry(f"k{i}", b"x" * (i % 50)) for i in range(n)]
    create_namespace(emulator, "counted", entries)
    emulator.reset_stats()

    result = backup(emulator, repo, "counted")

    assert result.code == 0, result.stderr
    bound = math.ceil(n / 1000) + math.ceil(n / 100) + 1  # + one namespace list
    assert emulator.stats()["total"] <= bound


@pytest.mark.parametrize("mode", ["replace", "reject"])
def test_backup_binary_values_byte_exact(tmp_path: Path, repo: str, mode: str) -> None:
    with EmulatorServer(tmp_path / "kv", bulk_get_binary=mode) as server:
        text = [SeedEntry(f"bin/text{i:03d}", f"text {i}".encode()) for i in range(150)]
        binary = [
            SeedEntry("bin/random", RANDOM_4096),
            SeedEntry("bin/16", SIXTEEN_BYTES),
        ]
        create_namespace(server, "binary", text + binary)

        result = backup(server, repo, "binary")

    assert result.code == 0, result.stderr
    [manifest] = snapshots(repo)
    stored = records_by_key(repo, manifest)
    assert len(stored) == 152
    for entry in binary:
        record = stored[entry.key]
        assert record.base64 is True
        assert len(record.value_bytes()) == len(entry.value)
        assert (
            hashlib.sha256(record.value_bytes()).digest()
            == hashlib.sha256(entry.value).digest()
        )
    assert stored["bin/text007"].value == "text 7"
    assert stored["bin/text007"].base64 is False


def test_backup_all_binary_namespace_in_reject_mode(tmp_path: Path, repo: str) -> None:
    entries = [SeedEntry(f"z{i:03d}", bytes([0xFF, i % 256, 0x80])) for i in range(200)]
    with EmulatorServer(tmp_path / "kv", bulk_get_binary="reject") as server:
        create_namespace(server, "allbinary", entries)
        server.reset_stats()

        result = backup(server, repo, "allbinary")
        stats = server.stats()["requests"]

    assert result.code == 0, result.stderr
    stored = records_by_key(repo, snapshots(repo)[0])
    assert [stored[e.key].value_bytes() for e in entries] == [e.value for e in entries]
    # Each rejected batch of 100 costs two bulk gets, then one raw read per key.
    assert stats["POST bulk/get"] == 4
    assert stats["GET values"] == 200


def test_backup_credential_state_round_trip(
    emulator: EmulatorServer, repo: str
) -> None:
    entries = auth_entries()
    create_namespace(emulator, "auth-state", entries)
    before = time.time()

    result = backup(emulator, repo, "auth-state")

    assert result.code == 0, result.stderr
    stored = records_by_key(repo, snapshots(repo)[0])
    assert set(stored) == {entry.key for entry in entries}
    for entry in entries:
        record = stored[entry.key]
        assert record.value_bytes() == entry.value, entry.key
        assert metadata_of(record) == entry.metadata, entry.key
        if entry.expiration is not None:
            assert record.expiration == entry.expiration
        elif entry.expiration_ttl is not None:
            assert before + entry.expiration_ttl - 5 <= record.expiration
            assert record.expiration <= time.time() + entry.expiration_ttl + 5
        else:
            assert not record.has_expiration, entry.key


def test_backup_values_never_parsed(emulator: EmulatorServer, repo: str) -> None:
    texts = ["123", '"quoted"', '{"b":1, "a":2}', "true", "null", ""]
    entries = [SeedEntry(f"v{i}", text.encode()) for i, text in enumerate(texts)]
    create_namespace(emulator, "k08", entries)

    result = backup(emulator, repo, "k08")

    assert result.code == 0, result.stderr
    stored = records_by_key(repo, snapshots(repo)[0])
    assert [stored[f"v{i}"].value for i in range(len(texts))] == texts
    assert all(stored[f"v{i}"].base64 is False for i in range(len(texts)))


def test_backup_namespace_by_id_or_title(emulator: EmulatorServer, repo: str) -> None:
    cache_id = create_namespace(emulator, "app-CACHE", [SeedEntry("a", b"1")])
    other_id = create_namespace(emulator, cache_id, [SeedEntry("b", b"2")])

    by_title = backup(emulator, repo, "app-CACHE", "--json")
    ambiguous = backup(emulator, repo, cache_id)
    by_id = backup(emulator, repo, f"id:{cache_id}")
    by_other_title = backup(emulator, repo, f"title:{cache_id}")
    unknown = backup(emulator, repo, "app-cache")

    assert by_title.code == 0, by_title.stderr
    assert json.loads(by_title.stdout)["namespaces"][0]["namespace_id"] == cache_id
    assert ambiguous.code == 10
    assert "ambiguous" in ambiguous.stderr
    assert other_id in ambiguous.stderr
    assert by_id.code == 0
    assert by_other_title.code == 0
    assert unknown.code == 10
    assert "'app-CACHE'" in unknown.stderr
    manifests = snapshots(repo)
    assert [(m.namespace_id, m.namespace_title) for m in manifests] == [
        (cache_id, "app-CACHE"),
        (cache_id, "app-CACHE"),
        (other_id, cache_id),
    ]
    listed = emulator.stats()["requests"].get("POST namespaces", 0)
    assert listed == 2  # only the two creates above: backup never creates one


def test_backup_waits_out_rate_limit(tmp_path: Path, repo: str) -> None:
    entries = [SeedEntry(f"user/{i:04d}", f"v{i}".encode()) for i in range(5000)]
    with EmulatorServer(tmp_path / "kv") as seeder:
        create_namespace(seeder, "limited", entries)
    # The server allows 30 requests per 7 s; kvsnap assumes the default budget,
    # so it runs into 429 with Retry-After and must wait as told.
    with EmulatorServer(tmp_path / "kv", rate_limit=(30, 7.0)) as server:
        result = backup(server, repo, "limited")
        statuses = server.stats()["statuses"]

    assert result.code == 0, result.stderr
    assert int(statuses.get("429", 0)) >= 1
    stored = records(repo, snapshots(repo)[0])
    assert len(stored) == 5000
    assert all(record.value == f"v{int(record.key[5:])}" for record in stored)


def test_backup_retries_exhausted_publishes_nothing(tmp_path: Path, repo: str) -> None:
    entries = [SeedEntry(f"k{i:04d}", b"v") for i in range(1200)]
    with EmulatorServer(tmp_path / "kv") as server:
        create_namespace(server, "storm", entries)
        server.inject(
            "*", [Fault(status=429, retry_after=1)], after=3, repeat_last=True
        )

        result = backup(server, repo, "storm", "--max-attempts", "2")

    assert result.code == 12
    assert "failed after 2 attempts" in result.stderr
    assert snapshots(repo) == []


def test_backup_500_then_success(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "flaky", [SeedEntry(f"k{i}", b"v") for i in range(300)])
    emulator.inject("POST bulk/get", [Fault(status=500), Fault(status=503)])
    emulator.inject("GET keys", [Fault(drop=True)])

    result = backup(emulator, repo, "flaky")

    assert result.code == 0, result.stderr
    assert "retry 1 of" in result.stderr
    assert snapshots(repo)[0].keys == 300


def test_backup_fails_half_way_leaves_no_snapshot(
    emulator: EmulatorServer, repo: str
) -> None:
    create_namespace(
        emulator, "half", [SeedEntry(f"k{i:04d}", b"v") for i in range(2000)]
    )
    emulator.inject("POST bulk/get", [Fault(status=500)], after=10, repeat_last=True)
    emulator.inject("GET values", [Fault(status=502)], repeat_last=True)

    result = backup(
        emulator, repo, "half", "--max-attempts", "2", "--part-size", "4KiB"
    )

    assert result.code == 12, result.stderr
    assert snapshots(repo) == []
    parts = list(Path(repo, "data").rglob("*.jsonl.zst"))
    assert parts, "parts written before the failure stay as orphans"


def test_backup_partial_failure_exit_3(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "good", [SeedEntry("a", b"1")])
    create_namespace(emulator, "bad", [SeedEntry("b", b"2")])
    emulator.inject("GET keys", [None, Fault(status=500)], repeat_last=True)

    result = backup(emulator, repo, "good", "bad", "--max-attempts", "1", "--json")

    assert result.code == 3
    outcome = json.loads(result.stdout)
    assert [ns["ok"] for ns in outcome["namespaces"]] == [True, False]
    assert [m.namespace_title for m in snapshots(repo)] == ["good"]


def test_backup_wrong_token_exit_11_without_token(
    emulator: EmulatorServer, repo: str
) -> None:
    secret = "wrong-token-value-3b9f"

    result = backup(emulator, repo, "--all", CLOUDFLARE_API_TOKEN=secret)

    assert result.code == 11
    assert "token" in result.stderr
    assert secret not in result.stderr
    assert secret not in result.stdout


def test_backup_token_absent_from_debug_output(
    emulator: EmulatorServer, repo: str
) -> None:
    create_namespace(emulator, "quiet", [SeedEntry("a", b"1")])
    env = cloudflare_env(emulator)

    result = run_cli(["--debug", "backup", "--repo", repo, "--all", "--json"], env)

    assert result.code == 0, result.stderr
    assert emulator.token not in result.stderr
    assert emulator.token not in result.stdout


def test_backup_without_repository_exit_10(emulator: EmulatorServer) -> None:
    result = run_cli(["backup", "--all"], cloudflare_env(emulator))

    assert result.code == 10
    assert "--repo" in result.stderr
    assert "KVSNAP_REPOSITORY" in result.stderr


def test_backup_settings_from_toml(emulator: EmulatorServer, tmp_path: Path) -> None:
    create_namespace(emulator, "from-file", [SeedEntry("a", b"1")])
    create_namespace(emulator, "not-chosen", [SeedEntry("b", b"2")])
    repo = tmp_path / "file-repo"
    (tmp_path / "kvsnap.toml").write_text(
        f'repository = "{repo}"\nnamespaces = ["from-file"]\n'
        "\n[backup]\nconcurrency = 2\n"
    )

    result = run_cli(["backup"], cloudflare_env(emulator), cwd=tmp_path)

    assert result.code == 0, result.stderr
    assert [m.namespace_title for m in snapshots(str(repo))] == ["from-file"]


def test_backup_empty_namespace(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "empty")

    result = backup(emulator, repo, "empty")

    assert result.code == 0, result.stderr
    [manifest] = snapshots(repo)
    assert manifest.keys == 0
    assert manifest.parts == []


NAMESPACE_GONE = (
    b'{"success":false,"errors":[{"code":10013,"message":"namespace not found"}],'
    b'"messages":[],"result":null}'
)


def test_backup_namespace_deleted_midway(emulator: EmulatorServer, repo: str) -> None:
    create_namespace(emulator, "victim", [SeedEntry(f"k{i}", b"v") for i in range(50)])
    create_namespace(emulator, "after", [SeedEntry("a", b"1")])
    emulator.inject("POST bulk/get", [Fault(status=404, body=NAMESPACE_GONE)])

    result = backup(emulator, repo, "victim", "after", "--json")

    assert result.code == 3, result.stderr
    outcome = json.loads(result.stdout)["namespaces"]
    assert [ns["ok"] for ns in outcome] == [False, True]
    assert "not found" in outcome[0]["error"]
    assert [m.namespace_title for m in snapshots(repo)] == ["after"]


def test_backup_rate_limit_exhausted_no_fallback(
    emulator: EmulatorServer, repo: str
) -> None:
    create_namespace(
        emulator, "limited", [SeedEntry(f"k{i}", b"v") for i in range(300)]
    )
    emulator.inject(
        "POST bulk/get", [Fault(status=429, retry_after=0)], repeat_last=True
    )

    result = backup(emulator, repo, "limited", "--max-attempts", "2")

    assert result.code == 12
    assert "HTTP 429" in result.stderr
    assert emulator.stats()["requests"].get("GET values", 0) == 0
    assert snapshots(repo) == []


def test_backup_json_error_document(emulator: EmulatorServer) -> None:
    result = run_cli(["backup", "--all", "--json"], cloudflare_env(emulator))

    assert result.code == 10
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["exit_code"] == 10
    assert "--repo" in document["error"]


def test_backup_usage_error_exit_2(emulator: EmulatorServer, repo: str) -> None:
    result = backup(emulator, repo, "--concurrency", "abc")

    assert result.code == 2
    assert "--concurrency" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_backup_interrupted_leaves_no_snapshot(
    tmp_path: Path, repo: str, sig: signal.Signals
) -> None:
    entries = [SeedEntry(f"k{i:05d}", b"v" * 100) for i in range(20_000)]
    with EmulatorServer(tmp_path / "kv", rate_limit=(20, 2.0)) as server:
        create_namespace(server, "big", entries)
        command = [sys.executable, "-m", "kvsnap", "backup", "big", "--repo", repo]
        child = subprocess.Popen(
            [*command, "--part-size", "64KiB"],
            env=cloudflare_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Signal once the first part is stored, however loaded the machine is.
        deadline = time.monotonic() + 60
        while not list(Path(repo, "data").rglob("*.jsonl.zst")):
            assert child.poll() is None, "the backup ended before it was signalled"
            assert time.monotonic() < deadline, "no part stored within 60 s"
            time.sleep(0.05)
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=60)

    assert child.returncode == 130
    assert stdout == ""
    assert stderr.splitlines()[-1] == "interrupted"
    assert snapshots(repo) == []
    assert list(Path(repo, "data").rglob("*.jsonl.zst")), "parts written so far remain"


@pytest.mark.parametrize("tag", ["", "two\nlines"])
def test_backup_invalid_tag_rejected(
    emulator: EmulatorServer, repo: str, tag: str
) -> None:
    result = backup(emulator, repo, "--all", "--tag", tag)

    assert result.code == 10
    assert "--tag" in result.stderr


def test_backup_all_leaves_out_drill_sandboxes(
    emulator: EmulatorServer, repo: str
) -> None:
    create_namespace(emulator, "app", [SeedEntry("k", b"v")])
    create_namespace(emulator, "kvsnap-drill-0123abcd-kept", [SeedEntry("k", b"v")])

    result = backup(emulator, repo, "--all")

    assert result.code == 0, result.stderr
    assert [m.namespace_title for m in snapshots(repo)] == ["app"]
    assert "leaving out drill sandbox kvsnap-drill-0123abcd-kept" in result.stderr
