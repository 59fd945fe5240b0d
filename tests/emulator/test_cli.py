"""The ``kvsnap emulator`` command: flag parsing, start-up output, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kvsnap.cli.emulator import parse_latency, parse_rate_limit
from kvsnap.emulator import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN
from kvsnap.errors import ConfigError

# Runs only the emulator command, so this test does not depend on the rest of
# the CLI; the command module is the one `kvsnap emulator` registers.
LAUNCHER = """
import typer
from kvsnap.cli.emulator import emulator
app = typer.Typer()
app.callback()(lambda: None)
app.command()(emulator)
app()
"""


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "emulator", "--port", "0", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines = [process.stdout.readline().rstrip("\n") for _ in range(3)]
    return process, lines


def test_prints_exports_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    process, lines = start(tmp_path)
    try:
        assert lines[0].startswith("export CLOUDFLARE_BASE_URL=http://127.0.0.1:")
        assert lines[0].endswith("/client/v4")
        assert lines[1] == f"export CLOUDFLARE_ACCOUNT_ID={DEFAULT_ACCOUNT_ID}"
        assert lines[2] == f"export CLOUDFLARE_API_TOKEN={DEFAULT_TOKEN}"
        base_url = lines[0].split("=", 1)[1]
        response = httpx.get(
            f"{base_url}/accounts/{DEFAULT_ACCOUNT_ID}/storage/kv/namespaces",
            headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
        )
        assert response.json()["success"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert (tmp_path / ".kvsnap-emulator" / "kv.sqlite3").exists()


def test_given_token_is_never_printed(tmp_path: Path) -> None:
    secret = "sekrit-token-123"
    account = "a" * 32
    process, lines = start(
        tmp_path, "--token", secret, "--account", account, "--data", "d"
    )
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert lines[1] == f"export CLOUDFLARE_ACCOUNT_ID={account}"
    assert lines[2].startswith("#")
    assert secret not in "\n".join(lines) + stdout + stderr
    assert (tmp_path / "d" / "kv.sqlite3").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("50", (50.0, 50.0)), ("20-80", (20.0, 80.0)), ("1.5", (1.5, 1.5))],
)
def test_parse_latency(text: str | None, expected: tuple[float, float] | None) -> None:
    assert parse_latency(text) == expected


@pytest.mark.parametrize("text", ["fast", "80-20", "-5", "1-2-3"])
def test_parse_latency_rejects_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match="--latency-ms"):
        parse_latency(text)


def test_parse_rate_limit() -> None:
    assert parse_rate_limit("1200/300") == (1200, 300.0)
    assert parse_rate_limit(None) is None


@pytest.mark.parametrize("text", ["1200", "0/300", "12/0", "a/b", "12x"])
def test_parse_rate_limit_rejects_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match="REQUESTS/SECONDS") as caught:
        parse_rate_limit(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--port", "70000", "--port 70000"), ("--account", "xyz", "--account 'xyz'")],
)
def test_cli_invalid_flag_exit_10(
    tmp_path: Path, flag: str, value: str, named: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvsnap",
            "emulator",
            "--data",
            str(tmp_path),
            flag,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 10
    assert named in done.stderr
    assert "Traceback" not in done.stderr
