"""The restore drill: restore part of a snapshot into a sandbox and prove it.

A drill is the yearly restore test, run by kvsnap itself. It takes a
snapshot (the namespace's latest by default) and goes through the phases of
a real restore, timing each one:

1. download: fetch every part into a private temporary folder, checking
   each part's size and sha256;
2. validate: decode every record, check key order, counts and first and
   last keys, and check each record as Workers KV would. The records to
   restore are chosen in this pass: a seeded random sample, every key, or
   the keys of a file;
3. plan and write: `kvsnap.restore.make_plan` and `apply_plan`, the code
   of `kvsnap restore`, write the chosen records into the sandbox namespace;
4. read-back: `apply_plan` reads every written key back once and compares
   value bytes, metadata and expiration with the snapshot record. The drill
   then reads the keys that still differ again until the read-back window
   ends, because Workers KV is eventually consistent, and times that wait
   apart from the first read.

The sandbox is a namespace that the drill creates and deletes afterwards,
or an empty namespace the operator names, which the drill empties again.
Once the sandbox exists, it is cleaned up however the drill ends: an error,
a local disk that is full, Ctrl-C or SIGTERM.
The drill never writes into the snapshot's own namespace, and never writes
into the repository except its report and the verify record of the
snapshot it has fully read. The full-restore time (RTO) is then estimated
from the measured phases, the size of the snapshot and the API budget, and
compared with the policy's target, as is the age of the snapshot (RPO).
"""

from __future__ import annotations

import asyncio
import enum
import getpass
import logging
import math
import os
import random
import secrets
import shlex
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from kvsnap import __version__, limits, lock, state
from kvsnap.batching import NearExpiry, classify_expiration, item_size, validate_record
from kvsnap.cloudflare import KvClient, Namespace, resolve_namespace
from kvsnap.config import DEFAULT_BASE_URL, Settings
from kvsnap.diff import parse_keys_file
from kvsnap.errors import (
    EXIT_INTERRUPTED,
    EXIT_MISMATCH,
    EXIT_REPOSITORY,
    EXIT_VERIFY,
    ConfigError,
    KvsnapError,
    PlanRefused,
    RepositoryError,
    SnapshotNotFound,
    VerifyError,
)
from kvsnap.format import (
    REPOSITORY_CONFIG_NAME,
    Manifest,
    Record,
    decode_record,
    encode_json,
)
from kvsnap.logs import mask
from kvsnap.policy import DEFAULT_DRILL_SAMPLE, Policy
from kvsnap.readback import Mismatch, read_back
from kvsnap.report import (
    MISMATCHES_SHOWN,
    DrillReport,
    ErrorInfo,
    MismatchEntry,
    Phase,
    RtoEstimate,
    SandboxInfo,
    SnapshotInfo,
    format_bytes,
    format_seconds,
    new_report_id,
    plural,
    store_report,
)
from kvsnap.repository import Repository, decode_part, format_timestamp, parse_timestamp
from kvsnap.restore import (
    Conflict,
    RestoreResult,
    Selection,
    Target,
    apply_plan,
    make_plan,
    resolve_snapshot,
)

log = logging.getLogger(__name__)

SANDBOX_TITLE_PREFIX = "kvsnap-drill-"
NOT_IN_SNAPSHOT = "not-in-snapshot"  # mismatch field of a listed key the snapshot lacks
# Time allowed for storing the report of an interrupted drill, so that a
# second Ctrl-C is not needed when the repository does not respond.
INTERRUPTED_REPORT_SECONDS = 10.0


class Mode(enum.Enum):
    """Selection mode: the snapshot keys a drill restores."""

    SAMPLE = "sample"  # a seeded random sample
    ALL = "all"
    KEYS_FROM = "keys-from"  # the keys listed in a file


@dataclass(frozen=True)
class DrillOptions:
    """Drill parameters that are not in Settings or Policy."""

    namespace: str  # id or title of the namespace whose snapshot is drilled
    snapshot: str | None = None  # selector; None takes latest@namespace
    sandbox: str | None = None  # existing empty namespace; None creates one
    mode: Mode = Mode.SAMPLE
    sample: int = DEFAULT_DRILL_SAMPLE
    keys_file: Path | None = None
    seed: int | None = None  # None draws one, which the report records
    keep: bool = False
    readback_window: float = limits.READBACK_WINDOW_SECONDS
    lock_wait: float = 0.0


@dataclass
class DrillResult:
    """The finished report, where it was stored, and the exit code.

    A drill that stopped before it prepared a sandbox (an unknown snapshot or
    sandbox, a sandbox that is the source or contains keys, an unreadable
    --keys-from file) did not start: `started` is false, `error` is the
    error to show, and the report was not stored.
    """

    report: DrillReport
    stored_folder: str | None  # repository folder, None when not stored
    started: bool = True
    error: KvsnapError | None = None  # why a drill that did not start stopped

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    @property
    def ok(self) -> bool:
        return self.report.ok


@dataclass
class Measurements:
    """Measured times and sizes of a drill, the inputs of `estimate_rto`."""

    download_seconds: float = 0.0
    validate_seconds: float = 0.0
    eligible_keys: int = 0  # keys a full restore writes
    binary_keys: int = 0  # of those, keys read back alone as raw bytes
    full_body_bytes: int = 0  # bulk-write bodies for every eligible key
    full_write_requests: int = 0
    sample_keys: int = 0  # keys the drill wrote
    sample_body_bytes: int = 0
    sample_write_requests: int = 0
    write_seconds: float = 0.0
    read_back_keys: int = 0
    read_back_seconds: float = 0.0  # the first read of every written key
    # Re-reading keys that still differed, until KV's eventual consistency
    # caught up or the read-back window ended.
    consistency_wait_seconds: float = 0.0


def estimate_rto(
    measured: Measurements, rate_limit: tuple[int, float]
) -> RtoEstimate | None:
    """Estimate the time of a full restore of the snapshot into an empty namespace.

    Download and validate were measured on the whole snapshot. The write
    time is scaled from the sample both by requests and by bytes, and the
    larger is taken, because a small sample cannot tell request latency
    from bandwidth. The first read-back of every key is scaled by keys. The
    wait for eventual consistency is added once, unscaled, on the
    assumption that KV propagates a whole restore in about the time it
    takes for a sample. When the drill wrote and read back every restorable
    key (`--all`, or a sample as large as the namespace), the write and
    read-back times are taken as measured. The API budget (N requests per
    window) gives a floor for the requests of both. Returns None when the
    drill wrote nothing to measure.
    """
    if not (measured.sample_write_requests and measured.read_back_keys):
        return None
    whole = (
        measured.sample_keys >= measured.eligible_keys
        and measured.read_back_keys >= measured.eligible_keys
    )
    if whole:
        write_seconds = measured.write_seconds
        read_back_seconds = measured.read_back_seconds
    else:
        write_seconds = _scaled_write_seconds(measured)
        read_back_seconds = (
            measured.read_back_seconds
            * measured.eligible_keys
            / measured.read_back_keys
        )
    read_requests = (
        math.ceil(measured.eligible_keys / limits.BULK_GET_MAX_KEYS)
        + measured.binary_keys
    )
    # Creating the namespace and listing it for the plan add one request each.
    requests = measured.full_write_requests + read_requests + 2
    budget_requests, window = rate_limit
    api_budget_seconds = ((requests - 1) // budget_requests) * window
    api_work_seconds = (
        write_seconds + read_back_seconds + measured.consistency_wait_seconds
    )
    api_seconds = max(api_work_seconds, api_budget_seconds)
    return RtoEstimate(
        seconds=measured.download_seconds + measured.validate_seconds + api_seconds,
        download_seconds=measured.download_seconds,
        validate_seconds=measured.validate_seconds,
        write_seconds=write_seconds,
        read_back_seconds=read_back_seconds,
        consistency_wait_seconds=measured.consistency_wait_seconds,
        api_budget_seconds=float(api_budget_seconds),
        keys=measured.eligible_keys,
        body_bytes=measured.full_body_bytes,
        write_requests=measured.full_write_requests,
        read_requests=read_requests,
        rate_limit_requests=budget_requests,
        rate_limit_window_seconds=window,
        measured_in_full=whole,
    )


def _scaled_write_seconds(measured: Measurements) -> float:
    """Scale the sample's write time to every key, by requests and by bytes."""
    per_request = measured.write_seconds / measured.sample_write_requests
    by_requests = measured.full_write_requests * per_request
    by_bytes = 0.0
    if measured.sample_body_bytes:
        by_bytes = (
            measured.full_body_bytes
            * measured.write_seconds
            / measured.sample_body_bytes
        )
    return max(by_requests, by_bytes)


class _BatchCounter:
    """Count the bulk writes a full restore needs, cutting as `iter_batches` does."""

    def __init__(self) -> None:
        self.batches = 0
        self.body_bytes = 0
        self._pairs = 0
        self._size = 2  # the brackets around the items

    def add(self, size: int) -> None:
        added = size + (1 if self._pairs else 0)
        full = self._pairs >= limits.BULK_WRITE_MAX_PAIRS
        if self._pairs and (full or self._size + added > limits.BULK_WRITE_MAX_BYTES):
            self._close()
            added = size
        self._pairs += 1
        self._size += added

    def finish(self) -> None:
        if self._pairs:
            self._close()

    def _close(self) -> None:
        self.batches += 1
        self.body_bytes += self._size
        self._pairs, self._size = 0, 2


@dataclass
class _Chooser:
    """Picks the records to restore while the validate phase reads them."""

    mode: Mode
    sample: int
    rng: random.Random
    named: frozenset[str] = frozenset()
    chosen: list[str] = field(default_factory=list)
    found_named: set[str] = field(default_factory=set)
    _seen: int = 0

    def offer(self, key: str) -> None:
        """Consider one restorable key; reservoir sampling keeps `sample` of them."""
        if self.mode is Mode.KEYS_FROM:
            if key in self.named:
                self.chosen.append(key)
            return
        if self.mode is Mode.ALL:
            return  # Selection() takes everything; no list is kept
        self._seen += 1
        if len(self.chosen) < self.sample:
            self.chosen.append(key)
            return
        slot = self.rng.randrange(self._seen)
        if slot < self.sample:
            self.chosen[slot] = key

    @property
    def nothing(self) -> bool:
        """Whether no key was chosen; a sample or key list then restores nothing."""
        return self.mode is not Mode.ALL and not self.chosen

    def selection(self) -> Selection:
        if self.mode is Mode.ALL:
            return Selection()
        # An empty key set would make a Selection that takes every key.
        assert self.chosen, "no key chosen: the drill must not restore"
        return Selection(keys=frozenset(self.chosen))


def _operator() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid{os.getuid()}"
    return user, socket.gethostname()


def _api_host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


async def run_drill(
    repo: Repository,
    client: KvClient,
    settings: Settings,
    policy: Policy,
    options: DrillOptions,
) -> DrillResult:
    """Run one drill under a shared repository lock and store its report.

    A drill that fails (mismatches, invalid records, an error after the
    repository was opened) still returns its report, with `ok` false. Its
    exit code is 7 for mismatches, 4 for invalid records or when no key could
    be checked, 20 when a local file could not be written, and the error's
    own code otherwise. Errors before a drill can take the lock (a prune
    holds it, for example) are raised.

    A drill that stops before its sandbox is prepared did not start: its
    result has `started` false and the error, and no report is stored, so a
    mistyped name never counts as a failed drill of the namespace.

    On KeyboardInterrupt or cancellation the sandbox is cleaned up, a FAIL
    report naming the interruption is stored in the repository when the
    drill had started (given INTERRUPTED_REPORT_SECONDS at most), and the
    interruption is re-raised.
    """
    if options.mode is Mode.SAMPLE and options.sample < 1:
        raise ConfigError(f"invalid --sample {options.sample}: expected 1 or more")
    async with lock.locked(
        repo, exclusive=False, command="drill", wait=options.lock_wait
    ):
        drill = _Drill(repo, client, settings, policy, options)
        try:
            await drill.run()
        except (KeyboardInterrupt, asyncio.CancelledError):
            report = drill.finish()
            if drill.began:
                await _store_interrupted(repo, report)
            raise
        report = drill.finish()
        if not drill.began:
            return DrillResult(report, None, started=False, error=drill.failure)
        try:
            folder: str | None = await store_report(repo, report)
        except KvsnapError as exc:
            log.warning("storing the drill report in %s failed: %s", repo.url, exc)
            report.warnings.append(
                f"the report could not be stored in the repository: {exc}"
            )
            folder = None
    return DrillResult(report, folder)


async def _store_interrupted(repo: Repository, report: DrillReport) -> None:
    """Store the report of an interrupted drill, giving up after a few seconds."""
    try:
        folder = await asyncio.wait_for(
            store_report(repo, report), INTERRUPTED_REPORT_SECONDS
        )
    except (KvsnapError, OSError, TimeoutError) as exc:
        log.warning(
            "storing the report of interrupted drill %s in %s failed: %s",
            report.id,
            repo.url,
            str(exc) or "timed out",
        )
        return
    log.info("stored the report of interrupted drill %s in %s", report.id, folder)


class _Drill:
    """The state of one drill while it runs.

    `run` records a KvsnapError or an OSError in the report instead of
    raising it.
    """

    def __init__(
        self,
        repo: Repository,
        client: KvClient,
        settings: Settings,
        policy: Policy,
        options: DrillOptions,
    ) -> None:
        self.repo = repo
        self.client = client
        self.settings = settings
        self.options = options
        self.started = datetime.now(UTC)
        self.seed = (
            options.seed if options.seed is not None else secrets.randbelow(2**31)
        )
        user, host = _operator()
        self.report = DrillReport(
            id=new_report_id(),
            created=format_timestamp(self.started),
            namespace_id=options.namespace,
            tool_version=__version__,
            user=user,
            host=host,
            repository=repo.url,
            account_id=client.account_id,
            api_host=_api_host(settings.base_url),
            rpo_target_seconds=policy.rpo.total_seconds(),
            rto_target_seconds=policy.rto.total_seconds(),
            mode=options.mode.value,
            sample=options.sample if options.mode is Mode.SAMPLE else None,
            seed=self.seed if options.mode is Mode.SAMPLE else None,
            keys_file=str(options.keys_file) if options.keys_file else None,
        )
        self.policy = policy
        self.measured = Measurements()
        self.manifest: Manifest | None = None
        self.sandbox: Namespace | None = None
        self.sandbox_created = False
        self.began = False  # the sandbox is prepared: the drill started
        self.failure: KvsnapError | None = None  # the error that stopped it
        self.named: frozenset[str] = frozenset()  # the keys of --keys-from
        self.mismatched: list[Mismatch] = []
        self.now = time.time()  # the moment expirations are judged at

    def phase(self, name: str, seconds: float, detail: str) -> None:
        self.report.phases.append(Phase(name, round(seconds, 6), detail))

    async def run(self) -> None:
        """Run the phases; record a KvsnapError, an OSError or an interruption.

        KeyboardInterrupt and CancelledError are recorded and then re-raised.
        """
        try:
            self.named = self._read_keys_file()
            self.manifest = await self._pick_snapshot()
            self._describe_snapshot(self.manifest)
            # The temporary folder comes first: when it cannot be made, no
            # sandbox exists yet that would need cleaning up.
            with tempfile.TemporaryDirectory(prefix="kvsnap-drill-") as folder:
                await self._prepare_sandbox(self.manifest)
                try:
                    await self._restore(self.manifest, Path(folder))
                finally:
                    await self._clean_up(Path(folder) / "plan" / "writes.jsonl")
        except KvsnapError as exc:
            self.failure = exc
            self._record_error(
                type(exc).__name__,
                exc.message,
                exc.exit_code,
                exc.hint,
            )
        except OSError as exc:
            # A local file failed (temporary folder, mirror of the parts,
            # spool), mostly from a full disk. That is the environment, not a
            # bug, so the internal-error code 1 would mislead. The mirror is a
            # copy of repository data, so the repository code 20 is used.
            message = f"a local file could not be read or written: {exc}"
            hint = (
                "check the free space and permissions of the temporary folder "
                f"({tempfile.gettempdir()}; set TMPDIR to use another)"
            )
            self.failure = RepositoryError(message, hint=hint)  # exit code 20
            self._record_error(type(exc).__name__, message, EXIT_REPOSITORY, hint)
        except (KeyboardInterrupt, asyncio.CancelledError):
            self._record_error(
                "Interrupted",
                "the drill was interrupted (Ctrl-C, SIGTERM or a cancelled run) "
                "before it finished",
                EXIT_INTERRUPTED,
                None,
            )
            raise

    def _record_error(
        self, kind: str, message: str, exit_code: int, hint: str | None
    ) -> None:
        if self.began:
            log.error("drill of %s failed: %s", self.options.namespace, message)
        else:
            # The caller shows the error of a drill that did not start.
            log.debug("drill of %s did not start: %s", self.options.namespace, message)
        self.report.error = ErrorInfo(
            kind, mask(message), exit_code, mask(hint) if hint else None
        )
        self.report.problems.append(f"The drill stopped: {mask(message)}")

    # Snapshot and sandbox.

    def _read_keys_file(self) -> frozenset[str]:
        """Read the keys of --keys-from before anything else, or raise ConfigError."""
        if self.options.mode is not Mode.KEYS_FROM:
            return frozenset()
        assert self.options.keys_file is not None
        named = frozenset(parse_keys_file(self.options.keys_file))
        if not named:
            raise ConfigError(
                f"--keys-from {self.options.keys_file} lists no keys",
                hint="list one key a line, or pass the output of kvsnap diff --json "
                "when it names changed keys",
            )
        return named

    async def _pick_snapshot(self) -> Manifest:
        namespace = self.options.namespace
        selector = self.options.snapshot or await self._latest_selector()
        manifest = await resolve_snapshot(self.repo, selector, None)
        if not _names_namespace(namespace, manifest):
            raise ConfigError(
                f"snapshot {manifest.id} is of namespace {manifest.namespace_title} "
                f"({manifest.namespace_id}), not {namespace!r}",
                hint="name the snapshot's own namespace, or leave out --snapshot",
            )
        return manifest

    async def _latest_selector(self) -> str:
        """Return latest@NAMESPACE for the namespace, taking id:X and title:X too.

        With id: or title:, the namespace is looked up by that field alone
        among the snapshots, and named by its id.
        """
        namespace = self.options.namespace
        kind, value = _split_namespace(namespace)
        if kind is None:
            return f"latest@{namespace}"
        ids = {
            manifest.namespace_id
            for manifest in await self.repo.snapshots(value)
            if _names_namespace(namespace, manifest)
        }
        if not ids:
            raise SnapshotNotFound(
                f"no snapshot of namespace {namespace!r} in {self.repo.url}"
            )
        if len(ids) > 1:
            # Several namespaces had this title: the repository lists them.
            return f"latest@{value}"
        return f"latest@{ids.pop()}"

    def _describe_snapshot(self, manifest: Manifest) -> None:
        report = self.report
        report.namespace_id = manifest.namespace_id
        report.namespace_title = manifest.namespace_title
        report.snapshot_id = manifest.id
        report.snapshot = SnapshotInfo(
            id=manifest.id,
            account_id=manifest.account_id,
            read_started=manifest.read_started,
            read_finished=manifest.read_finished,
            keys=manifest.keys,
            value_bytes=manifest.value_bytes,
            stored_bytes=manifest.stored_bytes,
            parts=len(manifest.parts),
            tags=list(manifest.tags),
        )
        age = self.started - parse_timestamp(manifest.read_started)
        report.snapshot_age_seconds = max(0.0, age.total_seconds())
        report.rpo_ok = age <= self.policy.rpo

    async def _prepare_sandbox(self, manifest: Manifest) -> None:
        """Create the sandbox, or check the given one; the drill then has started."""
        available = await self.client.list_namespaces()
        if self.options.sandbox is None:
            stamp = f"{self.started:%Y%m%dT%H%M%SZ}"
            # The report id keeps titles unique when drills start in the same second.
            title = f"{SANDBOX_TITLE_PREFIX}{manifest.id}-{stamp}-{self.report.id}"
            # NOTE: an interruption while this request is in flight can leave
            # the namespace created but unknown to the drill, so not deleted.
            created = await self.client.create_namespace(title)
            self.sandbox_created = True
            log.info("created sandbox namespace %s (%s)", created.title, created.id)
            self._note_sandbox(created)
            return

        sandbox = resolve_namespace(self.options.sandbox, available)
        same_account = self.client.account_id == manifest.account_id
        if same_account and sandbox.id == manifest.namespace_id:
            raise ConfigError(
                f"the sandbox {sandbox.title} ({sandbox.id}) is the snapshot's own "
                "namespace; a drill never writes into the namespace it tests",
                hint="name an empty namespace with --sandbox, or leave it out so the "
                "drill creates one",
            )
        async for page in self.client.iter_key_pages(sandbox.id):
            if page:
                raise ConfigError(
                    f"the sandbox {sandbox.title} ({sandbox.id}) contains keys; a "
                    "drill restores only into an empty namespace",
                    hint="empty it, or leave out --sandbox so the drill creates and "
                    "deletes its own",
                )
            break
        self._note_sandbox(sandbox)

    def _note_sandbox(self, sandbox: Namespace) -> None:
        self.sandbox = sandbox
        self.began = True
        self.report.sandbox = SandboxInfo(
            namespace_id=sandbox.id, title=sandbox.title, created=self.sandbox_created
        )

    # The phases.

    async def _restore(self, manifest: Manifest, folder: Path) -> None:
        mirror = await self._download(manifest, folder / "mirror")
        chooser = await self._validate(mirror, manifest)
        if chooser.nothing:
            # None of the listed keys can be restored (or the snapshot holds
            # no restorable key). An empty key set would select every key,
            # so nothing is planned or written.
            log.info("no key of snapshot %s to restore into the sandbox", manifest.id)
            return
        plan_folder = folder / "plan"
        plan_folder.mkdir()
        assert self.sandbox is not None
        target = Target(self.client.account_id, self.sandbox.id, self.sandbox.title)
        plan = await make_plan(
            self.client,
            mirror,
            manifest,
            target,
            selection=chooser.selection(),
            conflict=Conflict.ERROR,
            exact=False,
            near_expiry=NearExpiry.SKIP,
            folder=plan_folder,
            now=self.now,
        )
        if plan.counts.overwrite or plan.counts.unchanged:
            raise PlanRefused(
                f"the sandbox {self.sandbox.id} contains keys of the selection; "
                "someone wrote into it during the drill, so nothing was written"
            )
        self.report.counts.selected = plan.counts.create
        self.phase(
            "plan",
            plan.seconds,
            f"{plural(plan.counts.create, 'key')} to write into the empty sandbox",
        )
        # A window of 0 makes apply_plan read every key once and stop, so the
        # first read can be timed apart from the wait for consistency.
        result = await apply_plan(self.client, mirror, plan, readback_window=0.0)
        first_read_seconds = result.phases.get("read_back", 0.0)
        read_back_keys = result.verified + len(result.mismatched)
        wait_seconds = await self._read_again(result, plan.writes_path)
        self._record_restore(result, plan.writes_path, read_back_keys)
        self._record_read_back(read_back_keys, first_read_seconds, wait_seconds)

    async def _read_again(self, result: RestoreResult, writes_path: Path) -> float:
        """Re-read the keys that differed until the window ends; return the time.

        Updates `result.verified` and `result.mismatched`. The window counts
        from the first read, as it does in `kvsnap restore`.
        """
        first_read = result.phases.get("read_back", 0.0)
        remaining = self.options.readback_window - first_read
        if not result.mismatched or remaining <= 0:
            return 0.0
        assert self.sandbox is not None
        started = time.monotonic()
        differing = {mismatch.key for mismatch in result.mismatched}
        log.info(
            "read-back of sandbox %s: %d keys differ, reading them again for up "
            "to %.1f s",
            self.sandbox.id,
            len(differing),
            remaining,
        )
        delay = min(limits.READBACK_BACKOFF_BASE_SECONDS, remaining)
        await asyncio.sleep(delay)
        records = (
            record for record in _read_records(writes_path) if record.key in differing
        )
        again = await read_back(
            self.client, self.sandbox.id, records, window_seconds=remaining - delay
        )
        result.verified += again.verified
        result.mismatched = again.mismatched
        return time.monotonic() - started

    async def _download(self, manifest: Manifest, mirror_root: Path) -> Repository:
        """Copy every part into a local repository, checking size and sha256."""
        started = time.monotonic()
        mirror_root.mkdir()
        (mirror_root / REPOSITORY_CONFIG_NAME).write_bytes(
            encode_json(self.repo.config)
        )
        try:
            for part in manifest.parts:
                data = await self.repo.read_part(part)
                path = mirror_root / part.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        except VerifyError as exc:
            await self._record_verify(manifest, ok=False, problem=exc.message)
            raise
        seconds = time.monotonic() - started
        self.measured.download_seconds = seconds
        self.phase(
            "download",
            seconds,
            f"{plural(len(manifest.parts), 'part')}, "
            f"{format_bytes(manifest.stored_bytes)}, "
            "sizes and sha256 checked",
        )
        return await Repository.open(str(mirror_root))

    async def _validate(self, mirror: Repository, manifest: Manifest) -> _Chooser:
        """Decode and check every record, count them, and choose the ones to restore."""
        started = time.monotonic()
        self.now = time.time()
        chooser = self._chooser()
        batches = _BatchCounter()
        counts = self.report.counts
        previous: str | None = None
        try:
            for part in manifest.parts:
                records = decode_part(part, await mirror.read_part(part), previous)
                if records:
                    previous = records[-1].key
                for record in records:
                    size = self._check_record(record, chooser)
                    if size is not None:
                        batches.add(size)
        except VerifyError as exc:
            await self._record_verify(manifest, ok=False, problem=exc.message)
            raise
        batches.finish()
        await self._record_verify(manifest, ok=True, problem=None)

        self.measured.full_write_requests = batches.batches
        self.measured.full_body_bytes = batches.body_bytes
        self.measured.eligible_keys = counts.eligible
        self._note_named_missing(chooser)
        seconds = time.monotonic() - started
        self.measured.validate_seconds = seconds
        self.phase(
            "validate",
            seconds,
            f"{counts.snapshot_records:,} records decoded and checked, "
            f"{counts.eligible:,} restorable",
        )
        return chooser

    def _chooser(self) -> _Chooser:
        return _Chooser(
            self.options.mode, self.options.sample, random.Random(self.seed), self.named
        )

    def _check_record(self, record: Record, chooser: _Chooser) -> int | None:
        """Count one record; return its bulk-write item size when it is restorable."""
        counts = self.report.counts
        counts.snapshot_records += 1
        if record.key in chooser.named:
            chooser.found_named.add(record.key)
        reason = validate_record(record, self.now)
        if reason is not None:
            counts.invalid += 1
            if counts.invalid <= MISMATCHES_SHOWN:
                self.report.problems.append(
                    f"Invalid record {record.key!r}: {reason}; a full restore "
                    "would be refused"
                )
            return None
        expiration = classify_expiration(record, self.now)
        if expiration == "expired":
            counts.expired += 1
            return None
        if expiration == "expiring":
            counts.expiring += 1
            return None
        counts.eligible += 1
        if record.base64:
            self.measured.binary_keys += 1
        chooser.offer(record.key)
        return item_size(record)

    def _note_named_missing(self, chooser: _Chooser) -> None:
        missing = sorted(chooser.named - chooser.found_named)
        self.report.counts.named_missing = len(missing)
        self.mismatched.extend(Mismatch(key, (NOT_IN_SNAPSHOT,)) for key in missing)

    async def _record_verify(
        self, manifest: Manifest, *, ok: bool, problem: str | None
    ) -> None:
        """Store the full read of the snapshot as its verify record."""
        try:
            await state.record_verify(
                self.repo,
                snapshot_id=manifest.id,
                namespace_id=manifest.namespace_id,
                read_data=True,
                ok=ok,
                problems=[problem] if problem else [],
            )
        except KvsnapError as exc:
            log.warning(
                "recording the verify result of %s failed: %s", manifest.id, exc
            )

    def _record_restore(
        self, result: RestoreResult, writes_path: Path, read_back_keys: int
    ) -> None:
        counts = self.report.counts
        counts.written = result.written
        counts.checked = result.verified
        self.mismatched.extend(result.mismatched)
        measured = self.measured
        measured.sample_keys = result.written
        measured.sample_write_requests = result.write_requests
        measured.write_seconds = result.phases.get("write", 0.0)
        measured.read_back_keys = read_back_keys
        measured.sample_body_bytes = _spool_body_bytes(writes_path)
        self.phase(
            "write",
            measured.write_seconds,
            f"{plural(result.written, 'key')}, "
            f"{format_bytes(measured.sample_body_bytes)} in "
            f"{plural(result.write_requests, 'bulk write')}",
        )

    def _record_read_back(
        self, keys: int, first_read_seconds: float, wait_seconds: float
    ) -> None:
        self.measured.read_back_seconds = first_read_seconds
        self.measured.consistency_wait_seconds = wait_seconds
        detail = (
            f"{plural(keys, 'key')} read and compared: value bytes, metadata, "
            "expiration"
        )
        if wait_seconds:
            detail += (
                f"; first read {format_seconds(first_read_seconds)}, then "
                f"{format_seconds(wait_seconds)} re-reading keys that differed "
                "while KV's eventual consistency caught up"
            )
        self.phase("read_back", first_read_seconds + wait_seconds, detail)

    async def _clean_up(self, writes_path: Path) -> None:
        """Delete the created sandbox, or empty a given one, unless --keep."""
        sandbox = self.sandbox
        if sandbox is None or self.options.keep:
            if sandbox is not None:
                log.info("keeping sandbox namespace %s (%s)", sandbox.title, sandbox.id)
            return
        started = time.monotonic()
        try:
            if self.sandbox_created:
                await self.client.delete_namespace(sandbox.id)
                detail = f"sandbox namespace {sandbox.id} deleted"
            else:
                keys = [record.key for record in _read_records(writes_path)]
                await self.client.bulk_delete(sandbox.id, keys)
                detail = f"{len(keys):,} restored keys deleted from the sandbox"
        except (KvsnapError, OSError) as exc:
            # OSError: the spool naming the keys to delete could not be read.
            message = exc.message if isinstance(exc, KvsnapError) else str(exc)
            log.warning("cleaning up sandbox %s failed: %s", sandbox.id, message)
            self.report.warnings.append(
                f"The sandbox {sandbox.title} ({sandbox.id}) could not be cleaned "
                f"up and must be deleted by hand: {mask(message)}"
            )
            return
        log.info("%s", detail)
        assert self.report.sandbox is not None
        self.report.sandbox = SandboxInfo(
            namespace_id=sandbox.id,
            title=sandbox.title,
            created=self.sandbox_created,
            deleted=self.sandbox_created,
            keys_removed=not self.sandbox_created,
        )
        self.phase("cleanup", time.monotonic() - started, detail)

    # The verdict.

    def finish(self) -> DrillReport:
        """Judge the drill, estimate the RTO and complete the report."""
        report = self.report
        counts = report.counts
        self._judge()

        estimate = estimate_rto(self.measured, self.settings.rate_limit)
        if estimate is not None and report.error is None:
            report.rto = estimate
            report.rto_estimate_seconds = round(estimate.seconds, 3)
            report.rto_ok = estimate.seconds <= report.rto_target_seconds
        for label, ok in (("RPO", report.rpo_ok), ("RTO", report.rto_ok)):
            if ok is False:
                report.warnings.append(f"the {label} target is missed")

        report.exit_code = _exit_code(report)
        report.commands = self._commands()
        report.finished = format_timestamp(datetime.now(UTC))
        log.log(
            logging.INFO if self.began else logging.DEBUG,
            "drill %s: %s, %d keys checked, %d mismatched",
            report.id,
            "PASS" if report.ok else "FAIL",
            counts.checked,
            counts.mismatched,
            extra={"namespace": report.namespace_id, "snapshot": report.snapshot_id},
        )
        return report

    def _judge(self) -> None:
        """Set `ok` and list the problems: mismatches, invalid records, no keys."""
        report = self.report
        counts = report.counts
        counts.mismatched = len(self.mismatched)
        report.mismatches = [
            MismatchEntry(m.key, list(m.fields))
            for m in self.mismatched[:MISMATCHES_SHOWN]
        ]
        differing = counts.mismatched - counts.named_missing
        if counts.named_missing:
            report.problems.insert(
                0,
                f"Listed keys not in the snapshot: {counts.named_missing:,}. "
                f"{self.options.keys_file} names them, but the snapshot holds no "
                "such key, so they could not be restored.",
            )
        if differing:
            report.problems.insert(
                0,
                f"Mismatched keys: {differing:,}. The sandbox does not contain "
                "what the snapshot contains for them.",
            )
        if counts.invalid > MISMATCHES_SHOWN:
            report.problems.append(f"{counts.invalid:,} invalid records in all")
        restored = counts.checked + counts.mismatched - counts.named_missing
        if report.error is None and restored < counts.selected:
            report.warnings.append(
                f"{counts.selected - restored:,} selected keys were not written, "
                "because they expire too soon"
            )
        if report.error is None and counts.checked == 0 and not self.mismatched:
            reason = "the snapshot holds no restorable key"
            if self.options.mode is Mode.KEYS_FROM:
                reason = (
                    "none of the listed keys is restorable (expired, expiring too "
                    "soon, or invalid)"
                )
            report.problems.append(
                f"No key was restored and read back, so the drill proves nothing: "
                f"{reason}"
            )
        report.ok = (
            report.error is None
            and not self.mismatched
            and not counts.invalid
            and counts.checked > 0
        )

    def _commands(self) -> list[str]:
        """Return the shell commands that repeat this drill, without secrets."""
        options = self.options
        env = [f"CLOUDFLARE_ACCOUNT_ID={self.client.account_id}"]
        base_url = self.settings.base_url
        if base_url != DEFAULT_BASE_URL:
            parts = urlsplit(base_url)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            env.append(f"CLOUDFLARE_BASE_URL={parts.scheme}://{netloc}{parts.path}")
        prefix = " ".join(shlex.quote(item) for item in env)
        snapshot = self.report.snapshot_id or options.snapshot or "latest"
        drill = ["kvsnap", "drill", self.report.namespace_id, "--snapshot", snapshot]
        if options.mode is Mode.SAMPLE:
            drill += ["--sample", str(options.sample), "--seed", str(self.seed)]
        elif options.mode is Mode.ALL:
            drill.append("--all")
        else:
            drill += ["--keys-from", str(options.keys_file)]
        if options.sandbox:
            drill += ["--sandbox", options.sandbox]
        if options.readback_window != limits.READBACK_WINDOW_SECONDS:
            drill += ["--readback-window", f"{options.readback_window:g}"]
        drill += ["--repo", self.repo.url]
        commands = [f"{prefix} {shlex.join(drill)}"]
        if self.report.snapshot_id:
            verify = [
                "kvsnap",
                "verify",
                snapshot,
                "--read-data",
                "--repo",
                self.repo.url,
            ]
            commands.append(shlex.join(verify))
        return commands


def _split_namespace(name: str) -> tuple[str | None, str]:
    """Split id:X or title:X as `resolve_namespace` does; (None, name) otherwise."""
    kind, _, value = name.partition(":")
    if kind in ("id", "title") and value:
        return kind, value
    return None, name


def _names_namespace(name: str, manifest: Manifest) -> bool:
    """Tell whether NAME (id, title, id:X or title:X) is the snapshot's namespace."""
    kind, value = _split_namespace(name)
    if kind == "id":
        return manifest.namespace_id == value
    if kind == "title":
        return manifest.namespace_title == value
    return name in (manifest.namespace_id, manifest.namespace_title)


def _exit_code(report: DrillReport) -> int:
    if report.error is not None:
        return report.error.exit_code
    if report.counts.mismatched:
        return EXIT_MISMATCH
    if report.counts.invalid or not report.ok:
        return EXIT_VERIFY
    return 0


def _read_records(path: Path) -> Iterator[Record]:
    if not path.exists():
        return
    with path.open("rb") as spool:
        for line in spool:
            yield decode_record(line)


def _spool_body_bytes(path: Path) -> int:
    """Return the bulk-write body bytes of the records spooled at `path`."""
    count = total = 0
    for record in _read_records(path):
        count += 1
        total += item_size(record)
    return 2 + total + count - 1 if count else 0
