"""Settings from flags, environment variables and kvsnap.toml, in that order.

A flag overrides a variable, and a variable overrides the file. The
Cloudflare variables are the ones the official SDK and wrangler users already
set: CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_BASE_URL.

The API token is read from the environment only. kvsnap.toml files tend to
be committed next to deployment code, so a token found in one is rejected
with a hint instead of being used.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvsnap import limits
from kvsnap.errors import ConfigError
from kvsnap.logs import register_secret
from kvsnap.policy import POLICY_TABLES, parse_duration

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_CONFIG_NAME = "kvsnap.toml"

ENV_TOKEN = "CLOUDFLARE_API_TOKEN"
ENV_ACCOUNT = "CLOUDFLARE_ACCOUNT_ID"
ENV_BASE_URL = "CLOUDFLARE_BASE_URL"
ENV_REPOSITORY = "KVSNAP_REPOSITORY"
ENV_CONFIG = "KVSNAP_CONFIG"
ENV_STORAGE_TIMEOUT = "KVSNAP_STORAGE_TIMEOUT"

# Cloudflare account ids are 32 hexadecimal characters.
ACCOUNT_ID = re.compile(r"[0-9a-fA-F]{32}")
# A part is held in memory while it is compressed and uploaded.
MAX_PART_BYTES = 1024**3

_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "k": 1024, "m": 1024**2}


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach Cloudflare and the repository."""

    api_token: str | None = field(default=None, repr=False)
    account_id: str | None = None
    base_url: str = DEFAULT_BASE_URL
    repository: str | None = None
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    concurrency: int = limits.DEFAULT_CONCURRENCY
    rate_limit: tuple[int, float] = (
        limits.API_BUDGET_REQUESTS,
        limits.API_BUDGET_WINDOW_SECONDS,
    )
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS
    part_bytes: int = limits.DEFAULT_PART_BYTES
    config_file: Path | None = None

    def require_cloudflare(self) -> tuple[str, str]:
        """Return (token, account id) or raise ConfigError naming what is missing."""
        if not self.api_token:
            raise ConfigError(
                f"no Cloudflare API token: set {ENV_TOKEN}",
                hint="create a token with 'Workers KV Storage Read' permission "
                "(Write for restore) in the Cloudflare dashboard",
            )
        if not self.account_id:
            raise ConfigError(
                f"no Cloudflare account id: set {ENV_ACCOUNT} or pass --account",
                hint="the account id is shown on the Workers overview page",
            )
        return self.api_token, self.account_id

    def require_repository(self) -> str:
        if not self.repository:
            raise ConfigError(
                f"no repository given: pass --repo or set {ENV_REPOSITORY}",
                hint="for example --repo ./backups, s3://bucket/kv or r2://bucket/kv",
            )
        return self.repository


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse REQUESTS/SECONDS, such as 1200/300, into (1200, 300.0)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*", text)
    if not match or int(match[1]) < 1 or float(match[2]) <= 0:
        raise ConfigError(
            f"invalid rate limit {text!r}: expected REQUESTS/SECONDS such as 1200/300"
        )
    return int(match[1]), float(match[2])


def parse_size(text: str | int) -> int:
    """Parse a byte size such as 32MiB, 64mb or 1048576."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(
            f"invalid size {text!r}: expected a number with B, KiB or MiB"
        )
    return int(match[1]) * _SIZE_UNITS[unit]


def storage_request_timeout(env: Mapping[str, str]) -> float:
    """Return the object-store request timeout in seconds from KVSNAP_STORAGE_TIMEOUT.

    Without the variable, the default STORAGE_REQUEST_TIMEOUT_SECONDS applies.
    A value that is not a duration of at least
    STORAGE_MIN_REQUEST_TIMEOUT_SECONDS raises ConfigError.
    """
    text = env.get(ENV_STORAGE_TIMEOUT, "").strip()
    if not text:
        return limits.STORAGE_REQUEST_TIMEOUT_SECONDS
    default_seconds = _seconds(limits.STORAGE_REQUEST_TIMEOUT_SECONDS)
    default = f"unset it for the default of {default_seconds}"
    try:
        seconds = parse_duration(text, label=ENV_STORAGE_TIMEOUT).total_seconds()
    except ConfigError as exc:
        raise ConfigError(
            f"invalid {ENV_STORAGE_TIMEOUT} {text!r}: expected a duration such as"
            " 30s or 2m",
            hint=default,
        ) from exc
    minimum = limits.STORAGE_MIN_REQUEST_TIMEOUT_SECONDS
    if seconds < minimum:
        raise ConfigError(
            f"invalid {ENV_STORAGE_TIMEOUT} {text!r}: the request timeout must be"
            f" at least {_seconds(minimum)}",
            hint=default,
        )
    return seconds


def _seconds(value: float) -> str:
    return f"{value:g}s"


def read_config_file(path: Path) -> dict[str, Any]:
    """Return the parsed TOML of `path`, or raise ConfigError naming the problem."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration file {path}: {exc.strerror}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    return data


def _flatten(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map the file's tables onto Settings field names, rejecting unknown keys."""
    allowed = {
        "": {"repository", "namespaces", "all"},
        "cloudflare": {"account_id", "base_url"},
        "backup": {"concurrency", "rate_limit", "max_attempts", "part_size"},
    }
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in ("cloudflare", "backup") and isinstance(value, dict):
            for key, item in value.items():
                if key == "api_token":
                    raise ConfigError(
                        f"{path}: [cloudflare] api_token is not read from files",
                        hint=f"set {ENV_TOKEN} in the environment instead",
                    )
                if key not in allowed[name]:
                    raise ConfigError(
                        f"{path}: unknown setting [{name}] {key}; known: "
                        + ", ".join(sorted(allowed[name]))
                    )
                flat[key] = _typed(path, f"[{name}] {key}", key, item)
        elif name in allowed[""]:
            flat[name] = _typed(path, name, name, value)
        elif name in POLICY_TABLES:
            continue  # read and checked by kvsnap.policy
        else:
            raise ConfigError(
                f"{path}: unknown setting {name!r}; known: repository, namespaces, "
                "all, [cloudflare], [backup], "
                + ", ".join(f"[{table}]" for table in POLICY_TABLES)
            )
    return flat


# The TOML types each setting may have.
_FILE_TYPES: dict[str, tuple[type, ...]] = {
    "repository": (str,),
    "namespaces": (list,),
    "all": (bool,),
    "account_id": (str,),
    "base_url": (str,),
    "concurrency": (int,),
    "rate_limit": (str,),
    "max_attempts": (int,),
    "part_size": (str, int),
}
_TYPE_WORDS = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
}


def _typed(path: Path, label: str, key: str, value: Any) -> Any:
    """Return value if it has the setting's TOML type, else raise ConfigError."""
    types = _FILE_TYPES[key]
    valid = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if key == "namespaces" and valid:
        valid = all(isinstance(item, str) for item in value)
    if not valid:
        expected = " or ".join(_TYPE_WORDS[t] for t in types)
        if key == "namespaces":
            expected = "a list of strings"
        if key == "rate_limit":
            expected += ' such as "1200/300"'
        raise ConfigError(
            f"{path}: {label} = {value!r} is invalid: expected {expected}"
        )
    return value


def _find_config(explicit: Path | None, env: dict[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_settings(
    *,
    config_file: Path | None = None,
    env: dict[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Merge flags over environment over file into one Settings object.

    `flags` are Settings field names; a value of None (or an empty tuple for
    namespaces) means the flag was not given.
    """
    env = dict(os.environ) if env is None else env
    path = _find_config(config_file, env)
    file = _flatten(read_config_file(path), path) if path else {}

    def pick(flag: str, env_name: str | None, file_key: str) -> Any:
        if flags.get(flag) not in (None, ()):
            return flags[flag]
        if env_name and env.get(env_name):
            return env[env_name]
        return file.get(file_key)

    token = env.get(ENV_TOKEN) or None
    register_secret(token)
    rate = pick("rate_limit", None, "rate_limit")
    part = pick("part_bytes", None, "part_size")
    # Names or --all on the command line replace the file's choice whole.
    from_flags = bool(flags.get("namespaces") or flags.get("all_namespaces"))
    namespaces = flags.get("namespaces") or (
        () if from_flags else tuple(file.get("namespaces", ()))
    )
    all_namespaces = bool(flags.get("all_namespaces")) or (
        not from_flags and bool(file.get("all", False))
    )
    settings = Settings(
        api_token=token,
        account_id=pick("account_id", ENV_ACCOUNT, "account_id"),
        base_url=(pick("base_url", ENV_BASE_URL, "base_url") or DEFAULT_BASE_URL),
        repository=pick("repository", ENV_REPOSITORY, "repository"),
        namespaces=tuple(str(n) for n in namespaces),
        all_namespaces=all_namespaces,
        concurrency=_or_default(
            pick("concurrency", None, "concurrency"), Settings.concurrency
        ),
        rate_limit=parse_rate_limit(rate) if rate else Settings.rate_limit,
        max_attempts=_or_default(
            pick("max_attempts", None, "max_attempts"), Settings.max_attempts
        ),
        part_bytes=parse_size(part) if part else Settings.part_bytes,
        config_file=path,
    )
    _check(settings)
    return settings


def _or_default(value: Any, default: int) -> int:
    """Return value as an int, or `default` when the setting was not given."""
    return default if value is None else int(value)


def _check(settings: Settings) -> None:
    if not 1 <= settings.concurrency <= 64:
        raise ConfigError(
            f"invalid concurrency {settings.concurrency}: expected 1 to 64"
        )
    if settings.max_attempts < 1:
        raise ConfigError(
            f"invalid max attempts {settings.max_attempts}: expected >= 1"
        )
    if not 1024 <= settings.part_bytes <= MAX_PART_BYTES:
        raise ConfigError(
            f"invalid part size {settings.part_bytes} bytes: expected 1KiB to 1GiB"
        )
    if settings.all_namespaces and settings.namespaces:
        raise ConfigError(
            "both --all (or all = true) and namespace names were given",
            hint="name the namespaces, or use --all alone",
        )
    if settings.account_id is not None and not ACCOUNT_ID.fullmatch(
        settings.account_id
    ):
        raise ConfigError(
            f"invalid Cloudflare account id {settings.account_id!r}: expected 32 "
            "hexadecimal characters",
            hint="copy the account id from the Workers overview page of the dashboard",
        )
    if not re.match(r"https?://", settings.base_url):
        raise ConfigError(
            f"invalid Cloudflare base URL {settings.base_url!r}: expected http(s)://...",
            hint=f"the default is {DEFAULT_BASE_URL}",
        )
