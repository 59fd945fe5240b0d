"""Grades of each namespace against the policy: RPO, verification, drills, holds.

`collect_status` reads the manifests, the verify records, the holds and the
drill reports of a repository and grades each namespace:

- **breach** (exit 2): no snapshot at all; the newest snapshot that did not
  fail verification is older than the RPO target; the newest snapshot
  failed verification (its latest check, or any full read of it); the
  newest snapshot is dated in the future, so its age cannot be trusted;
  the last drill failed or its RTO estimate missed the target.
- **warning** (exit 1): the newest snapshot was never verified; snapshots
  are overdue for a full read (`[verify] read_data_within`); no drill ran
  within `[drill] every`; a snapshot is held (an anomaly waits for a
  person). The repository as a whole warns when it has a stale lock, an
  unreadable manifest or an unreadable hold.
- **ok** (exit 0): none of the above.

RPO age is counted from the start of the snapshot's read, the earliest
moment its data can be from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kvsnap.format import Manifest
from kvsnap.lock import list_locks
from kvsnap.policy import Policy, format_duration, format_target
from kvsnap.report import ReportSummary, list_reports
from kvsnap.repository import (
    IMPORTED_TAG,
    PRE_RESTORE_TAG,
    Repository,
    format_timestamp,
    parse_timestamp,
)
from kvsnap.retention import passed_verify
from kvsnap.state import Hold, VerifyRecord, holds, verify_records

OK, WARNING, BREACH = "ok", "warning", "breach"
# A snapshot this far ahead of the local clock is dated in the future.
FUTURE_TOLERANCE_SECONDS = 300
_LEVEL_CODES = {OK: 0, WARNING: 1, BREACH: 2}


@dataclass
class NamespaceStatus:
    """One namespace graded against the policy; ages in seconds."""

    namespace_id: str
    namespace_title: str
    level: str = OK
    reasons: list[str] = field(default_factory=list)
    reason_levels: list[str] = field(default_factory=list)  # one per reason
    snapshots: int = 0
    stored_bytes: int = 0
    keys: int = 0
    newest_snapshot: str | None = None
    newest_snapshot_at: str | None = None
    newest_snapshot_age: float | None = None
    newest_usable: str | None = None  # newest snapshot that did not fail verify
    rpo_age: float | None = None
    last_verify_at: str | None = None
    last_verify_ok: bool | None = None
    last_read_data_at: str | None = None
    overdue_read_data: int = 0
    last_drill_at: str | None = None
    last_drill_ok: bool | None = None
    last_drill_age: float | None = None
    last_drill_rto_ok: bool | None = None
    held: list[str] = field(default_factory=list)

    def raise_to(self, level: str, reason: str) -> None:
        """Record a reason and lift the level to `level` if it is worse."""
        self.reasons.append(reason)
        self.reason_levels.append(level)
        if _LEVEL_CODES[level] > _LEVEL_CODES[self.level]:
            self.level = level


@dataclass
class StatusReport:
    """Every namespace's status, and the repository-wide notes."""

    repository: str
    checked_at: str
    rpo_seconds: float
    rto_seconds: float
    namespaces: list[NamespaceStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # repository-wide warnings

    @property
    def level(self) -> str:
        levels = [ns.level for ns in self.namespaces]
        if self.notes:
            levels.append(WARNING)
        return max(levels, key=_LEVEL_CODES.__getitem__, default=OK)

    @property
    def exit_code(self) -> int:
        return _LEVEL_CODES[self.level]

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "status",
            "level": self.level,
            "exit_code": self.exit_code,
            **dataclasses.asdict(self),
        }


async def collect_status(
    repo: Repository,
    policy: Policy,
    *,
    expected: list[str] | None = None,
    namespace: str | None = None,
    now: datetime | None = None,
) -> StatusReport:
    """Grade the policy's namespaces, or every namespace in the repository.

    `expected` contains the namespace ids or titles that the policy backs up:
    only those are graded, and one without snapshots is a breach. Without
    it, every namespace with snapshots is graded. `namespace` limits the
    report to one.
    """
    now = now or datetime.now(UTC)
    manifests, unreadable = await repo.scan_snapshots(namespace)
    verified = await verify_records(repo)
    held = await holds(repo)
    drills = [r for r in await list_reports(repo) if r.kind == "drill"]
    report = StatusReport(
        repository=repo.url,
        checked_at=format_timestamp(now),
        rpo_seconds=policy.rpo.total_seconds(),
        rto_seconds=policy.rto.total_seconds(),
    )

    by_namespace: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        by_namespace.setdefault(manifest.namespace_id, []).append(manifest)
    wanted = set(expected or ())
    for namespace_id, group in sorted(by_namespace.items()):
        names = {namespace_id, *(m.namespace_title for m in group)}
        if wanted and not names & wanted:
            continue  # no longer in the policy: retired, or backed up by hand
        report.namespaces.append(
            _grade(group, policy, now, verified, held, drills, namespace_id)
        )

    known = {name for ns in report.namespaces for name in _names(ns)}
    for name in expected or []:
        if name not in known and namespace in (None, name):
            missing = NamespaceStatus(name, "")
            missing.raise_to(BREACH, "no snapshot in the repository")
            report.namespaces.append(missing)

    for item in unreadable:
        report.notes.append(
            f"manifest {item.path} is unreadable: {item.reason} "
            f"(kvsnap verify {item.entry.snapshot_id})"
        )
    for hold in held:
        if not hold.namespace_id:
            report.notes.append(f"snapshot {hold.snapshot_id} is held: {hold.reason}")
    for lock in await list_locks(repo):
        if lock.stale:
            report.notes.append(
                f"{lock.describe()}; remove it with 'kvsnap unlock' "
                "if no kvsnap process runs"
            )
    return report


def _names(status: NamespaceStatus) -> tuple[str, str]:
    return status.namespace_id, status.namespace_title


def _grade(
    group: list[Manifest],
    policy: Policy,
    now: datetime,
    verified: dict[str, VerifyRecord],
    held: list[Hold],
    drills: list[ReportSummary],
    namespace_id: str,
) -> NamespaceStatus:
    backups = [
        m for m in group if PRE_RESTORE_TAG not in m.tags and IMPORTED_TAG not in m.tags
    ]
    newest_any = group[-1]
    status = NamespaceStatus(
        namespace_id,
        newest_any.namespace_title,
        snapshots=len(group),
        stored_bytes=sum(m.stored_bytes for m in group),
    )
    status.held = [h.snapshot_id for h in held if h.namespace_id == namespace_id]
    if status.held:
        status.raise_to(
            WARNING,
            f"{len(status.held)} snapshot(s) held: review and "
            "'kvsnap hold release' when the data is known good",
        )

    if not backups:
        status.raise_to(BREACH, "no backup snapshot (only restores or imports)")
        return status
    _grade_rpo(status, backups, policy, now, verified)
    _grade_read_data(status, group, policy, now, verified)
    _grade_drill(status, drills, policy, now)
    return status


def _age(moment: str, now: datetime) -> float:
    return round((now - parse_timestamp(moment)).total_seconds(), 1)


def _grade_rpo(
    status: NamespaceStatus,
    backups: list[Manifest],
    policy: Policy,
    now: datetime,
    verified: dict[str, VerifyRecord],
) -> None:
    newest = backups[-1]
    status.keys = newest.keys
    status.newest_snapshot = newest.id
    status.newest_snapshot_at = newest.read_started
    status.newest_snapshot_age = _age(newest.read_started, now)

    if status.newest_snapshot_age < -FUTURE_TOLERANCE_SECONDS:
        status.raise_to(
            BREACH,
            f"newest snapshot {newest.id} is dated in the future "
            f"({newest.read_started}): check the clocks of the backup hosts",
        )

    record = verified.get(newest.id)
    if record is None:
        status.raise_to(WARNING, f"newest snapshot {newest.id} was never verified")
    else:
        status.last_verify_at = record.checked
        status.last_verify_ok = passed_verify(record)
        if not passed_verify(record):
            status.raise_to(BREACH, f"newest snapshot {newest.id} failed verification")

    usable = [
        m for m in backups if (r := verified.get(m.id)) is None or passed_verify(r)
    ]
    if not usable:
        status.raise_to(BREACH, "every backup snapshot failed verification")
        return
    status.newest_usable = usable[-1].id
    status.rpo_age = _age(usable[-1].read_started, now)
    if status.rpo_age > policy.rpo.total_seconds():
        status.raise_to(
            BREACH,
            f"newest usable snapshot is {format_age(status.rpo_age)} old, over the "
            f"RPO target of {format_target(policy.rpo)}",
        )


def _grade_read_data(
    status: NamespaceStatus,
    group: list[Manifest],
    policy: Policy,
    now: datetime,
    verified: dict[str, VerifyRecord],
) -> None:
    limit = policy.read_data_within.total_seconds()
    reads = []
    for manifest in group:
        record = verified.get(manifest.id)
        last = record.read_data_checked if record else None
        if last:
            reads.append(last)
        if _age(last or manifest.read_started, now) > limit:
            status.overdue_read_data += 1
    status.last_read_data_at = max(reads, default=None)
    if status.overdue_read_data:
        status.raise_to(
            WARNING,
            f"{status.overdue_read_data} snapshot(s) not fully read within "
            f"{format_duration(policy.read_data_within)} (kvsnap verify --read-data)",
        )


def _grade_drill(
    status: NamespaceStatus,
    drills: list[ReportSummary],
    policy: Policy,
    now: datetime,
) -> None:
    mine = [d for d in drills if d.namespace_id == status.namespace_id]
    if not mine:
        status.raise_to(WARNING, "no restore drill on record (kvsnap drill)")
        return
    last = mine[-1]
    status.last_drill_at = last.created
    status.last_drill_ok = last.ok
    status.last_drill_rto_ok = last.rto_ok
    status.last_drill_age = _age(last.created, now)
    if not last.ok:
        status.raise_to(BREACH, f"last restore drill ({last.id}) failed")
    elif last.rto_ok is False:
        status.raise_to(
            BREACH,
            f"last restore drill ({last.id}) estimated a full restore over the "
            f"RTO target of {format_target(policy.rto)}",
        )
    if status.last_drill_age > policy.drill_every.total_seconds():
        status.raise_to(
            WARNING,
            f"last restore drill is older than {format_duration(policy.drill_every)}",
        )


def format_age(seconds: float) -> str:
    """Write an age in the unit a reader expects: 40 s, 25 min, 7.5 h, 12 d."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"
