"""`kvsnap config init` and `kvsnap config show`, run as a user would."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from kvsnap import config as config_module
from kvsnap import policy as policy_module
from kvsnap.config import Settings, load_settings
from kvsnap.errors import EXIT_CONFIG
from kvsnap.policy import Policy, load_policy
from kvsnap.starter import starter_file
from tests.kvtools import run_cli

ACCOUNT = "0123456789abcdef0123456789abcdef"
# Recognisable fake secrets: none of them may ever reach stdout or stderr.
SECRETS = {
    "CLOUDFLARE_API_TOKEN": "fake-token-7Hq2ZxKpWm4",
    "KVSNAP_WEBHOOK_URL": "https://hooks.example.test/fake-hook-Aa11 "
    "https://hooks.example.test/fake-hook-Bb22",
    "R2_ACCESS_KEY_ID": "fake-r2-key-id-Cc33",
    "R2_SECRET_ACCESS_KEY": "fake-r2-secret-Dd44",
    "AWS_SESSION_TOKEN": "fake-aws-session-Ee55",
}
SECRET_PARTS = (
    "7Hq2ZxKpWm4",
    "fake-hook-Aa11",
    "fake-hook-Bb22",
    "Cc33",
    "Dd44",
    "Ee55",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any kvsnap, Cloudflare or S3 variable."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDFLARE_", "KVSNAP_", "AWS_", "R2_"))
    }
    return env | extra


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for part in SECRET_PARTS:
            assert part not in text


def uncomment_examples(text: str) -> str:
    """Turn the commented example settings (`# key = value`) into active lines."""
    return re.sub(r"(?m)^# (\w+ = )", r"\1", text)


# init


def test_init_writes_file_that_loads(tmp_path: Path) -> None:
    result = run_cli(["config", "init"], clean_env(), cwd=tmp_path)
    path = tmp_path / "kvsnap.toml"

    assert result.code == 0, result.stderr
    assert result.stdout == "wrote kvsnap.toml\n"
    assert result.stderr == ""
    assert load_settings(config_file=path, env={}) == Settings(config_file=path)
    assert load_policy(path, env={}) == Policy()


def test_init_covers_every_setting() -> None:
    data = tomllib.loads(uncomment_examples(starter_file()))
    top_level = set(config_module._FILE_TYPES) - {
        "account_id",
        "base_url",
        "concurrency",
        "rate_limit",
        "max_attempts",
        "part_size",
    }

    assert set(data) - set(policy_module.POLICY_TABLES) == top_level | {
        "cloudflare",
        "backup",
    }
    assert set(data["cloudflare"]) == {"account_id", "base_url"}
    assert set(data["backup"]) == {
        "concurrency",
        "rate_limit",
        "max_attempts",
        "part_size",
    }
    for table, keys in policy_module._KEYS.items():
        assert set(data[table]) == set(keys), table


def test_init_examples_load_when_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text(uncomment_examples(starter_file()))

    settings = load_settings(config_file=path, env={})

    assert settings.repository == "r2://my-bucket/kv"
    assert settings.namespaces == ("app-cache", "sessions")
    assert settings.account_id == ACCOUNT


def test_init_fills_given_values(tmp_path: Path) -> None:
    args = ["config", "init", "site.toml", "--repo", "./backups", "--account", ACCOUNT]
    result = run_cli(
        [*args, "-n", "app-cache", "-n", 'odd "name"'], clean_env(), tmp_path
    )
    settings = load_settings(config_file=tmp_path / "site.toml", env={})

    assert result.code == 0, result.stderr
    assert settings.repository == "./backups"
    assert settings.account_id == ACCOUNT
    assert settings.namespaces == ("app-cache", 'odd "name"')


def test_init_rejects_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text("# mine\n")

    result = run_cli(["config", "init"], clean_env(), cwd=tmp_path)

    assert result.code == EXIT_CONFIG
    assert result.stdout == ""
    assert "error: kvsnap.toml already exists" in result.stderr
    assert "hint: pass --force" in result.stderr
    assert path.read_text() == "# mine\n"


def test_init_force_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text("# mine\n")

    result = run_cli(["config", "init", "--force"], clean_env(), cwd=tmp_path)

    assert result.code == 0, result.stderr
    assert path.read_text() == starter_file()
    assert [p.name for p in tmp_path.iterdir()] == ["kvsnap.toml"]


def test_init_rejects_invalid_account(tmp_path: Path) -> None:
    result = run_cli(["config", "init", "--account", "nope"], clean_env(), tmp_path)

    assert result.code == EXIT_CONFIG
    assert "invalid Cloudflare account id 'nope'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_dash_prints_file(tmp_path: Path) -> None:
    result = run_cli(["config", "init", "-"], clean_env(), cwd=tmp_path)

    assert result.code == 0, result.stderr
    assert result.stdout == starter_file()
    assert list(tmp_path.iterdir()) == []


# show


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "kvsnap.toml"
    path.write_text(
        'repository = "r2://kv-backups/prod"\n'
        'namespaces = ["app-cache"]\n'
        "[backup]\nconcurrency = 4\n"
        '[policy]\nrpo = "12h"\n'
        "[retention]\nkeep_daily = 7\n"
    )
    return path


def test_show_masks_secrets(tmp_path: Path, config_file: Path) -> None:
    env = clean_env(**SECRETS, CLOUDFLARE_ACCOUNT_ID=ACCOUNT)

    result = run_cli(["config", "show", "--config", str(config_file)], env, tmp_path)

    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert_no_secret(result.stdout, result.stderr)
    assert re.search(
        r'(?m)^api_token = "\*\*\*" +# env CLOUDFLARE_API_TOKEN$', result.stdout
    )
    assert re.search(
        r'(?m)^webhooks = \["\*\*\*", "\*\*\*"\] +# env KVSNAP_WEBHOOK_URL; 2 URL',
        result.stdout,
    )
    assert "# set: AWS_SESSION_TOKEN, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY" in (
        result.stdout
    )
    assert f"# file: {config_file} (from --config)" in result.stdout
    assert re.search(r'(?m)^rpo = "12h" +# file$', result.stdout)
    assert re.search(r"(?m)^concurrency = 4 +# file$", result.stdout)
    assert re.search(
        rf'(?m)^account_id = "{ACCOUNT}" +# env CLOUDFLARE_ACCOUNT_ID$', result.stdout
    )


def test_show_json_masks_secrets(tmp_path: Path, config_file: Path) -> None:
    env = clean_env(**SECRETS)

    result = run_cli(
        ["config", "show", "--config", str(config_file), "--json"], env, tmp_path
    )
    document = json.loads(result.stdout)

    assert result.code == 0, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert document["settings"]["cloudflare"]["api_token"] == {
        "set": True,
        "value": "***",
    }
    assert document["settings"]["notify"]["webhooks"] == {
        "set": True,
        "count": 2,
        "value": ["***", "***"],
    }
    assert document["sources"]["cloudflare.api_token"] == "env CLOUDFLARE_API_TOKEN"
    assert document["sources"]["notify.webhooks"] == "env KVSNAP_WEBHOOK_URL"
    assert document["storage"]["credentials_set"] == [
        "AWS_SESSION_TOKEN",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
    ]


def test_show_masks_webhooks_from_file(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text(
        '[notify]\nwebhooks = ["https://hooks.example.test/fake-hook-Aa11"]\n'
    )

    text = run_cli(["config", "show", "-c", str(path)], clean_env(), tmp_path)
    as_json = run_cli(
        ["config", "show", "-c", str(path), "--json"], clean_env(), tmp_path
    )

    assert (text.code, as_json.code) == (0, 0)
    assert_no_secret(text.stdout, text.stderr, as_json.stdout, as_json.stderr)
    assert re.search(r'(?m)^webhooks = \["\*\*\*"\] +# file; 1 URL', text.stdout)
    assert json.loads(as_json.stdout)["sources"]["notify.webhooks"] == "file"


def test_show_masks_endpoint_password(tmp_path: Path) -> None:
    env = clean_env(AWS_ENDPOINT_URL="http://user:fake-r2-secret-Dd44@127.0.0.1:9000")

    result = run_cli(["config", "show", "--repo", "s3://bucket/kv"], env, tmp_path)

    assert result.code == 0, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert "# AWS_ENDPOINT_URL = http://***@127.0.0.1:9000" in result.stdout


def test_show_json_shape(tmp_path: Path, config_file: Path) -> None:
    env = clean_env(KVSNAP_REPOSITORY="./from-env")

    result = run_cli(
        [
            "config",
            "show",
            "--json",
            "--config",
            str(config_file),
            "--account",
            ACCOUNT,
        ],
        env,
        tmp_path,
    )
    document = json.loads(result.stdout)
    settings = document["settings"]

    assert result.code == 0, result.stderr
    assert set(document) == {
        "type",
        "file",
        "file_source",
        "settings",
        "sources",
        "storage",
    }
    assert document["type"] == "config"
    assert document["file"] == str(config_file)
    assert document["file_source"] == "--config"
    assert set(settings) == {
        "repository",
        "namespaces",
        "all",
        "cloudflare",
        "backup",
        "policy",
        "retention",
        "verify",
        "drill",
        "notify",
    }
    assert settings["repository"] == "./from-env"
    assert settings["namespaces"] == ["app-cache"]
    assert settings["cloudflare"]["api_token"] == {"set": False, "value": None}
    assert settings["backup"] == {
        "concurrency": 4,
        "rate_limit": "1200/300",
        "max_attempts": 8,
        "part_size": "32MiB",
    }
    assert settings["policy"]["rpo"] == "12h"
    assert settings["retention"]["keep_daily"] == 7
    assert document["sources"]["repository"] == "env KVSNAP_REPOSITORY"
    assert document["sources"]["cloudflare.account_id"] == "flag --account"
    assert document["sources"]["namespaces"] == "file"
    assert document["sources"]["retention.keep_weekly"] == "default"
    assert document["sources"]["cloudflare.api_token"] == "not set"
    assert document["storage"] == {
        "scheme": "file",
        "credentials_set": [],
        "variables": {},
    }


def test_show_without_file(tmp_path: Path) -> None:
    result = run_cli(["config", "show", "--json"], clean_env(), tmp_path)
    document = json.loads(result.stdout)

    assert result.code == 0, result.stderr
    assert document["file"] is None
    assert document["file_source"] is None
    assert document["settings"]["repository"] is None
    assert document["sources"]["repository"] == "not set"


def test_show_finds_file_in_working_directory(
    tmp_path: Path, config_file: Path
) -> None:
    result = run_cli(["config", "show"], clean_env(), cwd=config_file.parent)

    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"# file: {config_file} (from working directory)\n")


def test_show_rejects_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text("[policy]\nrpo = 24\n")

    text = run_cli(["config", "show", "-c", str(path)], clean_env(), tmp_path)
    as_json = run_cli(
        ["config", "show", "-c", str(path), "--json"], clean_env(), tmp_path
    )

    assert text.code == EXIT_CONFIG
    assert text.stdout == ""
    assert "[policy] rpo = 24 is invalid" in text.stderr
    assert as_json.code == EXIT_CONFIG
    assert json.loads(as_json.stdout)["ok"] is False


def test_show_never_echoes_token_in_file(tmp_path: Path) -> None:
    path = tmp_path / "kvsnap.toml"
    path.write_text('[cloudflare]\napi_token = "fake-token-7Hq2ZxKpWm4"\n')

    result = run_cli(["config", "show", "-c", str(path)], clean_env(), tmp_path)

    assert result.code == EXIT_CONFIG
    assert "api_token is not read from files" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
