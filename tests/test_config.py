"""Settings precedence (flag over variable over file) and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsnap.config import load_settings, parse_rate_limit, parse_size
from kvsnap.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FILE_ACCOUNT = "f" * 32
ENV_ACCOUNT = "e" * 32


def test_flag_over_env_over_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kvsnap.toml",
        f'repository = "file-repo"\n[cloudflare]\naccount_id = "{FILE_ACCOUNT}"\n',
    )
    env = {"KVSNAP_REPOSITORY": "env-repo", "CLOUDFLARE_ACCOUNT_ID": ENV_ACCOUNT}

    from_file = load_settings(config_file=config, env={})
    from_env = load_settings(config_file=config, env=env)
    from_flag = load_settings(config_file=config, env=env, repository="flag-repo")

    assert (from_file.repository, from_file.account_id) == ("file-repo", FILE_ACCOUNT)
    assert (from_env.repository, from_env.account_id) == ("env-repo", ENV_ACCOUNT)
    assert from_flag.repository == "flag-repo"
    assert from_flag.account_id == ENV_ACCOUNT


def test_file_backup_table(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml",
        'namespaces = ["a", "b"]\n[backup]\nconcurrency = 3\n'
        'rate_limit = "600/60"\npart_size = "2MiB"\nmax_attempts = 4\n',
    )

    settings = load_settings(config_file=config, env={})

    assert settings.namespaces == ("a", "b")
    assert settings.concurrency == 3
    assert settings.rate_limit == (600, 60.0)
    assert settings.part_bytes == 2 * 1024 * 1024
    assert settings.max_attempts == 4


def test_token_in_file_rejected(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", '[cloudflare]\napi_token = "abc-secret"\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, env={})

    assert "CLOUDFLARE_API_TOKEN" in (caught.value.hint or "")
    assert "abc-secret" not in str(caught.value)


def test_unknown_setting_named(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", "[backup]\nconcurency = 3\n")

    with pytest.raises(ConfigError, match="concurency"):
        load_settings(config_file=config, env={})


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", "repository = \n")

    with pytest.raises(ConfigError, match=r"k\.toml"):
        load_settings(config_file=config, env={})


def test_missing_token_and_account_named() -> None:
    settings = load_settings(env={})

    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        settings.require_cloudflare()
    with pytest.raises(ConfigError, match="CLOUDFLARE_ACCOUNT_ID"):
        load_settings(env={"CLOUDFLARE_API_TOKEN": "t0k3n"}).require_cloudflare()


def test_token_not_in_repr() -> None:
    settings = load_settings(env={"CLOUDFLARE_API_TOKEN": "very-secret-token"})

    assert "very-secret-token" not in repr(settings)


@pytest.mark.parametrize("text", ["1200", "0/300", "a/b", "10/0", ""])
def test_rate_limit_invalid(text: str) -> None:
    with pytest.raises(ConfigError, match="REQUESTS/SECONDS"):
        parse_rate_limit(text)


def test_sizes() -> None:
    assert parse_size("32MiB") == 32 * 1024 * 1024
    assert parse_size("4KiB") == 4096
    assert parse_size("1000") == 1000
    with pytest.raises(ConfigError, match="12 parsecs"):
        parse_size("12 parsecs")


def test_base_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ftp://x"):
        load_settings(env={"CLOUDFLARE_BASE_URL": "ftp://x"})


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("repository = 5", "repository = 5"),
        ("rate_limit = 1200", "1200/300"),
        ('namespaces = "one"', "a list of strings"),
        ("all = 1", "true or false"),
    ],
)
def test_file_value_types_checked(tmp_path: Path, line: str, named: str) -> None:
    table = "[backup]\n" if line.startswith("rate_limit") else ""
    config = write(tmp_path / "k.toml", f"{table}{line}\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, env={})

    assert named in str(caught.value)


def test_zero_concurrency_rejected() -> None:
    with pytest.raises(ConfigError, match="concurrency 0"):
        load_settings(env={}, concurrency=0)
    with pytest.raises(ConfigError, match="max attempts 0"):
        load_settings(env={}, max_attempts=0)


def test_invalid_account_id_named() -> None:
    with pytest.raises(ConfigError, match=r"'\.\./x\?y'"):
        load_settings(env={"CLOUDFLARE_ACCOUNT_ID": "../x?y"})


def test_all_with_names_rejected() -> None:
    with pytest.raises(ConfigError, match="--all"):
        load_settings(env={}, all_namespaces=True, namespaces=("a",))


def test_flag_names_replace_file_all(tmp_path: Path) -> None:
    path = write(tmp_path / "kvsnap.toml", "all = true\n")
    named = load_settings(config_file=path, env={}, namespaces=("sessions",))
    assert named.namespaces == ("sessions",)
    assert named.all_namespaces is False


def test_flag_all_replaces_file_names(tmp_path: Path) -> None:
    path = write(tmp_path / "kvsnap.toml", 'namespaces = ["a", "b"]\n')
    every = load_settings(config_file=path, env={}, all_namespaces=True)
    assert every.namespaces == ()
    assert every.all_namespaces is True


def test_config_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(config_file=tmp_path, env={})


def test_part_size_capped() -> None:
    with pytest.raises(ConfigError, match="1KiB to 1GiB"):
        load_settings(env={}, part_bytes="99999MiB")
