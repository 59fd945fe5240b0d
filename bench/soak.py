"""Run backup, verify and restore cycles under API faults for a set time.

Usage: python bench/soak.py [--minutes 30] [--fault-rate 0.1] [--fault-seed N]
       [--faults 429,500,502,503,drop,slow,truncate] [--seed 1] [--keys 400]
       [--cycles N] [--max-attempts N] [--kill-share 0.3] [--keep-workdir]
       [--json]

The script starts one emulator on 127.0.0.1 inside its own process and seeds
a source namespace through the Cloudflare SDK with random faults off. Random
faults are switched on only while a `kvsnap backup` or `kvsnap restore` child
process runs, so every read and write of the script itself is fault-free.
One random-fault generator, seeded with --fault-seed, serves the whole run.
Each cycle then:

1. changes a few keys of the source namespace (adds, overwrites, metadata
   and expiration changes, deletes), drawn from --seed;
2. reads the source namespace and runs `kvsnap backup` into a local folder
   repository, in parts of 64 KiB so that each backup uploads many. The
   script writes nothing while the backup runs, so a successful backup must
   publish exactly one snapshot whose records equal the source namespace.
   A failed backup must publish none;
3. runs `kvsnap verify SNAPSHOT --read-data`. Verify reads only the local
   repository, where no faults are injected, so it must pass;
4. runs `kvsnap restore SNAPSHOT --to NEW --create --yes` and reads the new
   namespace. A successful restore must leave it equal to the snapshot. A
   failed restore may have written only the keys its error message reports
   (the first N planned keys in byte order, plus up to M of the request that
   failed). The script then deletes the namespace.

A share of the cycles (--kill-share) first runs an extra backup and kills
it with SIGKILL at a random point within the last backup's duration, faults
on. A snapshot that such a backup published before it died must pass
`verify --read-data` and equal the source; the cycle then goes on as above,
so the next backup has to succeed over what the killed one left. At the
end, prune runs with every snapshot kept and no grace for orphans: after
it, every stored part belongs to a snapshot and no lock is left.

Every command must either succeed with the correct result or fail loudly:
a non-zero exit code, ``error:`` on stderr and no traceback. A success with
a wrong result counts as data lost, and so does a published snapshot that
fails verify. A failure that is not loud, a command that runs into its
timeout, and a failed command that leaves a change it did not report count
as quiet failures. The script exits 1 when either count is above 0, else 0.

The run stops starting cycles at the deadline (--minutes) or after --cycles
cycles. The cycle in progress at the deadline runs to its end, which takes
at most three command timeouts (COMMAND_TIMEOUT_SECONDS each) plus the
reads. The summary goes to stdout, as text or with --json as one JSON
object, and progress goes to stderr. The working folder (emulator data and
repository) is a temporary folder under the system's temporary directory.
It is removed at the end unless a problem was found or --keep-workdir is
given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudflare

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import FAULT_KINDS, RandomFaults
from kvsnap.format import Record
from kvsnap.lock import LOCKS_DIR
from kvsnap.repository import Repository
from kvsnap.retention import Retention, prune
from kvsnap.seed import SeedEntry, write_entries

log = logging.getLogger("soak")

DEFAULT_MINUTES = 30.0
DEFAULT_FAULT_RATE = 0.1
DEFAULT_KEYS = 400
DEFAULT_KILL_SHARE = 0.3
# Small parts give each backup many uploads, so kills land between them.
PART_SIZE = "64KiB"
# Prune at the end keeps every snapshot of the run.
KEEP_EVERY_SNAPSHOT = Retention(keep_last=1_000_000)
SOURCE_TITLE = "soak-source"
# A backup or restore of a few hundred keys takes seconds even under faults.
# A restore that finds a mismatch keeps reading for its 90 s read-back
# window, so the timeout leaves room for that and for retries.
COMMAND_TIMEOUT_SECONDS = 300
# Keys changed, added or deleted per cycle.
MUTATIONS_PER_CYCLE = (1, 12)
# Workers KV limits: 512 bytes per key name, 1,024 bytes of metadata.
MAX_KEY_BYTES = 512
MAX_METADATA_BYTES = 1024
# Characters that URL paths, shells and file systems treat specially.
ODD_KEY_CHARACTERS = "/%+#? &=~:;,'\"\\é\u0301ßλ中🗝"
# Expirations lie this far ahead, so that restore never skips a key as near
# expiry (it skips those within 90 s).
# NOTE: a run longer than 2 hours may see keys expire between the source
# read and the backup, which the comparison would count as data lost.
EXPIRATION_SECONDS = (2 * 3600, 48 * 3600)
# At most this many problems are kept with their details for the summary.
MAX_PROBLEMS_SHOWN = 20

# A key's value bytes, its metadata as canonical JSON (or None), and its
# expiration in epoch seconds (or None).
Entry = tuple[bytes, str | None, float | None]
Contents = dict[str, Entry]


@dataclass
class CommandResult:
    name: str
    code: int | None  # None when the command timed out and was killed
    stdout: str
    stderr: str


@dataclass
class Tally:
    """Counters of the whole run, printed as the summary."""

    cycles: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    failed_by_exit_code: Counter[str] = field(default_factory=Counter)
    kvsnap_requests: int = 0
    snapshots_verified: int = 0
    keys_compared: int = 0
    backups_killed: int = 0
    killed_backups_published: int = 0
    orphan_parts_removed: int = 0
    data_lost: int = 0
    quiet_failures: int = 0
    problems: list[str] = field(default_factory=list)

    def note_problem(self, kind: str, message: str) -> None:
        if kind == "data lost":
            self.data_lost += 1
        else:
            self.quiet_failures += 1
        log.error("%s: %s", kind, message)
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(f"{kind}: {message}")


class KeyFactory:
    """Draws new keys, values, metadata and expirations from one seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

    def key(self) -> str:
        self.counter += 1
        style = self.rng.random()
        if style < 0.6:
            return f"user/{self.counter:06d}"
        if style < 0.9:
            odd = "".join(
                self.rng.choices(ODD_KEY_CHARACTERS, k=self.rng.randint(1, 8))
            )
            return f"odd/{self.counter:06d}/{odd}"
        return self._long_key()

    def _long_key(self) -> str:
        """Build a key of 300 to 512 UTF-8 bytes, with multi-byte characters."""
        target = self.rng.randint(300, MAX_KEY_BYTES)
        key = f"long/{self.counter:06d}/"
        while True:
            step = self.rng.choice("abcé中🗝/")
            if len((key + step).encode()) > target:
                return key
            key += step

    def value(self) -> bytes:
        style = self.rng.random()
        if style < 0.05:
            return b""
        if style < 0.25:
            # Not valid UTF-8, so kvsnap must read it raw and store it as base64.
            return self.rng.randbytes(self.rng.randint(1, 2000)) + b"\xff\xfe"
        if style < 0.27:
            return ("large " * self.rng.randint(10_000, 40_000)).encode()
        body = {"n": self.rng.randint(0, 10**9), "text": "x" * self.rng.randint(0, 500)}
        return json.dumps(body).encode()

    def metadata(self) -> Any:
        if self.rng.random() < 0.6:
            return None
        candidates: list[Any] = [
            {"n": self.rng.randint(-(10**6), 10**6)},
            {"f": self.rng.random(), "ok": self.rng.random() < 0.5, "none": None},
            {"tags": ["a", "é", "🗝"], "nested": {"depth": [1, 2, {"x": "y"}]}},
            {"pad": "m" * self.rng.randint(0, MAX_METADATA_BYTES - 20)},
        ]
        return self.rng.choice(candidates)

    def expiration(self) -> int | None:
        if self.rng.random() < 0.7:
            return None
        return int(time.time()) + self.rng.randint(*EXPIRATION_SECONDS)

    def entry(self, key: str) -> SeedEntry:
        return SeedEntry(
            key, self.value(), metadata=self.metadata(), expiration=self.expiration()
        )


def canonical_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def record_entry(record: Record) -> Entry:
    metadata = canonical_json(record.metadata) if record.has_metadata else None
    expiration = float(record.expiration) if record.has_expiration else None
    return record.value_bytes(), metadata, expiration


def differences(actual: Contents, expected: Contents, limit: int = 5) -> list[str]:
    """Describe up to `limit` keys that differ between two namespace states."""
    found = []
    for key in sorted(actual.keys() | expected.keys()):
        if key not in actual:
            found.append(f"{key!r} missing")
        elif key not in expected:
            found.append(f"{key!r} unexpected")
        elif actual[key] != expected[key]:
            fields = ("value", "metadata", "expiration")
            changed = [
                name
                for name, left, right in zip(
                    fields, actual[key], expected[key], strict=True
                )
                if left != right
            ]
            found.append(f"{key!r} differs in {', '.join(changed)}")
        if len(found) >= limit:
            break
    return found


def reported_counts(stderr: str, verb: str) -> tuple[int, int]:
    """Return the keys a failed restore reports as done, and as maybe done.

    The message reads "wrote N of M planned keys and up to K more".
    """
    text = " ".join(stderr.split())
    found = re.search(
        rf"{verb} (\d+) of \d+ planned keys(?: and up to (\d+) more)?", text
    )
    if found is None:
        return 0, 0
    return int(found.group(1)), int(found.group(2) or 0)


def first_error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("error:"):
            return line[:300]
    return stderr.strip().splitlines()[-1][:300] if stderr.strip() else "(no stderr)"


class Soak:
    """One run: the emulator, the source namespace, the repository and the tally."""

    def __init__(
        self,
        server: EmulatorServer,
        workdir: Path,
        faults: RandomFaults,
        seed: int,
        max_attempts: int | None,
        kill_share: float = DEFAULT_KILL_SHARE,
    ) -> None:
        self.server = server
        self.kill_share = kill_share
        # Its own generator, so that kills do not change the data drawn.
        self.kill_rng = random.Random(seed + 1)
        self.backup_seconds = 2.0  # replaced by each successful backup's time
        # Options passed to backup and restore.
        self.retry = (
            [] if max_attempts is None else ["--max-attempts", str(max_attempts)]
        )
        self.workdir = workdir
        self.repo = str(workdir / "repo")
        self.faults = faults
        self.rng = random.Random(seed)
        self.factory = KeyFactory(self.rng)
        self.tally = Tally()
        self.client = cloudflare.Cloudflare(
            api_token=server.token, base_url=server.base_url, max_retries=0
        )
        self.source_id = ""
        self.source_keys: list[str] = []

    # -- source namespace, written and read without faults -----------------

    def seed_source(self, keys: int) -> None:
        namespace = self.client.kv.namespaces.create(
            account_id=self.server.account_id, title=SOURCE_TITLE
        )
        assert namespace is not None
        self.source_id = namespace.id
        entries = [self.factory.entry(self.factory.key()) for _ in range(keys)]
        write_entries(self.client, self.server.account_id, self.source_id, entries)
        self.source_keys = [entry.key for entry in entries]
        log.info("seeded %d keys into namespace %s", keys, self.source_id)

    def mutate_source(self) -> None:
        """Add, overwrite and delete a few seeded-random keys of the source."""
        writes: dict[str, SeedEntry] = {}
        deletes: set[str] = set()
        for _ in range(self.rng.randint(*MUTATIONS_PER_CYCLE)):
            action = self.rng.random()
            if action < 0.3 or len(self.source_keys) < 10:
                key = self.factory.key()
                self.source_keys.append(key)
            else:
                key = self.rng.choice(self.source_keys)
            if action >= 0.8 and key not in writes:
                deletes.add(key)
                continue
            deletes.discard(key)
            writes[key] = self.factory.entry(key)
        account = self.server.account_id
        if writes:
            write_entries(self.client, account, self.source_id, list(writes.values()))
        if deletes:
            self.client.kv.namespaces.bulk_delete(
                self.source_id, account_id=account, body=sorted(deletes)
            )
            self.source_keys = [k for k in self.source_keys if k not in deletes]

    def read_namespace(self, namespace_id: str) -> Contents:
        """Read every key, value, metadata and expiration through the SDK."""
        account = self.server.account_id
        contents: Contents = {}
        listing = self.client.kv.namespaces.keys.list(
            namespace_id, account_id=account, limit=1000
        )
        for item in listing:
            value = self.client.kv.namespaces.values.get(
                item.name, namespace_id=namespace_id, account_id=account
            ).read()
            expiration = float(item.expiration) if item.expiration else None
            contents[item.name] = (value, canonical_json(item.metadata), expiration)
        return contents

    def find_namespace(self, title: str) -> list[str]:
        account = self.server.account_id
        found = self.client.kv.namespaces.list(account_id=account, per_page=100)
        return [namespace.id for namespace in found if namespace.title == title]

    # -- repository --------------------------------------------------------

    def snapshot_ids(self) -> set[str]:
        async def load() -> set[str]:
            if not Path(self.repo).exists():
                return set()
            repo = await Repository.open(self.repo)
            return {manifest.id for manifest in await repo.snapshots()}

        return asyncio.run(load())

    def snapshot_contents(self, snapshot_id: str) -> Contents:
        async def load() -> Contents:
            repo = await Repository.open(self.repo)
            [manifest] = [m for m in await repo.snapshots() if m.id == snapshot_id]
            contents: Contents = {}
            async for record in repo.iter_records(manifest):
                contents[record.key] = record_entry(record)
            return contents

        return asyncio.run(load())

    # -- running kvsnap ----------------------------------------------------

    @contextlib.contextmanager
    def random_faults_on(self) -> Iterator[None]:
        """Switch random faults on, and count the API requests made meanwhile."""
        before = fetch_stats(self.server)["total"]
        self.server.random_faults = self.faults
        try:
            yield
        finally:
            self.server.random_faults = None
            self.tally.kvsnap_requests += fetch_stats(self.server)["total"] - before

    def kvsnap_command(self, name: str, args: list[str]) -> list[str]:
        self.tally.commands[name] += 1
        return [sys.executable, "-m", "kvsnap", name, *args, "--repo", self.repo]

    def kvsnap_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CLOUDFLARE_", "KVSNAP_", "AWS_"))
        }
        return env | {
            "CLOUDFLARE_API_TOKEN": self.server.token,
            "CLOUDFLARE_ACCOUNT_ID": self.server.account_id,
            "CLOUDFLARE_BASE_URL": self.server.base_url,
        }

    def run_kvsnap(self, name: str, args: list[str]) -> CommandResult:
        """Run one kvsnap command in a child process, with a timeout."""
        try:
            done = subprocess.run(
                self.kvsnap_command(name, args),
                env=self.kvsnap_env(),
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else ""
            return CommandResult(name, None, "", stderr or "")
        return CommandResult(name, done.returncode, done.stdout, done.stderr)

    def kill_kvsnap(self, name: str, args: list[str], seconds: float) -> bool:
        """Run a command and SIGKILL it after `seconds`; False if it ended first."""
        process = subprocess.Popen(
            self.kvsnap_command(name, args),
            env=self.kvsnap_env(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=COMMAND_TIMEOUT_SECONDS)
            return True
        if process.wait(timeout=COMMAND_TIMEOUT_SECONDS) != 0:
            self.tally.failed_by_exit_code[str(process.returncode)] += 1
        return False

    def judge_failure(self, result: CommandResult) -> None:
        """Count a failed command, and note it as a problem unless it was loud."""
        if result.code is None:
            message = f"{result.name} timed out after {COMMAND_TIMEOUT_SECONDS} s"
            self.tally.note_problem("quiet failure", message)
            return
        self.tally.failed_by_exit_code[str(result.code)] += 1
        log.info(
            "%s failed loudly with exit code %d: %s",
            result.name,
            result.code,
            first_error_line(result.stderr),
        )
        if "error:" not in result.stderr or "Traceback" in result.stderr:
            tail = result.stderr.strip()[-500:]
            message = (
                f"{result.name} exited {result.code} without a plain error: {tail!r}"
            )
            self.tally.note_problem("quiet failure", message)

    def compare(self, label: str, actual: Contents, expected: Contents) -> bool:
        self.tally.keys_compared += len(actual.keys() | expected.keys())
        if actual == expected:
            return True
        details = "; ".join(differences(actual, expected))
        self.tally.note_problem("data lost", f"{label}: {details}")
        return False

    # -- one cycle ---------------------------------------------------------

    def run_cycle(self, number: int) -> None:
        self.mutate_source()
        source = self.read_namespace(self.source_id)
        if self.kill_rng.random() < self.kill_share:
            self.killed_backup(source)
        snapshot_id = self.backup(source)
        if snapshot_id is None:
            return
        if not self.verify(snapshot_id):
            return
        self.restore(snapshot_id, number)

    def killed_backup(self, source: Contents) -> None:
        """Kill a backup at a random point; what it published must be whole."""
        before = self.snapshot_ids()
        delay = self.kill_rng.uniform(0.0, self.backup_seconds)
        with self.random_faults_on():
            args = [SOURCE_TITLE, "--part-size", PART_SIZE, *self.retry]
            killed = self.kill_kvsnap("backup", args, delay)
        self.tally.backups_killed += killed
        for snapshot_id in sorted(self.snapshot_ids() - before):
            self.tally.killed_backups_published += killed
            label = f"snapshot {snapshot_id} of a backup killed at {delay:.2f} s"
            if self.verify(snapshot_id):
                contents = self.snapshot_contents(snapshot_id)
                self.compare(f"{label} against the source", contents, source)

    def backup(self, source: Contents) -> str | None:
        """Back up the source; return the new snapshot's id if it is correct."""
        before = self.snapshot_ids()
        started = time.monotonic()
        with self.random_faults_on():
            args = [SOURCE_TITLE, "--part-size", PART_SIZE, "--json", *self.retry]
            result = self.run_kvsnap("backup", args)
        published = self.snapshot_ids() - before
        if result.code == 0:
            self.backup_seconds = time.monotonic() - started

        if result.code != 0:
            self.judge_failure(result)
            if published:
                message = f"failed backup published snapshots {sorted(published)}"
                self.tally.note_problem("quiet failure", message)
            return None
        reported = json.loads(result.stdout)["namespaces"][0]["snapshot_id"]
        if published != {reported}:
            message = f"backup reported {reported} but published {sorted(published)}"
            self.tally.note_problem("data lost", message)
            return None
        snapshot = self.snapshot_contents(reported)
        if not self.compare(
            f"snapshot {reported} against the source", snapshot, source
        ):
            return None
        return reported

    def verify(self, snapshot_id: str) -> bool:
        result = self.run_kvsnap("verify", [snapshot_id, "--read-data", "--json"])
        if result.code == 0:
            self.tally.snapshots_verified += 1
            return True
        self.judge_failure(result)
        # No faults reach the repository, so a failure means a bad snapshot.
        error = first_error_line(result.stderr)
        message = f"published snapshot {snapshot_id} failed verify: {error}"
        self.tally.note_problem("data lost", message)
        return False

    def restore(self, snapshot_id: str, number: int) -> None:
        title = f"soak-restore-{number:05d}"
        args = [snapshot_id, "--to", title, "--create", "--yes", "--json", *self.retry]
        with self.random_faults_on():
            result = self.run_kvsnap("restore", args)
        expected = self.snapshot_contents(snapshot_id)
        created = self.find_namespace(title)
        if len(created) > 1:
            message = f"restore created {len(created)} namespaces titled {title!r}"
            self.tally.note_problem("quiet failure", message)
        restored = self.read_namespace(created[0]) if created else {}

        if result.code == 0:
            label = f"namespace {title!r} restored from {snapshot_id}"
            self.compare(label, restored, expected)
        else:
            self.judge_failure(result)
            # A killed restore printed no counts, so only a finished one is checked.
            if result.code is not None:
                self.check_reported_writes(result, title, restored, expected)
        for namespace_id in created:
            self.client.kv.namespaces.delete(
                namespace_id, account_id=self.server.account_id
            )

    def check_reported_writes(
        self, result: CommandResult, title: str, restored: Contents, expected: Contents
    ) -> None:
        """Check that a failed restore into a new namespace wrote only what it reported.

        The plan writes keys in UTF-8 byte order (the order of Python's
        `sorted` on str), so the first N are written, the next M may be, and
        the rest must be absent.
        """
        done, maybe = reported_counts(result.stderr, "wrote")
        planned = sorted(expected)
        self.tally.keys_compared += len(planned)
        unreported = [key for key in restored if key not in expected]
        for index, key in enumerate(planned):
            if index < done:
                allowed: tuple[Entry | None, ...] = (expected[key],)
            elif index < done + maybe:
                allowed = (None, expected[key])
            else:
                allowed = (None,)
            if restored.get(key) not in allowed:
                unreported.append(key)
        if unreported:
            message = (
                f"failed restore into {title!r} reported {done} (+{maybe}) writes "
                f"but {len(unreported)} keys disagree, first {unreported[0]!r}"
            )
            self.tally.note_problem("quiet failure", message)

    # -- the end of the run ----------------------------------------------

    def sweep(self) -> None:
        """Prune with every snapshot kept; no orphan part or lock may remain."""
        if not Path(self.repo, "kvsnap.json").exists():
            return

        async def run() -> None:
            repo = await Repository.open(self.repo)
            result = await prune(
                repo, KEEP_EVERY_SNAPSHOT, dry_run=False, orphan_grace=timedelta(0)
            )
            self.tally.orphan_parts_removed = sum(
                len(orphan.paths) for orphan in result.orphans_removed
            )
            referenced = {
                part.path
                for manifest in await repo.snapshots()
                for part in manifest.parts
            }
            root = Path(self.repo)
            stored = {
                str(path.relative_to(root))
                for path in (root / "data").rglob("*")
                if path.is_file()
            }
            if stored - referenced:
                extra = sorted(stored - referenced)
                message = f"{len(extra)} parts left after prune, first {extra[0]}"
                self.tally.note_problem("quiet failure", message)
            locks = [p for p in (root / LOCKS_DIR).rglob("*") if p.is_file()]
            if locks:
                message = f"{len(locks)} locks left after prune, first {locks[0].name}"
                self.tally.note_problem("quiet failure", message)

        asyncio.run(run())


def fetch_stats(server: EmulatorServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.root_url + "/__emulator/stats", timeout=10) as r:
        return json.loads(r.read())


def summary(soak: Soak, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    tally = soak.tally
    stats = fetch_stats(soak.server)
    return {
        "minutes": round(seconds / 60, 2),
        "cycles": tally.cycles,
        "commands_run": sum(tally.commands.values()),
        "commands_by_name": dict(sorted(tally.commands.items())),
        "commands_failed_loudly": sum(tally.failed_by_exit_code.values()),
        "failed_by_exit_code": dict(sorted(tally.failed_by_exit_code.items())),
        "faults_injected": stats["faults"],
        "kvsnap_api_requests": tally.kvsnap_requests,
        "snapshots_verified": tally.snapshots_verified,
        "keys_compared": tally.keys_compared,
        "backups_killed": tally.backups_killed,
        "killed_backups_published": tally.killed_backups_published,
        "orphan_parts_removed": tally.orphan_parts_removed,
        "data_lost": tally.data_lost,
        "quiet_failures": tally.quiet_failures,
        "problems": tally.problems,
        "settings": {
            "minutes": args.minutes,
            "max_cycles": args.cycles,
            "fault_rate": args.fault_rate,
            "fault_seed": args.fault_seed,
            "faults": list(soak.faults.kinds),
            "seed": args.seed,
            "keys": args.keys,
            "max_attempts": args.max_attempts,
            "kill_share": args.kill_share,
        },
    }


def print_text(result: dict[str, Any]) -> None:
    for name, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = "; ".join(str(item) for item in value) or "none"
        print(f"{name}: {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help="stop starting cycles after this many minutes (default: %(default)s)",
    )
    parser.add_argument(
        "--cycles", type=int, help="stop after this many cycles (default: no limit)"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=DEFAULT_FAULT_RATE,
        help="share of kvsnap's API requests that get a fault (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-seed", type=int, help="seed of the random faults (default: --seed)"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help="comma-separated fault kinds (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the data changes (default: 1)"
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=DEFAULT_KEYS,
        help="keys seeded into the source namespace (default: %(default)s)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        help="tries per request, passed to backup and restore; fewer tries make "
        "more commands fail, which checks the failure path (default: kvsnap's)",
    )
    parser.add_argument(
        "--kill-share",
        type=float,
        default=DEFAULT_KILL_SHARE,
        help="share of cycles that start with a backup killed at a random point "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the emulator data and the repository after the run",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    if args.fault_seed is None:
        args.fault_seed = args.seed
    if args.minutes < 0 or (args.cycles is not None and args.cycles < 1):
        parser.error("--minutes must be 0 or more and --cycles 1 or more")
    if not 0 <= args.kill_share <= 1:
        parser.error(f"--kill-share {args.kill_share} is not between 0 and 1")

    try:
        args.random_faults = RandomFaults(
            args.fault_rate, seed=args.fault_seed, kinds=args.faults.split(",")
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The SDK's HTTP client logs every request at INFO, so only this
    # script's logger goes below WARNING.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    log.setLevel(logging.INFO)
    workdir = Path(tempfile.mkdtemp(prefix="kvsnap-soak-"))
    log.info("working folder %s", workdir)
    started = time.monotonic()
    deadline = started + args.minutes * 60

    with EmulatorServer(workdir / "kv") as server:
        soak = Soak(
            server,
            workdir,
            args.random_faults,
            args.seed,
            args.max_attempts,
            args.kill_share,
        )
        soak.seed_source(args.keys)
        while time.monotonic() < deadline and (
            args.cycles is None or soak.tally.cycles < args.cycles
        ):
            soak.tally.cycles += 1
            soak.run_cycle(soak.tally.cycles)
            log.info(
                "cycle %d done: %d commands, %d failed loudly, %d lost, %d quiet",
                soak.tally.cycles,
                sum(soak.tally.commands.values()),
                sum(soak.tally.failed_by_exit_code.values()),
                soak.tally.data_lost,
                soak.tally.quiet_failures,
            )
        soak.sweep()
        result = summary(soak, args, time.monotonic() - started)

    problems = result["data_lost"] + result["quiet_failures"]
    if problems or args.keep_workdir:
        log.info("kept the working folder %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
