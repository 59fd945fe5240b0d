"""The demo: the whole backup job on real data, with no Cloudflare account.

It starts the bundled emulator on a free loopback port, seeds it with the
data of `kvsnap.seed`, backs up every namespace into a local repository with
the same code path a real backup takes, verifies each snapshot by reading
every part back, and stops the emulator. The folder stays, so the user can
browse the repository and run more commands against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cloudflare

from kvsnap.backup import BackupResult, run_backup
from kvsnap.cloudflare import KvClient
from kvsnap.emulator import EmulatorServer
from kvsnap.format import Manifest
from kvsnap.progress import Reporter
from kvsnap.repository import Repository
from kvsnap.seed import demo_namespaces, write_namespace
from kvsnap.verify import VerifyResult, verify_snapshot

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """Outcome of the demo: what it seeded, backed up and verified, and where."""

    folder: Path
    emulator_data: Path
    repository: Path
    base_url: str
    account_id: str
    seeded: dict[str, int] = field(default_factory=dict)  # title -> keys written
    backup: BackupResult | None = None
    snapshots: list[Manifest] = field(default_factory=list)
    verified: list[VerifyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.backup is not None
            and self.backup.exit_code == 0
            and bool(self.verified)
            and all(result.ok for result in self.verified)
        )


async def run_demo(folder: Path, *, reporter: Reporter | None = None) -> DemoResult:
    """Seed an emulator in `folder`, back it all up, verify, and stop it."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "emulator"
    repository = folder / "repository"
    with EmulatorServer(data) as server:
        result = DemoResult(
            folder, data, repository, server.base_url, server.account_id
        )
        # Seeding uses the SDK's sync client, as a user's script would.
        seeder = cloudflare.Cloudflare(
            api_token=server.token, base_url=server.base_url, max_retries=2
        )
        for title, entries in demo_namespaces().items():
            write_namespace(seeder, server.account_id, title, entries)
            result.seeded[title] = len(entries)
            log.info("seeded namespace %s with %d keys", title, len(entries))
        seeder.close()

        async with KvClient(
            api_token=server.token,
            account_id=server.account_id,
            base_url=server.base_url,
        ) as client:
            namespaces = await client.resolve_namespaces((), all_namespaces=True)
            repo = await Repository.open_or_init(
                str(repository), account_id=server.account_id
            )
            result.backup = await run_backup(
                client,
                repo,
                namespaces,
                part_bytes=1024 * 1024,
                tags=["demo"],
                reporter=reporter,
            )

    result.snapshots = await repo.snapshots()
    for manifest in result.snapshots:
        result.verified.append(await verify_snapshot(repo, manifest, read_data=True))
    return result
