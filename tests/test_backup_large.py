"""Backups at the size limits: 25 MiB values and 100,000 keys (marked slow)."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.limits import MAX_VALUE_BYTES
from kvsnap.seed import SeedEntry
from tests.kvtools import cloudflare_env, create_namespace, records, run_cli, snapshots

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["replace", "reject"])
def test_backup_largest_values_byte_exact(tmp_path: Path, mode: str) -> None:
    rng = random.Random(25)
    binary = rng.randbytes(MAX_VALUE_BYTES)
    text = ("0123456789abcdef" * (MAX_VALUE_BYTES // 16)).encode()
    entries = [SeedEntry("big/binary", binary), SeedEntry("big/text", text)]
    repo = str(tmp_path / "repo")
    with EmulatorServer(tmp_path / "kv", bulk_get_binary=mode) as server:
        create_namespace(server, "large", entries)

        result = run_cli(["backup", "large", "--repo", repo], cloudflare_env(server))

    assert result.code == 0, result.stderr
    stored = {r.key: r.value_bytes() for r in records(repo, snapshots(repo)[0])}
    assert len(stored["big/binary"]) == MAX_VALUE_BYTES
    assert (
        hashlib.sha256(stored["big/binary"]).digest() == hashlib.sha256(binary).digest()
    )
    assert stored["big/text"] == text


def test_backup_100k_keys_request_bound(tmp_path: Path) -> None:
    n = 100_000
    entries = [SeedEntry(f"user/{i:06d}", f'{{"n":{i}}}'.encode()) for i in range(n)]
    repo = str(tmp_path / "repo")
    with EmulatorServer(tmp_path / "kv") as server:
        create_namespace(server, "many", entries)
        server.reset_stats()

        result = run_cli(["backup", "many", "--repo", repo], cloudflare_env(server))
        total = server.stats()["total"]

    assert result.code == 0, result.stderr
    assert snapshots(repo)[0].keys == n
    assert total <= math.ceil(n / 1000) + math.ceil(n / 100) + 1
