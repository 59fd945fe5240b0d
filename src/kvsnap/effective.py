"""The settings in effect, where each came from, with every secret masked.

`describe` takes the merged Settings and Policy and the inputs they were
merged from (flags, environment, file) and returns an `EffectiveConfig`
that `kvsnap config show` prints. The source of each value follows the
precedence of `kvsnap.config.load_settings`: a flag over a variable over
the file over the default.

Secrets are never copied into the result. The API token and each webhook
URL appear as `***`, and the S3 and R2 credential variables appear by name
only. As a second guard, `render_text` and `to_dict` pass the output through
`kvsnap.logs.mask`, which replaces every registered secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvsnap.config import (
    DEFAULT_CONFIG_NAME,
    ENV_ACCOUNT,
    ENV_BASE_URL,
    ENV_CONFIG,
    ENV_REPOSITORY,
    ENV_STORAGE_TIMEOUT,
    ENV_TOKEN,
    Settings,
    read_config_file,
    storage_request_timeout,
)
from kvsnap.logs import MASK, mask, register_secret
from kvsnap.policy import ENV_WEBHOOK, Policy, format_duration, format_target
from kvsnap.starter import format_rate_limit, format_size_setting, toml_value
from kvsnap.storage import ROLE_CREDENTIAL_VARIABLES, parse_location

# Variables whose values are credentials: shown by name, never by value.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "AWS_ROLE_ARN",
    *ROLE_CREDENTIAL_VARIABLES,
)
# Storage variables that hold no secret, shown with their values.
STORAGE_VARIABLES = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    ENV_STORAGE_TIMEOUT,
)


@dataclass(frozen=True)
class Entry:
    """One setting in effect: its table, key, JSON-ready value and source."""

    table: str
    key: str
    value: Any
    source: str
    note: str | None = None

    @property
    def name(self) -> str:
        """Dotted name as in the file: `repository`, `policy.rpo`."""
        return f"{self.table}.{self.key}" if self.table else self.key


@dataclass(frozen=True)
class EffectiveConfig:
    """The settings in effect, ready to print; contains no secret."""

    file: str | None
    file_source: str | None
    entries: list[Entry]
    storage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the --json form: values nested by table, plus their sources."""
        settings: dict[str, Any] = {}
        for entry in self.entries:
            target = settings.setdefault(entry.table, {}) if entry.table else settings
            target[entry.key] = entry.value
        return _masked(
            {
                "type": "config",
                "file": self.file,
                "file_source": self.file_source,
                "settings": settings,
                "sources": {entry.name: entry.source for entry in self.entries},
                "storage": self.storage,
            }
        )

    def render_text(self) -> str:
        """Return the settings as TOML-like lines, each with its source as a comment."""
        if self.file:
            lines = [f"# file: {self.file} (from {self.file_source})"]
        else:
            lines = ["# file: none (defaults, environment and flags only)"]
        current = None
        for entry in self.entries:
            if entry.table != current:
                current = entry.table
                if current:
                    lines += ["", f"[{current}]"]
            value_text = (
                "(not set)" if entry.value is None else _text_value(entry.value)
            )
            comment = entry.source + (f"; {entry.note}" if entry.note else "")
            setting = f"{entry.key} = {value_text}"
            lines.append(f"{setting.ljust(33)} # {comment}")
        lines += ["", "# storage credentials (names only, values never shown)"]
        lines.append(f"# repository scheme: {self.storage.get('scheme') or '-'}")
        set_names = self.storage.get("credentials_set") or []
        lines.append(f"# set: {', '.join(set_names) if set_names else 'none'}")
        for name, value in self.storage.get("variables", {}).items():
            lines.append(f"# {name} = {value}")
        return mask("\n".join(lines) + "\n")


def _text_value(value: Any) -> str:
    if isinstance(value, dict):  # a masked secret: the token or the webhook list
        if value.get("set") or isinstance(value["value"], list):
            return toml_value(value["value"])
        return "(not set)"
    return toml_value(value)


def _masked(value: Any) -> Any:
    """Apply logs.mask to every string inside a JSON-ready value."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def config_file_source(explicit: Path | None, env: dict[str, str]) -> str | None:
    """Say how the file was found, in the order load_settings looks."""
    if explicit is not None:
        return "--config"
    if env.get(ENV_CONFIG):
        return f"env {ENV_CONFIG}"
    if Path(DEFAULT_CONFIG_NAME).is_file():
        return "working directory"
    return None


def describe(
    settings: Settings,
    policy: Policy,
    *,
    flags: dict[str, str],
    env: dict[str, str] | None = None,
    explicit_config: Path | None = None,
) -> EffectiveConfig:
    """Describe `settings` and `policy` with the source of every value.

    `flags` maps a Settings field name to the flag that set it, such as
    {"repository": "--repo"}, for the flags that were given.
    """
    env = dict(os.environ) if env is None else env
    path = settings.config_file
    data = read_config_file(path) if path is not None else {}
    sources = _Sources(flags, env, data)

    entries = _connection_entries(settings, sources) + _policy_entries(policy, sources)
    return EffectiveConfig(
        file=str(path.absolute()) if path is not None else None,
        file_source=config_file_source(explicit_config, env) if path else None,
        entries=entries,
        storage=_storage(settings.repository, env),
    )


@dataclass(frozen=True)
class _Sources:
    flags: dict[str, str]
    env: dict[str, str]
    data: dict[str, Any]

    def of(
        self,
        field_name: str,
        table: str,
        key: str,
        env_name: str = "",
        *,
        has_default: bool = True,
    ) -> str:
        """Name the source of one setting: flag, env VARIABLE, file or default."""
        if field_name in self.flags:
            return f"flag {self.flags[field_name]}"
        if env_name and self.env.get(env_name):
            return f"env {env_name}"
        in_table = self.data.get(table, {}) if table else self.data
        if isinstance(in_table, dict) and key in in_table:
            return "file"
        return "default" if has_default else "not set"


def _connection_entries(settings: Settings, sources: _Sources) -> list[Entry]:
    token_set = bool(settings.api_token)
    register_secret(settings.api_token)
    return [
        Entry(
            "",
            "repository",
            settings.repository,
            sources.of(
                "repository", "", "repository", ENV_REPOSITORY, has_default=False
            ),
        ),
        Entry(
            "",
            "namespaces",
            list(settings.namespaces),
            sources.of("namespaces", "", "namespaces"),
        ),
        Entry(
            "", "all", settings.all_namespaces, sources.of("all_namespaces", "", "all")
        ),
        Entry(
            "cloudflare",
            "account_id",
            settings.account_id,
            sources.of(
                "account_id", "cloudflare", "account_id", ENV_ACCOUNT, has_default=False
            ),
        ),
        Entry(
            "cloudflare",
            "base_url",
            settings.base_url,
            sources.of("base_url", "cloudflare", "base_url", ENV_BASE_URL),
        ),
        Entry(
            "cloudflare",
            "api_token",
            {"set": token_set, "value": MASK if token_set else None},
            f"env {ENV_TOKEN}" if token_set else "not set",
            None if token_set else f"set {ENV_TOKEN}",
        ),
        Entry(
            "backup",
            "concurrency",
            settings.concurrency,
            sources.of("concurrency", "backup", "concurrency"),
        ),
        Entry(
            "backup",
            "rate_limit",
            format_rate_limit(settings.rate_limit),
            sources.of("rate_limit", "backup", "rate_limit"),
        ),
        Entry(
            "backup",
            "max_attempts",
            settings.max_attempts,
            sources.of("max_attempts", "backup", "max_attempts"),
        ),
        Entry(
            "backup",
            "part_size",
            format_size_setting(settings.part_bytes),
            sources.of("part_bytes", "backup", "part_size"),
        ),
    ]


def _policy_entries(policy: Policy, sources: _Sources) -> list[Entry]:
    def entry(table: str, key: str, value: Any) -> Entry:
        return Entry(table, key, value, sources.of("", table, key))

    retention = policy.retention
    keep_within = retention.keep_within
    entries = [
        entry("policy", "schedule", policy.schedule),
        entry("policy", "rpo", format_target(policy.rpo)),
        entry("policy", "rto", format_target(policy.rto)),
        entry("policy", "anomaly_share", policy.anomaly_share),
        entry(
            "retention",
            "keep_within",
            format_duration(keep_within) if keep_within is not None else "0",
        ),
        entry("retention", "keep_last", retention.keep_last),
        entry("retention", "keep_daily", retention.keep_daily),
        entry("retention", "keep_weekly", retention.keep_weekly),
        entry("retention", "keep_monthly", retention.keep_monthly),
        entry("retention", "keep_yearly", retention.keep_yearly),
        entry("verify", "read_data_within", format_duration(policy.read_data_within)),
        entry("verify", "read_data_share", policy.read_data_share),
        entry("drill", "every", format_duration(policy.drill_every)),
        entry("drill", "sample", policy.drill_sample),
        entry("drill", "sandbox", policy.drill_sandbox or ""),
        entry("drill", "automatic", policy.drill_automatic),
    ]

    count = len(policy.webhooks)
    webhook_source = sources.of("", "notify", "webhooks", ENV_WEBHOOK)
    entries += [
        Entry(
            "notify",
            "webhooks",
            {"set": count > 0, "count": count, "value": [MASK] * count},
            webhook_source,
            f"{count} URL(s), masked",
        ),
        entry("notify", "format", policy.webhook_format),
        entry("notify", "on_success", policy.notify_on_success),
    ]
    return entries


def _storage(repository: str | None, env: dict[str, str]) -> dict[str, Any]:
    """Describe the repository's store and the credential variables that are set."""
    for name in CREDENTIAL_VARIABLES:
        register_secret(env.get(name))
    storage_request_timeout(env)  # raises ConfigError on a value that commands reject
    scheme = parse_location(repository).scheme if repository else None
    return {
        "scheme": scheme,
        "credentials_set": [name for name in CREDENTIAL_VARIABLES if env.get(name)],
        "variables": {
            name: _without_userinfo(env[name])
            for name in STORAGE_VARIABLES
            if env.get(name)
        },
    }


def _without_userinfo(value: str) -> str:
    """Hide a user:password part of an endpoint URL, which would be a secret."""
    parts = urlsplit(value)
    if "@" not in parts.netloc:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{MASK}@{host}").geturl()
