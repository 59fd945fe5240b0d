"""The policy that unattended runs follow: schedule, targets, retention, cadences.

The policy lives in the same `kvsnap.toml` as the connection settings, in
the tables below; every key is optional and has the default shown. Durations
are written as a number and a unit: `90s`, `30m`, `24h`, `30d`, `2w`.

    [policy]
    schedule = "0 3 * * *"   # cron expression, UTC; when `kvsnap daemon` runs
    rpo = "24h"              # newest verified snapshot may be at most this old
    rto = "4h"               # a full restore must fit in this time
    anomaly_share = 0.2      # hold the previous snapshot when more keys changed

    [retention]
    keep_within = "30d"      # keep all within this of the newest snapshot
    keep_last = 0            # and the newest N of each namespace
    keep_daily = 0           # and the newest of each of the last N days ...
    keep_weekly = 0
    keep_monthly = 0
    keep_yearly = 0

    [verify]
    read_data_within = "30d" # every snapshot is fully read at least this often
    read_data_share = 0.1    # share of the snapshots fully read by each run

    [drill]
    every = "365d"           # a drill older than this makes `status` warn
    sample = 100             # keys restored into the sandbox
    sandbox = ""             # namespace to restore into; empty creates one
    automatic = false        # `kvsnap run` drills each namespace when due

    [notify]
    webhooks = []            # URLs; secrets, never printed
    format = "json"          # or "slack"
    on_success = false

Webhook URLs are secrets, so they belong in `KVSNAP_WEBHOOK_URL` (several
separated by spaces). The file's list is used only when that variable is
not set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from croniter import CroniterBadDateError, croniter

from kvsnap.errors import ConfigError
from kvsnap.logs import register_secret

ENV_WEBHOOK = "KVSNAP_WEBHOOK_URL"

# Tables of kvsnap.toml that this module reads; config.py reads the others.
POLICY_TABLES = ("policy", "retention", "verify", "drill", "notify")

DEFAULT_SCHEDULE = "0 3 * * *"  # daily at 03:00 UTC
DEFAULT_RPO = timedelta(hours=24)
DEFAULT_RTO = timedelta(hours=4)
DEFAULT_ANOMALY_SHARE = 0.2
DEFAULT_KEEP_WITHIN = timedelta(days=30)
DEFAULT_READ_DATA_WITHIN = timedelta(days=30)
DEFAULT_READ_DATA_SHARE = 0.1
DEFAULT_DRILL_EVERY = timedelta(days=365)
DEFAULT_DRILL_SAMPLE = 100
WEBHOOK_FORMATS = ("json", "slack")

# Longer durations are typing mistakes, and timedelta arithmetic on dates
# overflows a few thousand years out.
MAX_DURATION = timedelta(days=100 * 365)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def parse_duration(text: str, *, label: str = "duration") -> timedelta:
    """Parse `30d`, `24h`, `90s` (units s, m, h, d, w) into a timedelta."""
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if not match or float(match[1]) <= 0:
        raise ConfigError(
            f"invalid {label} {text!r}: expected a positive number and a unit "
            "(s, m, h, d or w), such as 24h or 30d"
        )
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds > MAX_DURATION.total_seconds():
        raise ConfigError(
            f"invalid {label} {text!r}: longer than {MAX_DURATION.days // 365} years"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write a timedelta back in the largest unit that divides it: 30d, 36h, 90s."""
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def format_target(value: timedelta) -> str:
    """Write an RPO or RTO target as it is usually written: 24h, not 1d."""
    seconds = int(value.total_seconds())
    if seconds and seconds < _UNIT_SECONDS["w"] and seconds % _UNIT_SECONDS["h"] == 0:
        return f"{seconds // _UNIT_SECONDS['h']}h"
    return format_duration(value)


@dataclass(frozen=True)
class Retention:
    """The rules of `prune`; a snapshot that any rule keeps stays."""

    keep_within: timedelta | None = DEFAULT_KEEP_WITHIN
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    @property
    def empty(self) -> bool:
        """True when no rule keeps anything (prune then keeps only protected ones)."""
        counts = (
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        )
        return self.keep_within is None and not any(counts)


@dataclass(frozen=True)
class Policy:
    """Schedule, targets, retention and cadences of unattended runs."""

    schedule: str = DEFAULT_SCHEDULE
    rpo: timedelta = DEFAULT_RPO
    rto: timedelta = DEFAULT_RTO
    anomaly_share: float = DEFAULT_ANOMALY_SHARE
    retention: Retention = field(default_factory=Retention)
    read_data_within: timedelta = DEFAULT_READ_DATA_WITHIN
    read_data_share: float = DEFAULT_READ_DATA_SHARE
    drill_every: timedelta = DEFAULT_DRILL_EVERY
    drill_sample: int = DEFAULT_DRILL_SAMPLE
    drill_sandbox: str | None = None
    drill_automatic: bool = False
    webhooks: tuple[str, ...] = field(default=(), repr=False)
    webhook_format: str = "json"
    notify_on_success: bool = False


# Each policy table's keys and the TOML types they accept.
_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "policy": {
        "schedule": (str,),
        "rpo": (str,),
        "rto": (str,),
        "anomaly_share": (float, int),
    },
    "retention": {
        "keep_within": (str,),
        "keep_last": (int,),
        "keep_daily": (int,),
        "keep_weekly": (int,),
        "keep_monthly": (int,),
        "keep_yearly": (int,),
    },
    "verify": {"read_data_within": (str,), "read_data_share": (float, int)},
    "drill": {
        "every": (str,),
        "sample": (int,),
        "sandbox": (str,),
        "automatic": (bool,),
    },
    "notify": {"webhooks": (list,), "format": (str,), "on_success": (bool,)},
}


def load_policy(config_file: Path | None, env: dict[str, str] | None = None) -> Policy:
    """Read the policy tables of `config_file` (None: defaults only)."""
    env = dict(os.environ) if env is None else env
    tables: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        from kvsnap.config import read_config_file

        data = read_config_file(config_file)
        for name in POLICY_TABLES:
            table = data.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{config_file}: {name} must be a table ([{name}])")
            tables[name] = _checked(config_file, name, table)
    return _build(tables, env)


def _checked(path: Path, name: str, table: dict[str, Any]) -> dict[str, Any]:
    known = _KEYS[name]
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{path}: unknown setting [{name}] {key}; known: "
                + ", ".join(sorted(known))
            )
        types = known[key]
        is_bool = isinstance(value, bool)
        if not isinstance(value, types) or (is_bool and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            # Webhook URLs are secrets, so the invalid value is not shown.
            shown = "(not shown)" if key == "webhooks" else repr(value)
            raise ConfigError(
                f"{path}: [{name}] {key} = {shown} is invalid: expected {expected}"
            )
    return table


def _build(tables: dict[str, dict[str, Any]], env: dict[str, str]) -> Policy:
    policy = tables.get("policy", {})
    retention = tables.get("retention", {})
    verify = tables.get("verify", {})
    drill = tables.get("drill", {})
    notify = tables.get("notify", {})

    schedule = policy.get("schedule", DEFAULT_SCHEDULE)
    check_schedule(schedule)
    keep_within = retention.get("keep_within")
    counts = {
        name: _count(retention.get(name, 0), f"[retention] {name}")
        for name in (
            "keep_last",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        )
    }
    # keep_within = "0" or "" switches the rule off; absent keeps the default.
    if keep_within in ("", "0"):
        within: timedelta | None = None
    elif keep_within is None:
        within = DEFAULT_KEEP_WITHIN
    else:
        within = parse_duration(keep_within, label="[retention] keep_within")

    webhooks = tuple(env.get(ENV_WEBHOOK, "").split()) or tuple(
        str(url) for url in notify.get("webhooks", [])
    )
    for url in webhooks:
        register_secret(url)
        if not re.match(r"https?://", url):
            raise ConfigError(
                "invalid webhook URL (not shown, it is a secret): expected "
                "http:// or https://",
                hint=f"check {ENV_WEBHOOK} or [notify] webhooks",
            )
    webhook_format = notify.get("format", "json")
    if webhook_format not in WEBHOOK_FORMATS:
        raise ConfigError(
            f"invalid [notify] format {webhook_format!r}: expected json or slack"
        )

    return Policy(
        schedule=schedule,
        rpo=parse_duration(policy.get("rpo", "24h"), label="[policy] rpo"),
        rto=parse_duration(policy.get("rto", "4h"), label="[policy] rto"),
        anomaly_share=_share(
            policy.get("anomaly_share", DEFAULT_ANOMALY_SHARE), "[policy] anomaly_share"
        ),
        retention=Retention(keep_within=within, **counts),
        read_data_within=parse_duration(
            verify.get("read_data_within", "30d"), label="[verify] read_data_within"
        ),
        read_data_share=_share(
            verify.get("read_data_share", DEFAULT_READ_DATA_SHARE),
            "[verify] read_data_share",
        ),
        drill_every=parse_duration(drill.get("every", "365d"), label="[drill] every"),
        drill_sample=_count(
            drill.get("sample", DEFAULT_DRILL_SAMPLE), "[drill] sample"
        ),
        drill_sandbox=drill.get("sandbox") or None,
        drill_automatic=bool(drill.get("automatic", False)),
        webhooks=webhooks,
        webhook_format=webhook_format,
        notify_on_success=bool(notify.get("on_success", False)),
    )


def check_schedule(schedule: str) -> None:
    """Raise ConfigError unless `schedule` is a valid five-field cron expression."""
    if not isinstance(schedule, str) or len(schedule.split()) != 5:
        raise ConfigError(
            f"invalid [policy] schedule {schedule!r}: expected five cron fields, "
            'such as "0 3 * * *" (daily at 03:00 UTC)'
        )
    if not croniter.is_valid(schedule):
        raise ConfigError(
            f"invalid [policy] schedule {schedule!r}: not a cron expression",
            hint='fields are minute hour day month weekday, e.g. "30 2 * * *"',
        )
    try:
        croniter(schedule).get_next(float)
    except CroniterBadDateError as exc:
        raise ConfigError(
            f"invalid [policy] schedule {schedule!r}: it never fires "
            "(such as on 30 or 31 February)"
        ) from exc


def _count(value: int, label: str) -> int:
    if value < 0:
        raise ConfigError(f"invalid {label} {value}: expected 0 or more")
    return value


def _share(value: float, label: str) -> float:
    if not 0 < value <= 1:
        raise ConfigError(
            f"invalid {label} {value}: expected a share above 0 and at most 1, "
            "such as 0.2 for 20%"
        )
    return float(value)
