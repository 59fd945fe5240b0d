"""Helpers for end-to-end tests: seeding, running the CLI, reading snapshots."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudflare

from kvsnap.emulator import EmulatorServer
from kvsnap.format import Manifest, Record
from kvsnap.repository import Repository
from kvsnap.seed import SeedEntry, write_entries


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def sdk(server: EmulatorServer) -> cloudflare.Cloudflare:
    return cloudflare.Cloudflare(
        api_token=server.token, base_url=server.base_url, max_retries=0
    )


def create_namespace(
    server: EmulatorServer, title: str, entries: list[SeedEntry] | None = None
) -> str:
    client = sdk(server)
    namespace = client.kv.namespaces.create(account_id=server.account_id, title=title)
    assert namespace is not None
    if entries:
        write_entries(client, server.account_id, namespace.id, entries)
    return namespace.id


def cloudflare_env(server: EmulatorServer, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDFLARE_", "KVSNAP_", "AWS_"))
    }
    env |= {
        "CLOUDFLARE_API_TOKEN": server.token,
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_BASE_URL": server.base_url,
    }
    env |= extra
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> CliResult:
    """Run kvsnap in a child process, as a user would, with a time limit."""
    done = subprocess.run(
        [sys.executable, "-m", "kvsnap", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def snapshots(repo_url: str) -> list[Manifest]:
    async def load() -> list[Manifest]:
        repo = await Repository.open(repo_url)
        return await repo.snapshots()

    return asyncio.run(load())


def records(repo_url: str, manifest: Manifest) -> list[Record]:
    async def load() -> list[Record]:
        repo = await Repository.open(repo_url)
        return [record async for record in repo.iter_records(manifest)]

    return asyncio.run(load())


def records_by_key(repo_url: str, manifest: Manifest) -> dict[str, Record]:
    return {record.key: record for record in records(repo_url, manifest)}


def metadata_of(record: Record) -> Any:
    return record.metadata if record.has_metadata else None
