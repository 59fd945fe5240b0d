"""End-to-end restore drills against the emulator, through the kvsnap CLI."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kvsnap import drill as drill_module
from kvsnap.cloudflare import open_client
from kvsnap.config import load_settings
from kvsnap.drill import DrillOptions, DrillResult, run_drill
from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.policy import Policy
from kvsnap.report import DrillReport, list_reports
from kvsnap.repository import Repository
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
    assert report["rto"]["measured_in_full"] is True
    md_file = next(p for p in out["files"] if p.endswith(".md"))
    markdown = Path(md_file).read_text()
    assert "scaled from the sample" not in markdown
    assert markdown.count("(measured on every key)") == 2
    assert "46 keys restored into a sandbox, 46 read back equal, 0 mismatched." in (
        markdown
    )
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


def report_folders(repo: str) -> list[Path]:
    folder = Path(repo) / "reports"
    return sorted(folder.iterdir()) if folder.exists() else []


def assert_not_started(
    result: CliResult, repo: str, out: Path, code: int, stored: int = 0
) -> None:
    """A drill stopped by a usage error: its code, and no report of it anywhere.

    `stored` is the number of reports that earlier drills stored.
    """
    assert result.code == code, result.stderr
    document = output_of(result)
    assert document["type"] == "error"
    assert document["exit_code"] == code
    assert "report" not in document
    assert "error: " in result.stderr
    assert len(report_folders(repo)) == stored
    assert not out.exists()


def test_drill_rejects_source_as_sandbox(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    namespace_id = backed_up(emulator, repo)
    emulator.reset_stats()

    result = drill(emulator, repo, tmp_path / "out", "app", "--sandbox", "app")

    assert_not_started(result, repo, tmp_path / "out", 10)
    assert "never writes into the namespace it tests" in output_of(result)["error"]
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

    assert_not_started(result, repo, tmp_path / "out", 10)
    assert "contains keys" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--snapshot", "abcdef12"), 22, "no snapshot"),
        (("--sandbox", "no-such-namespace"), 10, "not found"),
        (("--keys-from", "EMPTY"), 10, "lists no keys"),
        (("--keys-from", "NOT_UTF8"), 10, "not valid UTF-8"),
    ],
)
def test_drill_usage_error_stores_no_report(
    emulator: EmulatorServer,
    repo: str,
    tmp_path: Path,
    receiver: Receiver,
    args: tuple[str, str],
    code: int,
    message: str,
) -> None:
    backed_up(emulator, repo)
    files = {"EMPTY": b"\n\n", "NOT_UTF8": b"\xff\xfe\n"}
    flag, value = args
    if value in files:
        path = tmp_path / "keys.txt"
        path.write_bytes(files[value])
        value = str(path)
    config = tmp_path / "kvsnap.toml"
    config.write_text("[notify]\non_success = true\n")
    out = tmp_path / "out"

    result = run_cli(
        ["drill", "app", flag, value, "--repo", repo, "--output", str(out),
         "--config", str(config), "--json"],
        cloudflare_env(emulator, KVSNAP_WEBHOOK_URL=receiver.url()),
    )  # fmt: skip

    assert_not_started(result, repo, out, code)
    assert message in output_of(result)["error"]
    assert receiver.bodies() == []
    assert sandbox_ids(emulator) == {}
    status = run_cli(["reports", "--repo", repo], cloudflare_env(emulator))
    assert "FAIL" not in status.stdout


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

    assert_not_started(result, repo, tmp_path / "out", 22)
    assert "no snapshot of namespace 'missing-namespace'" in result.stderr
    assert sandbox_ids(emulator) == {}


@pytest.mark.parametrize("form", ["title:app", "id:ID"])
def test_drill_accepts_id_and_title_forms(
    emulator: EmulatorServer, repo: str, tmp_path: Path, form: str
) -> None:
    namespace_id = backed_up(emulator, repo)
    name = form.replace("ID", namespace_id)

    result = drill(emulator, repo, tmp_path / "out", name, "--sample", "3")

    assert result.code == 0, result.stderr
    report = output_of(result)["report"]
    assert report["namespace_id"] == namespace_id
    assert report["counts"]["checked"] == 3
    assert f"kvsnap drill {namespace_id} --snapshot" in report["commands"][0]


def test_drill_id_and_title_forms_match_one_field(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    namespace_id = backed_up(emulator, repo)
    snapshot_id = output_of(
        drill(emulator, repo, tmp_path / "a", "app", "--sample", "1")
    )["report"]["snapshot_id"]

    by_id_as_title = drill(emulator, repo, tmp_path / "b", f"title:{namespace_id}")
    by_title_as_id = drill(
        emulator, repo, tmp_path / "c", "id:app", "--snapshot", snapshot_id
    )

    assert_not_started(by_id_as_title, repo, tmp_path / "b", 22, stored=1)
    assert f"no snapshot of namespace 'title:{namespace_id}'" in by_id_as_title.stderr
    assert by_title_as_id.code == 10, by_title_as_id.stderr
    assert "not 'id:app'" in by_title_as_id.stderr


def test_drill_keys_from_only_missing_keys_restores_nothing(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    scratch = create_namespace(emulator, "scratch")
    keys_file = tmp_path / "keys3.txt"
    keys_file.write_text("nope1\nnope2\n")
    emulator.reset_stats()

    result = drill(
        emulator, repo, tmp_path / "out", "app", "--keys-from", str(keys_file),
        "--sandbox", "scratch", "--keep",
    )  # fmt: skip

    assert result.code == 7, result.stderr
    report = output_of(result)["report"]
    assert emulator.stats()["requests"].get("PUT bulk", 0) == 0
    assert keys_of(emulator, scratch) == []
    counts = report["counts"]
    assert (counts["selected"], counts["written"], counts["checked"]) == (0, 0, 0)
    assert counts["named_missing"] == 2
    assert report["mismatches"] == [
        {"key": "nope1", "fields": ["not-in-snapshot"]},
        {"key": "nope2", "fields": ["not-in-snapshot"]},
    ]
    assert report["problems"] == [
        f"Listed keys not in the snapshot: 2. {keys_file} names them, but the "
        "snapshot holds no such key, so they could not be restored."
    ]
    md_file = next(p for p in output_of(result)["files"] if p.endswith(".md"))
    assert (
        "0 keys restored into a sandbox, 0 read back equal, 2 listed keys not in "
        "the snapshot." in Path(md_file).read_text()
    )


def test_drill_keys_from_only_missing_keys_created_sandbox(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("nope1\n")
    emulator.reset_stats()

    result = drill(
        emulator, repo, tmp_path / "out", "app", "--keys-from", str(keys_file)
    )

    assert result.code == 7, result.stderr
    assert emulator.stats()["requests"].get("PUT bulk", 0) == 0
    assert output_of(result)["report"]["counts"]["written"] == 0
    assert sandbox_ids(emulator) == {}
    assert output_of(result)["stored"] is not None


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
    assert [p.split(".")[0] for p in report["problems"]] == [
        "Listed keys not in the snapshot: 1"
    ]
    assert not any("sandbox does not contain" in p for p in report["problems"])


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


# Failures after the sandbox exists, run in this process so faults can be
# injected into the drill's own code.


async def drill_app(
    server: EmulatorServer, repo: str, sandbox: str | None = None
) -> DrillResult:
    settings = load_settings(env=cloudflare_env(server), repository=repo)
    repository = await Repository.open(repo)
    async with open_client(settings) as client:
        options = DrillOptions(namespace="app", sandbox=sandbox, sample=9)
        return await run_drill(repository, client, settings, Policy(), options)


def run_in_process(
    server: EmulatorServer, repo: str, sandbox: str | None = None
) -> DrillResult:
    return asyncio.run(drill_app(server, repo, sandbox))


def stored_reports(repo: str) -> list[DrillReport]:
    folders = sorted((Path(repo) / "reports").iterdir())
    return [
        msgspec.json.decode((f / "report.json").read_bytes(), type=DrillReport)
        for f in folders
    ]


def test_drill_temp_folder_failure_does_not_start(
    emulator: EmulatorServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(emulator, repo)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(drill_module.tempfile, "TemporaryDirectory", no_space)

    result = run_in_process(emulator, repo)

    assert result.started is False
    assert result.exit_code == 20
    assert result.error is not None
    assert result.error.exit_code == 20
    assert "No space left on device" in result.error.message
    assert result.error.hint is not None
    assert "TMPDIR" in result.error.hint
    assert result.report.ok is False
    assert result.report.sandbox is None
    assert sandbox_ids(emulator) == {}
    assert result.stored_folder is None
    assert not (Path(repo) / "reports").exists()


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """Make writing any file whose path contains `marker` fail with ENOSPC."""
    real_write_bytes = Path.write_bytes

    def write_bytes(path: Path, data: bytes) -> int:
        if marker in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_drill_disk_full_deletes_sandbox(
    emulator: EmulatorServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(emulator, repo)
    fill_disk_at(monkeypatch, "/mirror/")

    result = run_in_process(emulator, repo)

    assert result.exit_code == 20
    report = result.report
    assert report.error is not None
    assert "No space left on device" in report.error.message
    assert report.error.hint is not None
    assert "TMPDIR" in report.error.hint
    assert report.sandbox is not None
    assert report.sandbox.created is True
    assert report.sandbox.deleted is True
    assert sandbox_ids(emulator) == {}
    assert [r.id for r in stored_reports(repo)] == [report.id]


def test_drill_given_sandbox_emptied_after_error(
    emulator: EmulatorServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(emulator, repo)
    scratch = create_namespace(emulator, "scratch")

    def unreadable_spool(path: Path) -> int:
        raise OSError(errno.EIO, "Input/output error", str(path))

    # Fails after the keys were written into the sandbox.
    monkeypatch.setattr(drill_module, "_spool_body_bytes", unreadable_spool)

    result = run_in_process(emulator, repo, sandbox="scratch")

    assert result.exit_code == 20
    assert result.report.counts.written == 9
    assert result.report.sandbox is not None
    assert result.report.sandbox.keys_removed is True
    assert keys_of(emulator, scratch) == []
    assert "scratch" in namespace_titles(emulator)


def test_drill_cancelled_deletes_sandbox(
    emulator: EmulatorServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(emulator, repo)
    real_apply_plan = drill_module.apply_plan
    written = asyncio.Event()

    async def apply_then_hang(*args: Any, **kwargs: Any) -> Any:
        await real_apply_plan(*args, **kwargs)
        written.set()
        await asyncio.sleep(120)

    monkeypatch.setattr(drill_module, "apply_plan", apply_then_hang)

    async def go() -> None:
        drill_task = asyncio.create_task(drill_app(emulator, repo))
        await asyncio.wait_for(written.wait(), 60)
        drill_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drill_task

    asyncio.run(go())

    assert sandbox_ids(emulator) == {}
    [stored] = stored_reports(repo)
    assert stored.ok is False
    assert stored.exit_code == 130
    assert stored.error is not None
    assert stored.error.type == "Interrupted"
    assert stored.sandbox is not None
    assert stored.sandbox.deleted is True


def test_drill_sigterm_deletes_sandbox(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    # The bulk write hangs, so SIGTERM arrives while the sandbox exists.
    emulator.inject("PUT bulk", [Fault(status=500, delay_ms=30_000)])
    args = ["drill", "app", "--repo", repo, "-o", str(tmp_path / "out")]
    child = subprocess.Popen(
        [sys.executable, "-m", "kvsnap", *args],
        env=cloudflare_env(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not sandbox_ids(emulator) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox_ids(emulator), "the drill created no sandbox within 60 s"
        time.sleep(1.0)  # let the drill reach the hanging bulk write
        os.kill(child.pid, signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)

    assert child.returncode == 130, stderr
    assert sandbox_ids(emulator) == {}
    [stored] = stored_reports(repo)
    assert stored.ok is False
    assert stored.error is not None
    assert stored.error.type == "Interrupted"
    listed = run_cli(["reports", "--repo", repo], cloudflare_env(emulator))
    assert "FAIL" in listed.stdout


def test_drill_consistency_wait_not_scaled(tmp_path: Path, repo: str) -> None:
    with EmulatorServer(tmp_path / "kv") as server:
        backed_up(server, repo)
    # Reads lag 2 s behind writes, so the first read-back finds no key.
    with EmulatorServer(tmp_path / "kv", stale_reads_seconds=2) as server:
        result = drill(
            server, repo, tmp_path / "out", "app", "--sample", "5", "--seed", "1"
        )

    assert result.code == 0, result.stderr
    report = output_of(result)["report"]
    assert report["counts"]["checked"] == 5
    rto = report["rto"]
    assert rto["consistency_wait_seconds"] >= 1.0
    # Scaling the whole read-back by 46 / 5 keys would give over 9 s.
    assert rto["read_back_seconds"] < rto["consistency_wait_seconds"]
    [read_back] = [p for p in report["phases"] if p["name"] == "read_back"]
    assert "re-reading keys that differed" in read_back["detail"]
    assert read_back["seconds"] >= rto["consistency_wait_seconds"]


def test_damaged_latest_report_fails_status(
    emulator: EmulatorServer, repo: str, tmp_path: Path
) -> None:
    backed_up(emulator, repo)
    config = tmp_path / "kvsnap.toml"
    config.write_text(f'repository = "{repo}"\nnamespaces = ["app"]\n')
    env = cloudflare_env(emulator, KVSNAP_CONFIG=str(config))
    assert run_cli(["verify"], env).code == 0
    first = drill(emulator, repo, tmp_path / "a", "app", "--sample", "3")
    time.sleep(1.1)  # report folders are named to the second
    second = drill(emulator, repo, tmp_path / "b", "app", "--sample", "3")
    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    latest = Path(repo) / output_of(second)["stored"] / "report.json"
    latest.write_bytes(latest.read_bytes()[:200])  # a write cut short

    status = run_cli(["status", "--json"], env)
    listed = run_cli(["reports", "--repo", repo], env)

    [row] = json.loads(status.stdout)["namespaces"]
    assert row["last_drill_ok"] is False
    assert status.code == 2
    latest_id = output_of(second)["report"]["id"]
    assert any(f"({latest_id}) failed" in reason for reason in row["reasons"])
    assert listed.code == 0, listed.stderr
    assert "FAIL, damaged report" in listed.stdout
    summaries = asyncio.run(_summaries(repo))
    assert [s.ok for s in summaries] == [True, False]


async def _summaries(repo: str) -> list[Any]:
    return await list_reports(await Repository.open(repo))
