"""Stale reads: the previous state of a changed key stays visible for a while."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from tests.emulator.helpers import sdk_client

STALE_SECONDS = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(tmp_path: Path, clock: Clock) -> Iterator[EmulatorServer]:
    with EmulatorServer(
        tmp_path, stale_reads_seconds=STALE_SECONDS, clock=clock
    ) as emulator:
        yield emulator


class View:
    """Every way to read one key, through the SDK."""

    def __init__(self, server: EmulatorServer, namespace: str) -> None:
        self.client = sdk_client(server)
        self.account = server.account_id
        self.namespace = namespace

    def put(self, key: str, value: bytes, **options: object) -> None:
        self.client.kv.namespaces.values.update(
            key,
            account_id=self.account,
            namespace_id=self.namespace,
            value=value,
            **options,  # type: ignore[arg-type]
        )

    def delete(self, key: str) -> None:
        self.client.kv.namespaces.values.delete(
            key, account_id=self.account, namespace_id=self.namespace
        )

    def value(self, key: str) -> bytes | None:
        try:
            return self.client.kv.namespaces.values.get(
                key, account_id=self.account, namespace_id=self.namespace
            ).read()
        except cloudflare.NotFoundError:
            return None

    def metadata(self, key: str) -> object:
        try:
            return self.client.kv.namespaces.metadata.get(
                key, account_id=self.account, namespace_id=self.namespace
            )
        except cloudflare.NotFoundError:
            return "absent"

    def bulk(self, key: str) -> object:
        result = self.client.kv.namespaces.bulk_get(
            self.namespace, account_id=self.account, keys=[key], with_metadata=True
        )
        assert result is not None
        entry = result.values[key]
        return None if entry is None else entry.to_dict()  # type: ignore[union-attr]

    def listed(self) -> dict[str, object]:
        keys = self.client.kv.namespaces.keys.list(
            self.namespace, account_id=self.account
        )
        return {k.name: k.metadata for k in keys}


@pytest.fixture
def view(server: EmulatorServer) -> View:
    client = sdk_client(server)
    namespace = client.kv.namespaces.create(account_id=server.account_id, title="s")
    return View(server, namespace.id)


def test_overwrite_shows_previous_state_until_stale_time(
    view: View, clock: Clock
) -> None:
    view.put("cfg/x", b"old", metadata={"v": 1})
    clock.now += 60
    view.put("cfg/x", b"new", metadata={"v": 2})

    clock.now += STALE_SECONDS - 0.5
    assert view.value("cfg/x") == b"old"
    assert view.metadata("cfg/x") == {"v": 1}
    assert view.bulk("cfg/x") == {"value": "old", "metadata": {"v": 1}}
    assert view.listed() == {"cfg/x": {"v": 1}}

    clock.now += 0.5
    assert view.value("cfg/x") == b"new"
    assert view.metadata("cfg/x") == {"v": 2}
    assert view.bulk("cfg/x") == {"value": "new", "metadata": {"v": 2}}
    assert view.listed() == {"cfg/x": {"v": 2}}


def test_new_key_stays_absent_until_stale_time(view: View, clock: Clock) -> None:
    view.put("fresh", b"v")

    assert view.value("fresh") is None
    assert view.metadata("fresh") == "absent"
    assert view.bulk("fresh") is None
    assert view.listed() == {}

    clock.now += STALE_SECONDS
    assert view.value("fresh") == b"v"
    assert view.listed() == {"fresh": None}


def test_deleted_key_stays_readable_until_stale_time(view: View, clock: Clock) -> None:
    expires = int(clock.now) + 3600
    view.put("gone", b"kept", metadata={"m": 1}, expiration=expires)
    clock.now += 60
    view.delete("gone")

    assert view.value("gone") == b"kept"
    assert view.bulk("gone") == {
        "value": "kept",
        "metadata": {"m": 1},
        "expiration": expires,
    }
    assert view.listed() == {"gone": {"m": 1}}

    clock.now += STALE_SECONDS
    assert view.value("gone") is None
    assert view.listed() == {}


def test_second_write_shows_state_before_it(view: View, clock: Clock) -> None:
    view.put("k", b"first")
    clock.now += 60
    view.put("k", b"second")
    clock.now += 1
    view.put("k", b"third")

    assert view.value("k") == b"second"
    clock.now += STALE_SECONDS
    assert view.value("k") == b"third"


def test_stale_reads_off_by_default(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path) as server:
        client = sdk_client(server)
        namespace = client.kv.namespaces.create(account_id=server.account_id, title="t")
        view = View(server, namespace.id)
        view.put("k", b"old")
        view.put("k", b"new")
        assert view.value("k") == b"new"
        view.delete("k")
        assert view.value("k") is None


def test_negative_stale_seconds_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stale_reads_seconds"):
        EmulatorServer(tmp_path, stale_reads_seconds=-1)


LAUNCHER = """
import typer
from kvsnap.cli.emulator import emulator
app = typer.Typer()
app.callback()(lambda: None)
app.command()(emulator)
app()
"""


def test_cli_stale_reads_flag(tmp_path: Path) -> None:
    command = [sys.executable, "-c", LAUNCHER, "emulator", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--stale-reads", "60"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(3)]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        headers = {"Authorization": f"Bearer {exports['CLOUDFLARE_API_TOKEN']}"}
        base = (
            f"{exports['CLOUDFLARE_BASE_URL']}/accounts/"
            f"{exports['CLOUDFLARE_ACCOUNT_ID']}/storage/kv/namespaces"
        )
        namespace = httpx.post(base, json={"title": "t"}, headers=headers).json()
        url = f"{base}/{namespace['result']['id']}/values/k"

        assert httpx.put(url, content=b"v", headers=headers).status_code == 200
        assert httpx.get(url, headers=headers).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_cli_rejects_negative_stale_reads(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "emulator", "--stale-reads", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--stale-reads" in done.stderr
