"""Backups into S3 server processes on 127.0.0.1: rclone, moto, a faulty proxy."""

from __future__ import annotations

import json
import os

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry, auth_entries
from tests.kvtools import cloudflare_env, create_namespace, run_cli
from tests.s3servers import FaultProxy

pytestmark = pytest.mark.s3

BINARY = SeedEntry("bin/16", bytes.fromhex("d2da1e773c50d9359a89d553c3816d20"))


def s3_env(server: EmulatorServer) -> dict[str, str]:
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return cloudflare_env(server, **aws)


@pytest.mark.parametrize("store", ["rclone_bucket", "moto_bucket"])
def test_backup_to_s3_verify_export(
    emulator: EmulatorServer, request: pytest.FixtureRequest, store: str
) -> None:
    url = request.getfixturevalue(store)
    entries = [*auth_entries(), BINARY]
    create_namespace(emulator, "auth-state", entries)
    env = s3_env(emulator)

    backup = run_cli(["backup", "auth-state", "--repo", url, "--json"], env)
    verify = run_cli(["verify", "latest@auth-state", "--read-data", "--repo", url], env)
    export = run_cli(["export", "latest@auth-state", "--repo", url], env)

    assert backup.code == 0, backup.stderr
    assert json.loads(backup.stdout)["namespaces"][0]["keys"] == len(entries)
    assert verify.code == 0, verify.stderr
    assert export.code == 0, export.stderr
    exported = {item["key"]: item for item in json.loads(export.stdout)}
    assert len(exported) == len(entries)
    assert exported["bin/16"] == {
        "key": "bin/16",
        "value": "0toedzxQ2TWaidVTw4FtIA==",
        "base64": True,
    }
    assert exported["json-like/2"]["value"] == '{"b":1, "a":2}'


def test_backup_part_upload_faults(
    emulator: EmulatorServer, fault_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, url = fault_proxy
    entries = [SeedEntry(f"k{i:04d}", b"v" * 200) for i in range(300)]
    create_namespace(emulator, "k13", entries)
    proxy.fail("PUT", r"/000001\.jsonl\.zst$", 503, times=1)
    proxy.fail("PUT", r"/000002\.jsonl\.zst$", 500)
    env = s3_env(emulator)

    result = run_cli(["backup", "k13", "--repo", url, "--part-size", "32KiB"], env)
    listed = run_cli(["snapshots", "--json", "--repo", url], env)

    assert result.code == 20, result.stderr
    assert "000002.jsonl.zst" in result.stderr
    assert "500" in result.stderr
    first = [r.status for r in proxy.requests_to("PUT", r"/000001\.jsonl\.zst$")]
    assert first == [503, 200]
    assert proxy.requests_to("PUT", r"/snapshots/") == []
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout) == []
