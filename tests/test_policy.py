"""The policy tables of kvsnap.toml: defaults, parsing and the errors they give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvsnap.config import load_settings
from kvsnap.errors import ConfigError
from kvsnap.format import Manifest
from kvsnap.policy import (
    Policy,
    Retention,
    format_duration,
    load_policy,
    parse_duration,
)
from kvsnap.runner import choose_full_reads
from kvsnap.state import VerifyRecord


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kvsnap.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("30d", 2592000), ("2w", 1209600)],
)
def test_parse_duration_units(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize("text", ["", "24", "0h", "-1d", "1y", "d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a positive number and a unit"):
        parse_duration(text, label="[policy] rpo")


def test_defaults_without_a_file() -> None:
    policy = load_policy(None, env={})
    assert policy == Policy()
    assert policy.rpo == timedelta(hours=24)
    assert policy.rto == timedelta(hours=4)
    assert policy.retention.keep_within == timedelta(days=30)
    assert policy.anomaly_share == 0.2


def test_every_table_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
repository = "./backups"
namespaces = ["sessions"]

[policy]
schedule = "15 */6 * * *"
rpo = "6h"
rto = "1h"
anomaly_share = 0.5

[retention]
keep_within = "7d"
keep_daily = 14
keep_monthly = 12

[verify]
read_data_within = "14d"
read_data_share = 0.25

[drill]
every = "90d"
sample = 500
sandbox = "drill-sandbox"

[notify]
webhooks = ["https://hooks.example.test/T0/B0/secret-part"]
format = "slack"
on_success = true
""",
    )
    policy = load_policy(path, env={})
    assert policy.schedule == "15 */6 * * *"
    assert policy.rpo == timedelta(hours=6)
    assert policy.rto == timedelta(hours=1)
    assert policy.anomaly_share == 0.5
    assert policy.retention == Retention(
        keep_within=timedelta(days=7), keep_daily=14, keep_monthly=12
    )
    assert policy.read_data_within == timedelta(days=14)
    assert policy.read_data_share == 0.25
    assert policy.drill_every == timedelta(days=90)
    assert policy.drill_sample == 500
    assert policy.drill_sandbox == "drill-sandbox"
    assert policy.webhooks == ("https://hooks.example.test/T0/B0/secret-part",)
    assert policy.webhook_format == "slack"
    assert policy.notify_on_success is True
    assert "secret-part" not in repr(policy)
    # The connection settings of the same file still load beside the policy.
    assert load_settings(config_file=path, env={}).namespaces == ("sessions",)


def test_webhook_variable_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[notify]\nwebhooks = ["https://file.example.test/x"]\n')
    env = {"KVSNAP_WEBHOOK_URL": "https://a.example.test/1 https://b.example.test/2"}
    policy = load_policy(path, env=env)
    assert policy.webhooks == ("https://a.example.test/1", "https://b.example.test/2")


def test_keep_within_zero_switches_the_rule_off(tmp_path: Path) -> None:
    path = write(tmp_path, '[retention]\nkeep_within = "0"\nkeep_last = 3\n')
    assert load_policy(path, env={}).retention == Retention(
        keep_within=None, keep_last=3
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[policy]\nschedule = "daily"\n', "expected five cron fields"),
        ('[policy]\nschedule = "61 * * * *"\n', "not a cron expression"),
        ('[policy]\nrpo = "soon"\n', r"invalid \[policy\] rpo 'soon'"),
        ("[policy]\nanomaly_share = 20\n", "expected a share above 0"),
        ("[policy]\nrpo = 24\n", r"\[policy\] rpo = 24 is invalid: expected str"),
        ("[retention]\nkeep_last = -1\n", r"invalid \[retention\] keep_last -1"),
        (
            "[retention]\nkeep_hourly = 3\n",
            r"unknown setting \[retention\] keep_hourly",
        ),
        ("[drill]\nsample = true\n", r"\[drill\] sample = True is invalid"),
        ('[notify]\nformat = "teams"\n', "expected json or slack"),
        ('[policy]\nschedule = "0 3 31 2 *"\n', "it never fires"),
        ('[retention]\nkeep_within = "99999999999d"\n', "longer than 100 years"),
        ('[notify]\nwebhooks = ["ftp://x"]\n', "invalid webhook URL"),
        ('policy = "x"\n', "policy must be a table"),
    ],
)
def test_invalid_policy_names_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policy(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    "line",
    [
        'webhooks = ["hooks.example.test/secret-9"]',
        'webhooks = "https://hooks.example.test/secret-9"',
    ],
)
def test_invalid_webhook_url_is_not_echoed(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"[notify]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(path, env={})
    assert "secret-9" not in caught.value.message


def test_unknown_top_level_table_lists_the_policy_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[retention\]"):
        load_settings(config_file=write(tmp_path, "[retain]\nx = 1\n"), env={})


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def manifest(day: int) -> Manifest:
    started = (NOW - timedelta(days=day)).isoformat().replace("+00:00", "Z")
    return Manifest(
        id=f"{day:016x}",
        tool_version="0",
        account_id="a" * 32,
        namespace_id="ns",
        namespace_title="ns",
        read_started=started,
        read_finished=started,
        keys=0,
        value_bytes=0,
        stored_bytes=0,
        parts=[],
    )


def read_record(snapshot: Manifest, days_ago: int) -> VerifyRecord:
    when = (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")
    return VerifyRecord(
        snapshot_id=snapshot.id,
        namespace_id="ns",
        checked=when,
        ok=True,
        read_data_checked=when,
        read_data_ok=True,
    )


def test_full_reads_take_the_share_never_read_first() -> None:
    snapshots = [manifest(day) for day in range(9, -1, -1)]  # oldest first
    records = {m.id: read_record(m, 1) for m in snapshots[:8]}
    policy = Policy(read_data_share=0.2)
    chosen = choose_full_reads(snapshots, records, policy, NOW)
    # Two (20% of 10): the two snapshots never read, oldest of them first.
    assert [m.id for m in chosen] == [snapshots[8].id, snapshots[9].id]


def test_full_reads_include_every_overdue_snapshot() -> None:
    snapshots = [manifest(day) for day in (40, 35, 3, 2, 1)]
    records = {
        snapshots[0].id: read_record(snapshots[0], 31),
        snapshots[1].id: read_record(snapshots[1], 29),
        snapshots[2].id: read_record(snapshots[2], 2),
        snapshots[3].id: read_record(snapshots[3], 1),
        snapshots[4].id: read_record(snapshots[4], 0),
    }
    policy = Policy(read_data_share=0.2, read_data_within=timedelta(days=30))
    chosen = choose_full_reads(snapshots, records, policy, NOW)
    # The share (one) is the least recently read, which is also the overdue one.
    assert [m.id for m in chosen] == [snapshots[0].id]
    policy = Policy(read_data_share=0.2, read_data_within=timedelta(days=2))
    chosen = choose_full_reads(snapshots, records, policy, NOW)
    assert [m.id for m in chosen] == [s.id for s in snapshots[:3]]
