"""Tests of kvsnap.storage: URL parsing, S3 settings, and one suite run
against a local folder and rclone's S3 server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from kvsnap.errors import ConfigError, ObjectExists, ObjectNotFound, RepositoryError
from kvsnap.storage import (
    Location,
    RetryPolicy,
    Storage,
    parse_location,
    s3_settings,
)
from tests.s3servers import SECRET_KEY, FaultProxy

NO_CLIENT_RETRY = RetryPolicy(
    attempts=3,
    backoff_base=0.01,
    backoff_max=0.02,
    client_max_retries=0,
    client_retry_timeout=5.0,
    request_timeout=10.0,
)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


# URL parsing.


def test_parse_local_path(tmp_path: Path) -> None:
    location = parse_location(str(tmp_path / "repo"))
    assert location == Location("file", str(tmp_path / "repo"), path=tmp_path / "repo")


def test_parse_relative_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_location("backups").path == tmp_path / "backups"


def test_parse_file_url() -> None:
    location = parse_location("file:///var/backups/kv%20snap")
    assert location.scheme == "file"
    assert location.path == Path("/var/backups/kv snap")
    assert location.display == "/var/backups/kv snap"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "display"),
    [
        ("s3://my-bucket", "my-bucket", "", "s3://my-bucket"),
        ("s3://my-bucket/", "my-bucket", "", "s3://my-bucket"),
        ("s3://my.bucket/a/b/", "my.bucket", "a/b", "s3://my.bucket/a/b"),
        ("r2://kv-backups/prod", "kv-backups", "prod", "r2://kv-backups/prod"),
        ("S3://abc/x", "abc", "x", "s3://abc/x"),
    ],
)
def test_parse_bucket_urls(url: str, bucket: str, prefix: str, display: str) -> None:
    location = parse_location(url)
    assert location.bucket == bucket
    assert location.prefix == prefix
    assert location.display == display


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty repository URL"),
        ("gs://bucket/x", "unsupported repository URL 'gs://bucket/x'"),
        ("https://example.com/b", "unsupported repository URL"),
        ("s3://", "bucket name '' must be 3-63"),
        ("s3://Upper/x", "bucket name 'Upper' must be 3-63"),
        ("s3://bucket/a/../b", "must not contain empty, '.' or '..' segments"),
        ("s3://bucket/a//b", "must not contain empty"),
        ("s3://bucket/x?versionId=1", "query strings and fragments"),
        ("file://host/path", "a file URL needs an absolute path"),
    ],
)
def test_parse_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location(url)
    assert message in str(caught.value)


def test_bad_url_message_names_accepted_forms() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location("ftp://host/dir")
    assert str(caught.value) == (
        "unsupported repository URL 'ftp://host/dir': use a local path,"
        " file:///absolute/path, s3://bucket/prefix or r2://bucket/prefix"
    )


@pytest.mark.parametrize("url", ["s3:bucket2", "r2:bucket/p", "file:backups", "S3:/b"])
def test_parse_rejects_scheme_without_slashes(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location(url)
    assert str(caught.value) == (
        f"invalid repository URL {url!r}: a scheme must be followed by '//';"
        " use a local path, file:///absolute/path, s3://bucket/prefix or"
        " r2://bucket/prefix"
    )
    assert caught.value.hint == (
        f"for a local folder whose name contains a colon, write ./{url}"
    )


@pytest.mark.parametrize("text", ["./s3:bucket2", "c:backups", "kv/s3:x"])
def test_parse_colon_in_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.chdir(tmp_path)
    location = parse_location(text)
    assert location.scheme == "file"
    assert location.path == tmp_path / text.removeprefix("./")


def test_credentials_in_url_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location("s3://AKIAEXAMPLE:topsecretvalue@bucket/prefix")
    message = str(caught.value)
    assert "topsecretvalue" not in message
    assert "AKIAEXAMPLE" not in message
    assert message.startswith("invalid repository URL s3://***@bucket/prefix")


# S3 and R2 settings.


def test_s3_settings_from_environment() -> None:
    environ = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "access-1",
        "AWS_SECRET_ACCESS_KEY": "secret-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    settings = s3_settings(parse_location("s3://bucket/p"), environ)
    assert settings.endpoint == "http://127.0.0.1:9000"
    assert settings.region == "eu-west-1"
    assert settings.allow_http is True
    assert settings.config == {
        "region": "eu-west-1",
        "access_key_id": "access-1",
        "secret_access_key": "secret-1",
        "endpoint": "http://127.0.0.1:9000",
    }
    assert "secret-1" not in repr(settings)


def test_s3_settings_region_precedence_and_https() -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "access-1",
        "AWS_SECRET_ACCESS_KEY": "secret-1",
        "AWS_ENDPOINT_URL": "https://s3.example.test",
        "AWS_REGION": "us-west-2",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    settings = s3_settings(parse_location("s3://bucket"), environ)
    assert settings.region == "us-west-2"
    assert settings.allow_http is False


def test_s3_settings_require_credentials() -> None:
    # Storage.from_url sends no request, so an error here comes before any.
    with pytest.raises(ConfigError) as caught:
        Storage.from_url("s3://bucket/p", environ={"AWS_REGION": "eu-west-1"})
    assert str(caught.value) == (
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )
    assert caught.value.hint is not None
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" in caught.value.hint
    assert "never asks the instance metadata service" in caught.value.hint


@pytest.mark.parametrize(
    "variable",
    [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ],
)
def test_s3_settings_accept_explicit_role(variable: str) -> None:
    environ = {variable: "/set-by-the-platform"}
    settings = s3_settings(parse_location("s3://bucket"), environ)
    assert "access_key_id" not in settings.config
    assert "secret_access_key" not in settings.config


def test_s3_settings_reject_half_credentials() -> None:
    with pytest.raises(ConfigError, match="set both AWS_ACCESS_KEY_ID"):
        s3_settings(parse_location("s3://bucket"), {"AWS_ACCESS_KEY_ID": "only-id"})


def test_s3_settings_reject_bad_endpoint() -> None:
    with pytest.raises(ConfigError, match="invalid AWS_ENDPOINT_URL 'localhost:9000'"):
        s3_settings(
            parse_location("s3://bucket"),
            {
                "AWS_ACCESS_KEY_ID": "access-1",
                "AWS_SECRET_ACCESS_KEY": "secret-1",
                "AWS_ENDPOINT_URL": "localhost:9000",
            },
        )


def test_r2_settings_prefer_r2_keys() -> None:
    environ = {
        "CLOUDFLARE_ACCOUNT_ID": "0123456789abcdef0123456789abcdef",
        "R2_ACCESS_KEY_ID": "r2-id",
        "R2_SECRET_ACCESS_KEY": "r2-secret",
        "AWS_ACCESS_KEY_ID": "aws-id",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
    }
    settings = s3_settings(parse_location("r2://bucket/p"), environ)
    assert settings.config == {
        "endpoint": "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
        "region": "auto",
        "access_key_id": "r2-id",
        "secret_access_key": "r2-secret",
    }
    assert settings.allow_http is False


def test_r2_settings_aws_key_fallback() -> None:
    environ = {"AWS_ACCESS_KEY_ID": "aws-id", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    settings = s3_settings(parse_location("r2://bucket"), environ, "acct1")
    assert settings.endpoint == "https://acct1.r2.cloudflarestorage.com"
    assert settings.config["access_key_id"] == "aws-id"
    assert settings.config["secret_access_key"] == "aws-secret"


def test_r2_settings_need_account_and_keys() -> None:
    location = parse_location("r2://bucket")
    with pytest.raises(ConfigError, match="set CLOUDFLARE_ACCOUNT_ID"):
        s3_settings(location, {"R2_ACCESS_KEY_ID": "a", "R2_SECRET_ACCESS_KEY": "b"})
    with pytest.raises(ConfigError, match="need R2 access keys"):
        s3_settings(location, {"CLOUDFLARE_ACCOUNT_ID": "acct1"})
    with pytest.raises(ConfigError, match="invalid Cloudflare account id"):
        s3_settings(location, {"CLOUDFLARE_ACCOUNT_ID": "evil.example.com/x"})


def test_r2_settings_never_mix_key_pairs() -> None:
    location = parse_location("r2://bucket")
    mixed = {
        "CLOUDFLARE_ACCOUNT_ID": "acct1",
        "R2_ACCESS_KEY_ID": "r2-id",
        "AWS_ACCESS_KEY_ID": "aws-id",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
    }
    with pytest.raises(ConfigError) as caught:
        s3_settings(location, mixed)
    assert str(caught.value) == (
        "incomplete R2 credentials: set both R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"
    )
    with pytest.raises(ConfigError, match="set both AWS_ACCESS_KEY_ID"):
        s3_settings(
            location, {"CLOUDFLARE_ACCOUNT_ID": "acct1", "AWS_ACCESS_KEY_ID": "x"}
        )


# The storage suite: local folder and rclone.


def test_round_trip(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    data = bytes(range(256)) * 100
    run(storage.put("data/ns/part.bin", data))
    assert run(storage.get("data/ns/part.bin")) == data
    assert run(storage.head("data/ns/part.bin")) == len(data)
    assert run(storage.exists("data/ns/part.bin")) is True


def test_put_overwrites_by_default(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("a.json", b"one"))
    run(storage.put("a.json", b"second"))
    assert run(storage.get("a.json")) == b"second"


def test_missing_object(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("present", b"x"))
    assert run(storage.head("absent")) is None
    assert run(storage.exists("absent")) is False
    with pytest.raises(ObjectNotFound) as caught:
        run(storage.get("dir/absent"))
    assert str(caught.value) == f"{storage.url}/dir/absent not found"


def test_list_sorted_with_sizes(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    for path, data in [("b/2", b"22"), ("a/1", b"1"), ("b/1", b"333"), ("bc/1", b"")]:
        run(storage.put(path, data))
    assert run(storage.list()) == [("a/1", 1), ("b/1", 3), ("b/2", 2), ("bc/1", 0)]
    assert run(storage.list("b")) == [("b/1", 3), ("b/2", 2)]
    assert run(storage.list("nothing")) == []
    assert len(run(storage.list(limit=1))) == 1


def test_delete_is_idempotent(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("x/y", b"1"))
    run(storage.delete("x/y"))
    run(storage.delete("x/y"))
    assert run(storage.head("x/y")) is None


def test_create_only_refuses_existing(repo_url: str) -> None:
    storage = Storage.from_url(repo_url)
    run(storage.put("m.json", b"first", create_only=True))
    with pytest.raises(ObjectExists) as caught:
        run(storage.put("m.json", b"second", create_only=True))
    assert str(caught.value) == (
        f"{storage.url}/m.json already exists; it is never overwritten"
    )
    assert run(storage.get("m.json")) == b"first"


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", "dir/", "./a"])
def test_invalid_object_paths(tmp_path: Path, path: str) -> None:
    storage = Storage.from_url(str(tmp_path))
    with pytest.raises(ValueError, match="invalid object path"):
        run(storage.put(path, b"x"))


def test_missing_local_folder_reads_empty(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    storage = Storage.from_url(str(root))
    assert run(storage.list()) == []
    assert run(storage.head("x")) is None
    run(storage.delete("x"))
    assert not root.exists()
    run(storage.put("x", b"1"))
    assert (root / "x").read_bytes() == b"1"


def test_local_root_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        Storage.from_url(str(afile))
    assert str(caught.value) == f"--repo {afile} is a file, not a folder"
    with pytest.raises(ConfigError) as caught:
        Storage.from_url(str(afile / "sub" / "repo"))
    assert str(caught.value) == (
        f"--repo {afile / 'sub' / 'repo'} is inside {afile}, which is a file,"
        " not a folder"
    )
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a folder"):
        Storage.from_url(str(fifo))


@pytest.mark.s3
def test_create_only_conditional_put_on_moto(moto_bucket: str) -> None:
    storage = Storage.from_url(moto_bucket)
    run(storage.put("m.json", b"first"))

    async def never_exists(path: str) -> int | None:
        return None

    # Without the HEAD check, only the server's If-None-Match check remains.
    storage.head = never_exists  # type: ignore[method-assign]
    with pytest.raises(ObjectExists, match="already exists"):
        run(storage.put("m.json", b"second", create_only=True))
    del storage.head
    assert run(storage.get("m.json")) == b"first"


@pytest.mark.s3
def test_wrong_secret_is_denied_without_leaking_it(
    rclone_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_secret = "wrong-secret-value-123"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    storage = Storage.from_url(rclone_bucket, retry=NO_CLIENT_RETRY)
    with pytest.raises(RepositoryError) as caught:
        run(storage.put("x", b"1"))
    message = str(caught.value)
    assert message.startswith(f"PUT {rclone_bucket}/x was denied: ")
    assert "SignatureDoesNotMatch" in message
    assert wrong_secret not in message
    assert SECRET_KEY not in message
    assert (
        caught.value.hint == "check that the access keys may read and write the bucket"
    )


# Retries, through the fault proxy.


@pytest.mark.s3
def test_transient_error_is_retried(
    fault_proxy: tuple[FaultProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", r"/flaky$", 503, times=2)
    proxy.fail("GET", r"/flaky$", 502, times=1)
    storage = Storage.from_url(url, retry=NO_CLIENT_RETRY)
    with caplog.at_level(logging.WARNING, logger="kvsnap.storage"):
        run(storage.put("flaky", b"payload"))
        assert run(storage.get("flaky")) == b"payload"
    assert [r.status for r in proxy.requests_to("PUT", "/flaky$")] == [503, 503, 200]
    assert [r.status for r in proxy.requests_to("GET", "/flaky$")] == [502, 200]
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 3
    assert retries[0].startswith(f"PUT {url}/flaky failed (attempt 1 of 3), retrying")
    assert all(SECRET_KEY not in message for message in retries)


@pytest.mark.s3
def test_large_object_uses_one_put(fault_proxy: tuple[FaultProxy, str]) -> None:
    proxy, url = fault_proxy
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB, above obstore's 5 MiB chunk
    storage = Storage.from_url(url, retry=NO_CLIENT_RETRY)
    run(storage.put("big", data))
    assert [(r.method, r.path) for r in proxy.requests] == [
        ("PUT", f"/{url.removeprefix('s3://')}/big")
    ]
    assert run(storage.get("big")) == data


@pytest.mark.s3
def test_persistent_error_gives_up_after_attempts(
    fault_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, url = fault_proxy
    proxy.fail("PUT", r"/broken$", 500)
    storage = Storage.from_url(url, retry=NO_CLIENT_RETRY)
    with pytest.raises(RepositoryError) as caught:
        run(storage.put("broken", b"x"))
    assert len(proxy.requests_to("PUT", "/broken$")) == 3
    message = str(caught.value)
    assert message.startswith(f"PUT {url}/broken failed: ")
    assert "500 Internal Server Error (InjectedFault)" in message
    assert "\n" not in message


@pytest.mark.s3
def test_client_error_is_not_retried(fault_proxy: tuple[FaultProxy, str]) -> None:
    proxy, url = fault_proxy
    proxy.fail("GET", r"/forbidden$", 403)
    storage = Storage.from_url(url, retry=NO_CLIENT_RETRY)
    with pytest.raises(RepositoryError, match="was denied"):
        run(storage.get("forbidden"))
    assert len(proxy.requests_to("GET", "/forbidden$")) == 1


def test_connection_refused_is_retried_then_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Port 1 on 127.0.0.1: nothing listens there, so connecting fails at once.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    storage = Storage.from_url("s3://bucket/p", retry=NO_CLIENT_RETRY)
    with pytest.raises(RepositoryError) as caught:
        run(storage.head("x"))
    assert str(caught.value).startswith("HEAD s3://bucket/p/x failed: ")
    assert "error sending request" in str(caught.value)
