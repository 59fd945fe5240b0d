"""The commented starter kvsnap.toml that `kvsnap config init` writes.

Every setting that `kvsnap.config` and `kvsnap.policy` read appears once,
with its default and a one-line explanation. Settings that have a default
are written as active lines carrying that default, so the file loads to the
same Settings and Policy as no file at all. Settings without a default
(repository, namespaces, account id) are written as commented examples,
unless `starter_file` is given their values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

from kvsnap import limits
from kvsnap.config import DEFAULT_BASE_URL, ENV_TOKEN
from kvsnap.policy import (
    DEFAULT_ANOMALY_SHARE,
    DEFAULT_DRILL_EVERY,
    DEFAULT_DRILL_SAMPLE,
    DEFAULT_KEEP_WITHIN,
    DEFAULT_READ_DATA_SHARE,
    DEFAULT_READ_DATA_WITHIN,
    DEFAULT_RPO,
    DEFAULT_RTO,
    DEFAULT_SCHEDULE,
    ENV_WEBHOOK,
    format_duration,
)


def toml_value(value: object) -> str:
    """Write a str, bool, int, float or list of those as a TOML value.

    JSON string escapes are a subset of TOML basic-string escapes, so
    json.dumps writes a valid TOML string for any text.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def format_size_setting(size: int) -> str:
    """Write a byte count as the largest exact binary unit: 32MiB, 512KiB, 1000."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_rate_limit(rate: tuple[int, float]) -> str:
    """Write (1200, 300.0) as 1200/300."""
    requests, seconds = rate
    window = int(seconds) if float(seconds).is_integer() else seconds
    return f"{requests}/{window}"


def _line(key: str, value: object, comment: str, *, active: bool = True) -> str:
    """Write one setting with its explanation on the line above."""
    setting = f"{key} = {toml_value(value)}"
    return f"# {comment}\n{setting if active else '# ' + setting}"


def _hours(value: timedelta) -> str:
    """Write a whole number of hours as 24h, which reads better than 1d for targets."""
    return f"{int(value.total_seconds() // 3600)}h"


def starter_file(
    *,
    repository: str | None = None,
    account_id: str | None = None,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
) -> str:
    """Render the starter file, filling in the values that were given."""
    lines = [
        "# kvsnap settings and policy. Every line below shows the default; edit",
        "# what you need. Durations take a unit: 90s, 30m, 24h, 30d, 2w.",
        "# A command-line flag overrides an environment variable, and a variable",
        "# overrides this file. Secrets never go here: kvsnap reads the API",
        f"# token from {ENV_TOKEN} and storage keys from AWS_* or R2_* variables.",
        "",
        _line(
            "repository",
            repository or "r2://my-bucket/kv",
            "where snapshots go: a folder, s3://BUCKET/PREFIX or r2://BUCKET/PREFIX",
            active=repository is not None,
        ),
        _line(
            "namespaces",
            list(namespaces) or ["app-cache", "sessions"],
            "namespaces to back up, by id or title",
            active=bool(namespaces),
        ),
        _line("all", all_namespaces, "true backs up every namespace of the account"),
        "",
        "[cloudflare]",
        _line(
            "account_id",
            account_id or "0123456789abcdef0123456789abcdef",
            "32 hex digits, shown on the Workers overview page",
            active=account_id is not None,
        ),
        _line("base_url", DEFAULT_BASE_URL, "Cloudflare API base URL"),
        f"# The API token is read from {ENV_TOKEN} only, never from this file.",
        "",
        "[backup]",
        _line(
            "concurrency",
            limits.DEFAULT_CONCURRENCY,
            "API requests in flight at once (1 to 64)",
        ),
        _line(
            "rate_limit",
            format_rate_limit(
                (limits.API_BUDGET_REQUESTS, limits.API_BUDGET_WINDOW_SECONDS)
            ),
            "API budget, REQUESTS/SECONDS (Cloudflare's limit)",
        ),
        _line(
            "max_attempts",
            limits.DEFAULT_MAX_ATTEMPTS,
            "tries per request before the run fails",
        ),
        _line(
            "part_size",
            format_size_setting(limits.DEFAULT_PART_BYTES),
            "uncompressed bytes per part, held in memory (1KiB to 1GiB)",
        ),
        "",
        "[policy]",
        _line(
            "schedule",
            DEFAULT_SCHEDULE,
            "cron expression in UTC; when `kvsnap daemon` runs",
        ),
        _line(
            "rpo",
            _hours(DEFAULT_RPO),
            "recovery point objective: maximum age of the newest snapshot",
        ),
        _line(
            "rto",
            _hours(DEFAULT_RTO),
            "recovery time objective: a full restore must fit in it",
        ),
        _line(
            "anomaly_share",
            DEFAULT_ANOMALY_SHARE,
            "share of keys deleted or changed that holds the previous snapshot",
        ),
        "",
        "[retention]",
        "# `kvsnap prune` keeps a snapshot that any rule keeps, and always the newest",
        "# verified snapshot of each namespace and every held snapshot. The N days,",
        "# weeks, months or years are the newest N that contain a snapshot.",
        _line(
            "keep_within",
            format_duration(DEFAULT_KEEP_WITHIN),
            "keep every snapshot within this of the newest one (or of now, if"
            ' earlier); "0" turns the rule off',
        ),
        _line("keep_last", 0, "keep the newest N snapshots of each namespace"),
        _line("keep_daily", 0, "keep the newest snapshot of each of N days"),
        _line("keep_weekly", 0, "the same for N ISO weeks"),
        _line("keep_monthly", 0, "the same for N calendar months"),
        _line("keep_yearly", 0, "the same for N calendar years"),
        "",
        "[verify]",
        "# Each run checks new snapshots quickly (every part present, with its size).",
        _line(
            "read_data_within",
            format_duration(DEFAULT_READ_DATA_WITHIN),
            "every snapshot is fully read back at least this often",
        ),
        _line(
            "read_data_share",
            DEFAULT_READ_DATA_SHARE,
            "share of the snapshots that each run fully reads",
        ),
        "",
        "[drill]",
        _line(
            "every",
            format_duration(DEFAULT_DRILL_EVERY),
            "`kvsnap status` warns when the last drill is older",
        ),
        _line(
            "sample",
            DEFAULT_DRILL_SAMPLE,
            "keys that a drill restores into the sandbox",
        ),
        _line(
            "sandbox",
            "",
            "namespace a drill restores into; empty creates a new one",
        ),
        _line(
            "automatic",
            False,
            "kvsnap run drills each namespace whose last drill is older than"
            " `every` (the token then needs write access)",
        ),
        "",
        "[notify]",
        f"# Webhook URLs are secrets: prefer {ENV_WEBHOOK} (several separated by",
        "# spaces), which replaces this list when it is set.",
        _line("webhooks", [], "URLs that receive a POST on failure and anomaly"),
        _line("format", "json", 'request body: "json" or "slack"'),
        _line("on_success", False, "also notify after a successful run"),
    ]
    return "\n".join(lines) + "\n"
