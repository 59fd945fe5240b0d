"""Tests of kvsnap.retention.plan_prune over synthetic snapshot calendars."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest

from kvsnap.format import Manifest
from kvsnap.policy import Retention
from kvsnap.repository import IMPORTED_TAG, PRE_RESTORE_TAG, format_timestamp
from kvsnap.retention import (
    FUTURE_TOLERANCE,
    REASON_FUTURE,
    REASON_NEWEST_PRE_RESTORE,
    REASON_NEWEST_UNVERIFIED,
    REASON_NEWEST_VERIFIED,
    PrunePlan,
    plan_prune,
)
from kvsnap.state import VerifyRecord

NS_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
NS_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
FIRST_DAY = date(2024, 1, 1)
# 400 daily snapshots at 02:00 UTC: 2024-01-01 to 2025-02-03 (a Monday).
CALENDAR_DAYS = [FIRST_DAY + timedelta(days=n) for n in range(400)]
NEWEST_DAY = CALENDAR_DAYS[-1]
NOW = datetime(2025, 2, 3, 2, 0, tzinfo=UTC)
NO_RULES = Retention(keep_within=None)


def snapshot(
    moment: datetime, namespace: str = NS_A, tags: list[str] | None = None
) -> Manifest:
    # The id encodes namespace and time, so that failures name a readable id.
    sid = f"{namespace[:2]}{moment:%y%m%d%H%M%S}"[:16].ljust(16, "0")
    return Manifest(
        id=sid,
        tool_version="test",
        account_id="account",
        namespace_id=namespace,
        namespace_title=f"title-{namespace[:2]}",
        read_started=format_timestamp(moment),
        read_finished=format_timestamp(moment + timedelta(seconds=5)),
        keys=1,
        value_bytes=1,
        stored_bytes=100,
        parts=[],
        tags=tags or [],
    )


def at(day: date, hour: int = 2, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def daily(days: list[date], namespace: str = NS_A) -> list[Manifest]:
    return [snapshot(at(day), namespace) for day in days]


def passed(manifests: list[Manifest]) -> dict[str, VerifyRecord]:
    return {m.id: record(m, ok=True) for m in manifests}


def record(
    manifest: Manifest, *, ok: bool, read_data_ok: bool | None = None
) -> VerifyRecord:
    return VerifyRecord(
        snapshot_id=manifest.id,
        namespace_id=manifest.namespace_id,
        checked=format_timestamp(NOW),
        ok=ok,
        read_data_checked=format_timestamp(NOW) if read_data_ok is not None else None,
        read_data_ok=read_data_ok,
    )


def kept_days(plan: PrunePlan) -> list[date]:
    return sorted(
        datetime.fromisoformat(m.read_started).date() for m, _reasons in plan.keep
    )


def reasons_by_day(plan: PrunePlan) -> dict[date, list[str]]:
    return {
        datetime.fromisoformat(m.read_started).date(): reasons
        for m, reasons in plan.keep
    }


@dataclass
class Case:
    name: str
    retention: Retention
    expected_days: list[date]
    expected_reasons: dict[date, list[str]] = field(default_factory=dict)


# Every snapshot passed verify, so the newest day always carries the
# "newest verified" reason on top of the rules.
CALENDAR_CASES = [
    Case(
        "keep_last 3",
        Retention(keep_within=None, keep_last=3),
        [date(2025, 2, 1), date(2025, 2, 2), date(2025, 2, 3)],
        {
            date(2025, 2, 3): ["last 1", REASON_NEWEST_VERIFIED],
            date(2025, 2, 1): ["last 3"],
        },
    ),
    Case(
        "keep_daily 7",
        Retention(keep_within=None, keep_daily=7),
        [NEWEST_DAY - timedelta(days=n) for n in range(6, -1, -1)],
        {date(2025, 1, 28): ["daily 7"]},
    ),
    Case(
        "keep_weekly 3: newest of ISO weeks 6, 5 and 4 of 2025",
        Retention(keep_within=None, keep_weekly=3),
        [date(2025, 1, 26), date(2025, 2, 2), date(2025, 2, 3)],
        {date(2025, 2, 2): ["weekly 2"], date(2025, 1, 26): ["weekly 3"]},
    ),
    Case(
        "keep_monthly 3: last day of each month, and the newest",
        Retention(keep_within=None, keep_monthly=3),
        [date(2024, 12, 31), date(2025, 1, 31), date(2025, 2, 3)],
        {date(2024, 12, 31): ["monthly 3"]},
    ),
    Case(
        "keep_yearly 5 finds only two years",
        Retention(keep_within=None, keep_yearly=5),
        [date(2024, 12, 31), date(2025, 2, 3)],
        {date(2024, 12, 31): ["yearly 2"]},
    ),
    Case(
        "keep_within 30d keeps 31 snapshots at the inclusive boundary",
        Retention(keep_within=timedelta(days=30)),
        [NEWEST_DAY - timedelta(days=n) for n in range(30, -1, -1)],
        {date(2025, 1, 4): ["within 30d"]},
    ),
    Case(
        "rules combine and a snapshot lists each rule that keeps it",
        Retention(
            keep_within=timedelta(days=2),
            keep_last=1,
            keep_daily=2,
            keep_monthly=2,
        ),
        [date(2025, 1, 31), date(2025, 2, 1), date(2025, 2, 2), date(2025, 2, 3)],
        {
            date(2025, 2, 3): [
                "within 2d",
                "last 1",
                "daily 1",
                "monthly 1",
                REASON_NEWEST_VERIFIED,
            ],
            date(2025, 2, 2): ["within 2d", "daily 2"],
            date(2025, 2, 1): ["within 2d"],
            date(2025, 1, 31): ["monthly 2"],
        },
    ),
    Case(
        "no rule keeps only the newest verified",
        NO_RULES,
        [NEWEST_DAY],
        {NEWEST_DAY: [REASON_NEWEST_VERIFIED]},
    ),
]


@pytest.mark.parametrize("case", CALENDAR_CASES, ids=lambda case: case.name)
def test_plan_daily_calendar(case: Case) -> None:
    manifests = daily(CALENDAR_DAYS)
    plan = plan_prune(
        manifests, case.retention, now=NOW, verified=passed(manifests), held=set()
    )
    assert kept_days(plan) == case.expected_days
    assert len(plan.keep) + len(plan.remove) == len(manifests)
    reasons = reasons_by_day(plan)
    for day, expected in case.expected_reasons.items():
        assert reasons[day] == expected, day


def test_plan_lists_oldest_first() -> None:
    manifests = daily(CALENDAR_DAYS)
    plan = plan_prune(
        manifests,
        Retention(keep_within=None, keep_last=5),
        now=NOW,
        verified={},
        held=set(),
    )
    assert [m.id for m in plan.remove] == [m.id for m in manifests[:-5]]
    assert [m.id for m, _reasons in plan.keep] == [m.id for m in manifests[-5:]]


def test_calendar_gaps_do_not_use_slots() -> None:
    # Snapshots on 1, 2, 10 and 20 January and in March: no February.
    days = [date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 10), date(2025, 1, 20)]
    days += [date(2025, 3, 5)]
    manifests = daily(days)
    plan = plan_prune(
        manifests,
        Retention(keep_within=None, keep_daily=3, keep_monthly=2),
        now=at(date(2025, 3, 6)),
        verified=passed(manifests),
        held=set(),
    )
    assert kept_days(plan) == [date(2025, 1, 10), date(2025, 1, 20), date(2025, 3, 5)]
    reasons = reasons_by_day(plan)
    assert reasons[date(2025, 1, 20)] == ["daily 2", "monthly 2"]
    assert reasons[date(2025, 1, 10)] == ["daily 3"]


def test_several_snapshots_a_day_keep_newest_of_day() -> None:
    day = date(2025, 2, 3)
    manifests = [snapshot(at(day, hour)) for hour in (1, 7, 13, 19)]
    manifests += [snapshot(at(day - timedelta(days=1), hour)) for hour in (4, 22)]
    plan = plan_prune(
        manifests,
        Retention(keep_within=None, keep_daily=2),
        now=at(day, 20),
        verified=passed(manifests),
        held=set(),
    )
    kept = sorted(m.read_started for m, _reasons in plan.keep)
    assert kept == ["2025-02-02T22:00:00.000Z", "2025-02-03T19:00:00.000Z"]
    assert len(plan.remove) == 4


def test_day_boundary_is_utc() -> None:
    # 23:30 and 00:30 UTC are different days even where local time agrees.
    manifests = [
        snapshot(datetime(2025, 2, 2, 23, 30, tzinfo=UTC)),
        snapshot(datetime(2025, 2, 3, 0, 30, tzinfo=UTC)),
    ]
    plan = plan_prune(
        manifests,
        Retention(keep_within=None, keep_daily=2),
        now=NOW,
        verified=passed(manifests),
        held=set(),
    )
    assert len(plan.keep) == 2
    assert plan.remove == []


def test_namespaces_are_pruned_separately() -> None:
    a = daily(CALENDAR_DAYS[-10:], NS_A)
    b = daily(CALENDAR_DAYS[-400:-300], NS_B)  # ended 300 days ago
    plan = plan_prune(
        a + b,
        Retention(keep_within=timedelta(days=30), keep_last=2),
        now=NOW,
        verified=passed(a + b),
        held=set(),
    )
    kept_a = [m for m, _r in plan.keep if m.namespace_id == NS_A]
    kept_b = [m for m, reasons in plan.keep if m.namespace_id == NS_B]
    assert len(kept_a) == 10
    # B's window ends at its own newest snapshot: its last 31 days stay.
    assert [m.id for m in kept_b] == [m.id for m in b[-31:]]
    assert {m.namespace_id for m in plan.remove} == {NS_B}
    assert len(plan.remove) == 69
    # Keep lists are grouped by namespace id.
    assert [m.namespace_id for m, _r in plan.keep] == [NS_A] * 10 + [NS_B] * 31


def test_held_snapshot_outlives_rules() -> None:
    manifests = daily(CALENDAR_DAYS)
    old = manifests[10]
    plan = plan_prune(
        manifests,
        Retention(keep_within=timedelta(days=30)),
        now=NOW,
        verified=passed(manifests),
        held={old.id: "anomaly: 40% of keys deleted"},
    )
    reasons = dict((m.id, r) for m, r in plan.keep)
    assert reasons[old.id] == ["held: anomaly: 40% of keys deleted"]
    assert old not in plan.remove
    assert len(plan.keep) == 32


def test_held_as_plain_set_has_short_reason() -> None:
    manifests = daily(CALENDAR_DAYS[:3])
    plan = plan_prune(manifests, NO_RULES, now=NOW, verified={}, held={manifests[0].id})
    reasons = dict((m.id, r) for m, r in plan.keep)
    assert reasons[manifests[0].id] == ["held"]


def test_newest_verified_when_newest_failed() -> None:
    manifests = daily(CALENDAR_DAYS)
    verified = passed(manifests[:-3])
    for failed in manifests[-3:]:
        verified[failed.id] = record(failed, ok=False)
    plan = plan_prune(manifests, NO_RULES, now=NOW, verified=verified, held=set())
    assert [m.id for m, _r in plan.keep] == [manifests[-4].id]
    assert plan.keep[0][1] == [REASON_NEWEST_VERIFIED]
    assert manifests[-1] in plan.remove


def test_failed_full_read_is_not_verified() -> None:
    # The latest quick check passed, but the last full read found damage.
    manifests = daily(CALENDAR_DAYS[-5:])
    verified = passed(manifests)
    verified[manifests[-1].id] = record(manifests[-1], ok=True, read_data_ok=False)
    plan = plan_prune(manifests, NO_RULES, now=NOW, verified=verified, held=set())
    assert [m.id for m, _r in plan.keep] == [manifests[-2].id]


def test_unverified_newest_kept_when_none_verified() -> None:
    manifests = daily(CALENDAR_DAYS[-5:])
    failing = {m.id: record(m, ok=False) for m in manifests[:2]}
    plan = plan_prune(manifests, NO_RULES, now=NOW, verified=failing, held=set())
    assert [m.id for m, _r in plan.keep] == [manifests[-1].id]
    assert plan.keep[0][1] == [REASON_NEWEST_UNVERIFIED]


def test_verified_rule_per_namespace() -> None:
    a = daily(CALENDAR_DAYS[-3:], NS_A)
    b = daily(CALENDAR_DAYS[-3:], NS_B)
    verified = {a[0].id: record(a[0], ok=True)}
    plan = plan_prune(a + b, NO_RULES, now=NOW, verified=verified, held=set())
    reasons = dict((m.id, r) for m, r in plan.keep)
    assert reasons == {
        a[0].id: [REASON_NEWEST_VERIFIED],
        b[-1].id: [REASON_NEWEST_UNVERIFIED],
    }


# Scenarios over a few named snapshots of one namespace. Every snapshot
# passed verify unless a scenario lists it in `failed` or `unverified`, and
# a snapshot missing from `kept` must be removed.

PRE = [PRE_RESTORE_TAG]
IMPORTED = [IMPORTED_TAG]
WITHIN_30D = "within 30d"
DAY = timedelta(days=1)


@dataclass
class Scenario:
    name: str
    snapshots: dict[str, tuple[datetime, list[str]]]
    retention: Retention
    kept: dict[str, list[str]]
    now: datetime = NOW
    failed: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()
    held: tuple[str, ...] = ()


def backup(moment: datetime) -> tuple[datetime, list[str]]:
    return moment, []


FUTURE_SCENARIOS = [
    Scenario(
        "future snapshot takes no keep_last or daily slot",
        {
            "old": backup(NOW - DAY),
            "new": backup(NOW),
            "skewed": backup(NOW + 400 * DAY),
        },
        Retention(keep_within=None, keep_last=1, keep_daily=1),
        {
            "new": ["last 1", "daily 1", REASON_NEWEST_VERIFIED],
            "skewed": [REASON_FUTURE],
        },
    ),
    Scenario(
        "future snapshot does not move the keep_within window",
        {
            "two days": backup(NOW - 2 * DAY),
            "half day": backup(NOW - DAY / 2),
            "skewed": backup(NOW + timedelta(hours=3)),
        },
        Retention(keep_within=DAY),
        {
            "half day": ["within 1d", REASON_NEWEST_VERIFIED],
            "skewed": [REASON_FUTURE],
        },
    ),
    Scenario(
        "future snapshot never is the newest verified",
        {"failed": backup(NOW - DAY), "skewed": backup(NOW + 10 * DAY)},
        NO_RULES,
        {"failed": [REASON_NEWEST_UNVERIFIED], "skewed": [REASON_FUTURE]},
        failed=("failed",),
    ),
    Scenario(
        "snapshot at the tolerance is not in the future",
        {
            "at tolerance": backup(NOW + FUTURE_TOLERANCE),
            "past tolerance": backup(NOW + FUTURE_TOLERANCE + timedelta(seconds=1)),
        },
        Retention(keep_within=DAY, keep_last=1),
        {
            "at tolerance": ["within 1d", "last 1", REASON_NEWEST_VERIFIED],
            "past tolerance": [REASON_FUTURE],
        },
    ),
    Scenario(
        "only future snapshots are all kept",
        {"a": backup(NOW + 2 * DAY), "b": backup(NOW + 3 * DAY)},
        Retention(keep_within=None, keep_last=1),
        {"a": [REASON_FUTURE], "b": [REASON_FUTURE]},
    ),
    Scenario(
        "held future snapshot lists both reasons",
        {"new": backup(NOW), "skewed": backup(NOW + DAY)},
        NO_RULES,
        {"new": [REASON_NEWEST_VERIFIED], "skewed": [REASON_FUTURE, "held"]},
        held=("skewed",),
    ),
]

# 30 daily snapshots, the newest one day before NOW.
MONTH = {f"day -{n}": backup(NOW - n * DAY) for n in range(30, 0, -1)}

KEEP_WITHIN_SCENARIOS = [
    Scenario(
        "clock 60 days ahead keeps the window",
        MONTH,
        Retention(keep_within=30 * DAY, keep_monthly=12),
        {
            **{label: [WITHIN_30D] for label in MONTH},
            "day -1": [WITHIN_30D, "monthly 1", REASON_NEWEST_VERIFIED],
            "day -3": [WITHIN_30D, "monthly 2"],
        },
        now=NOW + 60 * DAY,
    ),
    Scenario(
        "window ends at newest snapshot, boundary included",
        {
            "boundary": backup(NOW - 31 * DAY),
            "past boundary": backup(NOW - 31 * DAY - timedelta(seconds=1)),
            "newest": backup(NOW - DAY),
        },
        Retention(keep_within=30 * DAY),
        {
            "boundary": [WITHIN_30D],
            "newest": [WITHIN_30D, REASON_NEWEST_VERIFIED],
        },
        now=NOW + 100 * DAY,
    ),
    Scenario(
        "window ends at now when newest is later",
        {
            "boundary": backup(NOW - 30 * DAY),
            "past boundary": backup(NOW - 30 * DAY - timedelta(seconds=1)),
            "newest": backup(NOW + timedelta(minutes=2)),
        },
        Retention(keep_within=30 * DAY),
        {
            "boundary": [WITHIN_30D],
            "newest": [WITHIN_30D, REASON_NEWEST_VERIFIED],
        },
    ),
]

PROTECTION_SCENARIOS = [
    Scenario(
        "import does not take the protection from backups",
        {
            "backup -3": backup(NOW - 3 * DAY),
            "backup -2": backup(NOW - 2 * DAY),
            "import": (NOW - DAY, IMPORTED),
        },
        NO_RULES,
        {"backup -2": [REASON_NEWEST_VERIFIED]},
    ),
    Scenario(
        "import is protected when no backup passed",
        {"backup": backup(NOW - 2 * DAY), "import": (NOW - DAY, IMPORTED)},
        NO_RULES,
        {"import": [REASON_NEWEST_VERIFIED]},
        failed=("backup",),
    ),
    Scenario(
        "import is protected in a namespace of imports",
        {"old": (NOW - 2 * DAY, IMPORTED), "new": (NOW - DAY, IMPORTED)},
        NO_RULES,
        {"new": [REASON_NEWEST_VERIFIED]},
    ),
    Scenario(
        "unverified backup comes before unverified import",
        {"backup": backup(NOW - 2 * DAY), "import": (NOW - DAY, IMPORTED)},
        NO_RULES,
        {"backup": [REASON_NEWEST_UNVERIFIED]},
        unverified=("backup", "import"),
    ),
    Scenario(
        "import follows the calendar rules",
        {"backup": backup(NOW - 2 * DAY), "import": (NOW - DAY, IMPORTED)},
        Retention(keep_within=None, keep_last=1),
        {"backup": [REASON_NEWEST_VERIFIED], "import": ["last 1"]},
    ),
    Scenario(
        "pre-restore is never the verified copy",
        {
            "backup -2": backup(NOW - 2 * DAY),
            "backup -1": backup(NOW - DAY),
            "pre-restore": (NOW - timedelta(hours=1), PRE),
        },
        NO_RULES,
        {
            "backup -1": [REASON_NEWEST_VERIFIED],
            "pre-restore": [REASON_NEWEST_PRE_RESTORE],
        },
    ),
    Scenario(
        "pre-restore takes no daily slot",
        {
            "backup -3": backup(NOW - 3 * DAY - timedelta(hours=10)),
            "pre-restore -3": (NOW - 3 * DAY - timedelta(hours=1), PRE),
            "backup -2": backup(NOW - 2 * DAY - timedelta(hours=10)),
            "pre-restore -2": (NOW - 2 * DAY - timedelta(hours=1), PRE),
            "backup -1": backup(NOW - DAY - timedelta(hours=10)),
            "backup": backup(NOW - timedelta(hours=10)),
        },
        Retention(keep_within=None, keep_daily=7),
        {
            "backup -3": ["daily 4"],
            "backup -2": ["daily 3"],
            "pre-restore -2": [REASON_NEWEST_PRE_RESTORE],
            "backup -1": ["daily 2"],
            "backup": ["daily 1", REASON_NEWEST_VERIFIED],
        },
    ),
    Scenario(
        "pre-restore takes no keep_last slot",
        {
            "backup -2": backup(NOW - 2 * DAY),
            "backup -1": backup(NOW - DAY),
            "pre-restore": (NOW - timedelta(hours=1), PRE),
        },
        Retention(keep_within=None, keep_last=2),
        {
            "backup -2": ["last 2"],
            "backup -1": ["last 1", REASON_NEWEST_VERIFIED],
            "pre-restore": [REASON_NEWEST_PRE_RESTORE],
        },
    ),
    Scenario(
        "older pre-restore stays by keep_within or hold",
        {
            "backup": backup(NOW - 3 * DAY),
            "pre-restore -40": (NOW - 40 * DAY, PRE),
            "pre-restore -35": (NOW - 35 * DAY, PRE),
            "pre-restore -20": (NOW - 20 * DAY, PRE),
            "pre-restore -10": (NOW - 10 * DAY, PRE),
            "pre-restore -1": (NOW - DAY, PRE),
        },
        Retention(keep_within=30 * DAY, keep_last=10),
        {
            "backup": [WITHIN_30D, "last 1", REASON_NEWEST_VERIFIED],
            "pre-restore -40": ["held"],
            "pre-restore -20": [WITHIN_30D],
            "pre-restore -10": [WITHIN_30D],
            "pre-restore -1": [WITHIN_30D, REASON_NEWEST_PRE_RESTORE],
        },
        held=("pre-restore -40",),
    ),
    Scenario(
        "namespace of pre-restores keeps the newest",
        {"old": (NOW - 2 * DAY, PRE), "new": (NOW - DAY, PRE)},
        Retention(keep_within=None, keep_last=3),
        {"new": [REASON_NEWEST_PRE_RESTORE]},
    ),
]


def check_scenario(scenario: Scenario) -> None:
    made = {
        label: snapshot(moment, tags=tags)
        for label, (moment, tags) in scenario.snapshots.items()
    }
    label_of = {manifest.id: label for label, manifest in made.items()}
    assert len(label_of) == len(made), "two snapshots share an id"
    verified = {
        manifest.id: record(manifest, ok=label not in scenario.failed)
        for label, manifest in made.items()
        if label not in scenario.unverified
    }
    plan = plan_prune(
        list(made.values()),
        scenario.retention,
        now=scenario.now,
        verified=verified,
        held={made[label].id for label in scenario.held},
    )
    kept = {label_of[manifest.id]: reasons for manifest, reasons in plan.keep}
    removed = {label_of[manifest.id] for manifest in plan.remove}
    assert kept == scenario.kept
    assert removed == set(made) - set(scenario.kept)


@pytest.mark.parametrize("scenario", FUTURE_SCENARIOS, ids=lambda s: s.name)
def test_plan_future_snapshots(scenario: Scenario) -> None:
    check_scenario(scenario)


@pytest.mark.parametrize("scenario", KEEP_WITHIN_SCENARIOS, ids=lambda s: s.name)
def test_plan_keep_within_window(scenario: Scenario) -> None:
    check_scenario(scenario)


@pytest.mark.parametrize("scenario", PROTECTION_SCENARIOS, ids=lambda s: s.name)
def test_plan_imported_and_pre_restore(scenario: Scenario) -> None:
    check_scenario(scenario)


def test_empty_repository_plans_nothing() -> None:
    plan = plan_prune([], Retention(), now=NOW, verified={}, held=set())
    assert plan.keep == []
    assert plan.remove == []
