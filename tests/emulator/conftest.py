"""Clients for talking to the emulator: the official SDK and raw httpx."""

from __future__ import annotations

from collections.abc import Iterator

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from tests.emulator.helpers import sdk_client


@pytest.fixture
def sdk(emulator: EmulatorServer) -> Iterator[cloudflare.Cloudflare]:
    client = sdk_client(emulator)
    yield client
    client.close()


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """httpx with the token, based at .../accounts/{account}/storage/kv."""
    with httpx.Client(
        base_url=f"{emulator.base_url}/accounts/{emulator.account_id}/storage/kv",
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=60,
    ) as client:
        yield client


@pytest.fixture
def namespace(sdk: cloudflare.Cloudflare, emulator: EmulatorServer) -> str:
    """The id of a fresh, empty namespace."""
    return sdk.kv.namespaces.create(account_id=emulator.account_id, title="test").id
