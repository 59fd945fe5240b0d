"""End-to-end restore drills against the emulator, through the kvsnap CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.seed import SeedEntry
from tests.kvtools import CliResult, cloudflare_env, create_namespace, run_cli, sdk
from tests.webhooks import TOKEN, Receiver

PNG_BYTES = bytes(range(256)) * 4  # not UTF-8: stored as base64
HOSTILE_KEY = "<script>alert('drill')</script>"


def entries() -> list[SeedEntry]:
    """Keys with binary values, metadata, expirations, Unicode and markup."""
    now = int(time.time())
    return [
        SeedEntry("bin/logo.png", PNG_BYTES, metadata={"type": "image/png"}),
        SeedEntry("session/1", b'{"user":1}', expiration=now + 3600),
        SeedEntry("session/2", b"two", metadata={"n": 2}, expiration_ttl=7200),
        SeedEntry("user/\u00e9l\u00e8ve", "caf\u00e9".encode()),
        SeedEntry("empty", b""),
        SeedEntry(HOSTILE_KEY, b"<b>bold</b>"),
        *(SeedEntry(f"item/{n:03d}", f"value {n}".encode()) for n in range(40)),
    ]


@pytest.fixture
def repo(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


def backed_up(server: EmulatorServer, repo: str, title: str = "app") -> str:
    """Create namespace `title` with `entries()` and back it up; return its id."""
    namespace_id = create_namespace(server, title, entries())
    done = run_cli(["backup", title, "--repo", repo], cloudflare_env(server))
    assert done.code == 0, done.stderr
    return namespace_id


def drill(server: EmulatorServer, repo: str, out: Path, *args: str) -> CliResult:
    return run_cli(
        ["drill", *args, "--repo", repo, "--output", str(out), "--json"],
        cloudflare_env(server),
    )


def namespace_titles(server: EmulatorServer) -> list[str]:
    client = sdk(server)
    return [ns.title for ns in client.kv.namespaces.list(account_id=server.account_id)]


def keys_of(server: EmulatorServer, namespace_id: str) -> list[str]:
    client = sdk(server)
    listed = client.kv.namespaces.keys.list(namespace_id, account_id=server.account_id)
    return [key.name for key in listed]


def sandbox_ids(server: EmulatorServer) -> dict[str, str]:
    client = sdk(server)
    return {
        ns.title: ns.id
        for ns in client.kv.namespaces.list(account_id=server.account_id)
        if ns.title.startswith("kvsnap-drill-")
    }


def output_of(result: CliResult) -> dict[str, Any]:
    return json.loads(result.stdout)


def test_drill_all_keys_passes(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)

    result = drill(emulator, repo, tmp_path / "out", "app", "--all")

    assert result.code == 0, result.stderr
    out = output_of(result)
    report = out["report"]
    assert out["ok"] is True
    assert report["ok"] is True
    assert report["counts"]["selected"] == 46
    assert report["counts"]["written"] == 46
    assert report["counts"]["checked"] == 46
    assert report["counts"]["mismatched"] == 0
    assert report["mismatches"] == []
    assert report["namespace_title"] == "app"
    assert [p["name"] for p in report["phases"]] == [
        "download",
        "validate",
        "plan",
        "write",
        "read_back",
        "cleanup",
    ]
    assert report["rto_estimate_seconds"] > 0
    assert report["rto_ok"] is True
    assert report["rpo_ok"] is True
    assert report["sandbox"]["created"] is True
    assert report["sandbox"]["deleted"] is True
    assert sandbox_ids(emulator) == {}
    assert "error:" not in result.stderr
    assert "warning:" not in result.stderr


def test_drill_writes_files_and_stores(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    out_dir = tmp_path / "out"

    result = drill(emulator, repo, out_dir, "app", "--sample", "10", "--seed", "5")

    assert result.code == 0, result.stderr
    out = output_of(result)
    files = sorted(Path(path).suffix for path in out["files"])
    assert files == [".html", ".json", ".md"]
    for path in out["files"]:
        text = Path(path).read_text()
        assert emulator.token not in text
        assert Path(path).parent == out_dir
    stored = Path(repo) / out["stored"]
    assert sorted(p.name for p in stored.iterdir()) == [
        "report.html",
        "report.json",
        "report.md",
    ]
    listed = run_cli(["reports", "--repo", repo, "--json"], cloudflare_env(emulator))
    assert listed.code == 0, listed.stderr
    summaries = json.loads(listed.stdout)
    assert [s["id"] for s in summaries] == [out["report"]["id"]]
    assert summaries[0]["ok"] is True
    assert summaries[0]["kind"] == "drill"
    shown = run_cli(
        ["reports", "show", out["report"]["id"][:5], "--repo", repo, "--format", "md"],
        cloudflare_env(emulator),
    )
    assert shown.code == 0, shown.stderr
    assert shown.stdout.startswith("# Restore drill: PASS")
    assert "--sample 10 --seed 5" in shown.stdout


def test_drill_sample_repeats_with_seed(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    args = ("app", "--sample", "7", "--seed", "42", "--keep")

    first = drill(emulator, repo, tmp_path / "a", *args)
    second = drill(emulator, repo, tmp_path / "b", *args)

    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    sandboxes = [
        output_of(r)["report"]["sandbox"]["namespace_id"] for r in (first, second)
    ]
    assert sorted(sandboxes) == sorted(sandbox_ids(emulator).values())
    chosen = [sorted(keys_of(emulator, ns)) for ns in sandboxes]
    assert len(chosen[0]) == 7
    assert chosen[0] == chosen[1]
    assert output_of(first)["report"]["seed"] == 42
    assert output_of(first)["report"]["sandbox"]["deleted"] is False


def test_drill_tampered_read_fails(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("session/2\n")
    tampered = {
        "success": True,
        "errors": [],
        "messages": [],
        "result": {"values": {"session/2": {"value": "TWO", "metadata": {"n": 2}}}},
    }
    emulator.inject(
        "POST bulk/get",
        [Fault(status=200, body=json.dumps(tampered).encode())],
        repeat_last=True,
    )

    result = drill(
        emulator,
        repo,
        tmp_path / "out",
        "app",
        "--keys-from",
        str(keys_file),
        "--readback-window",
        "0",
    )

    assert result.code == 7, result.stderr
    report = output_of(result)["report"]
    assert report["ok"] is False
    assert report["exit_code"] == 7
    assert report["mismatches"] == [
        {"key": "session/2", "fields": ["value", "expiration"]}
    ]
    assert report["counts"]["mismatched"] == 1
    assert report["problems"][0].startswith("Mismatched keys: 1.")
    assert sandbox_ids(emulator) == {}
    md_file = next(p for p in output_of(result)["files"] if p.endswith(".md"))
    md = Path(md_file).read_text()
    assert md.startswith("# Restore drill: FAIL")


def test_drill_stale_reads_fail(tmp_path: Path, repo: str) -> None:
    with EmulatorServer(tmp_path / "kv") as server:
        backed_up(server, repo)
    # The same data, served by a server whose reads lag 600 s behind writes.
    with EmulatorServer(tmp_path / "kv", stale_reads_seconds=600) as server:
        result = drill(
            server, repo, tmp_path / "out", "app", "--sample", "5", "--seed", "1",
            "--readback-window", "0",
        )  # fmt: skip

    assert result.code == 7, result.stderr
    report = output_of(result)["report"]
    assert report["counts"]["mismatched"] == 5
    assert {tuple(m["fields"]) for m in report["mismatches"]} == {("missing",)}
    assert "drill FAIL" not in result.stdout  # --json prints only the document


def test_drill_rejects_source_as_sandbox(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    namespace_id = backed_up(emulator, repo)
    emulator.reset_stats()

    result = drill(emulator, repo, tmp_path / "out", "app", "--sandbox", "app")

    assert result.code == 10, result.stderr
    report = output_of(result)["report"]
    assert report["ok"] is False
    assert "never writes into the namespace it tests" in report["error"]["message"]
    assert "never writes into the namespace it tests" in result.stderr
    writes = emulator.stats()["requests"]
    assert writes.get("PUT bulk", 0) == 0
    assert len(keys_of(emulator, namespace_id)) == 46


def test_drill_rejects_sandbox_with_keys(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    create_namespace(emulator, "scratch", [SeedEntry("left-over", b"x")])

    result = drill(emulator, repo, tmp_path / "out", "app", "--sandbox", "scratch")

    assert result.code == 10, result.stderr
    assert "contains keys" in result.stderr


def test_drill_given_sandbox_emptied(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    scratch = create_namespace(emulator, "scratch")

    result = drill(
        emulator, repo, tmp_path / "out", "app", "--sandbox", "scratch", "--sample", "9"
    )

    assert result.code == 0, result.stderr
    report = output_of(result)["report"]
    assert report["counts"]["checked"] == 9
    assert report["sandbox"] == {
        "namespace_id": scratch,
        "title": "scratch",
        "created": False,
        "deleted": False,
        "keys_removed": True,
    }
    assert "scratch" in namespace_titles(emulator)
    assert keys_of(emulator, scratch) == []


def test_drill_api_error_reports(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    emulator.inject("PUT bulk", [Fault(status=500)], repeat_last=True)

    result = run_cli(
        ["drill", "app", "--repo", repo, "-o", str(tmp_path / "out"),
         "--max-attempts", "1"],
        cloudflare_env(emulator),
    )  # fmt: skip

    assert result.code == 12, result.stderr
    assert result.stdout.startswith("drill FAIL: The drill stopped with an error")
    assert "problem: The drill stopped" in result.stderr
    assert sandbox_ids(emulator) == {}
    listed = run_cli(["reports", "--repo", repo], cloudflare_env(emulator))
    assert "FAIL" in listed.stdout


def test_failed_drill_alerts_the_webhook(
    emulator: EmulatorServer, repo: str, tmp_path: Path, receiver: Receiver
) -> None:
    backed_up(emulator, repo)
    emulator.inject("PUT bulk", [Fault(status=500)], repeat_last=True)
    env = cloudflare_env(emulator, KVSNAP_WEBHOOK_URL=receiver.url())

    result = run_cli(
        ["drill", "app", "--repo", repo, "-o", str(tmp_path / "out"),
         "--max-attempts", "1", "--json"],
        env,
    )  # fmt: skip

    assert result.code == 12, result.stderr
    [event] = receiver.bodies()
    assert event["type"] == "drill"
    assert event["run"] == output_of(result)["report"]["id"]
    assert "FAILED" in event["summary"]
    assert event["details"]["ok"] is False
    assert TOKEN not in result.stdout + result.stderr


def test_passed_drill_is_quiet_unless_asked(
    emulator: EmulatorServer, repo: str, tmp_path: Path, receiver: Receiver
) -> None:
    backed_up(emulator, repo)
    env = cloudflare_env(emulator, KVSNAP_WEBHOOK_URL=receiver.url())
    args = ["drill", "app", "--repo", repo, "-o", str(tmp_path), "--sample", "3"]

    assert run_cli(args, env).code == 0
    assert receiver.bodies() == []

    config = tmp_path / "kvsnap.toml"
    config.write_text("[notify]\non_success = true\n")
    assert run_cli([*args, "--config", str(config)], env).code == 0
    [event] = receiver.bodies()
    assert event["type"] == "drill"
    assert "passed" in event["summary"]


def test_drill_without_snapshot_fails(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)

    result = drill(emulator, repo, tmp_path / "out", "missing-namespace")

    assert result.code == 22, result.stderr
    report = output_of(result)["report"]
    assert report["snapshot_id"] is None
    assert report["error"]["type"] == "SnapshotNotFound"
    assert sandbox_ids(emulator) == {}


def test_drill_listed_key_missing(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("item/001\nnot/backed/up\n")

    result = drill(
        emulator, repo, tmp_path / "out", "app", "--keys-from", str(keys_file)
    )

    assert result.code == 7, result.stderr
    report = output_of(result)["report"]
    assert report["counts"]["checked"] == 1
    assert report["counts"]["named_missing"] == 1
    assert report["mismatches"] == [
        {"key": "not/backed/up", "fields": ["not-in-snapshot"]}
    ]


def test_drill_missed_targets_warn(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    config = tmp_path / "kvsnap.toml"
    config.write_text('[policy]\nrpo = "0.001s"\nrto = "0.001s"\n')

    result = run_cli(
        ["drill", "app", "--repo", repo, "-o", str(tmp_path / "out"),
         "--config", str(config)],
        cloudflare_env(emulator),
    )  # fmt: skip

    assert result.code == 0, result.stderr
    assert "RPO: " in result.stdout
    assert "MISSED" in result.stdout
    assert "warning: the RPO target is missed" in result.stderr
    assert "warning: the RTO target is missed" in result.stderr


def test_drill_exclusive_selection_flags(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    result = drill(emulator, repo, tmp_path / "out", "app", "--sample", "3", "--all")

    assert result.code == 10
    assert "--sample and --all exclude each other" in result.stderr
    assert not (tmp_path / "out").exists()


def test_drill_empty_snapshot_fails(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    create_namespace(emulator, "empty-ns")
    backup = run_cli(["backup", "empty-ns", "--repo", repo], cloudflare_env(emulator))
    assert backup.code == 0, backup.stderr

    result = drill(emulator, repo, tmp_path / "out", "empty-ns")

    assert result.code == 4, result.stderr
    report = output_of(result)["report"]
    assert report["ok"] is False
    assert "proves nothing" in report["problems"][0]
