"""Authentication, accounts, unknown routes and the control endpoints."""

from __future__ import annotations

from pathlib import Path

import cloudflare
import httpx
import pytest

from kvsnap.emulator import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN, EmulatorServer
from tests.emulator.helpers import error_code


def namespaces_url(server: EmulatorServer, account: str | None = None) -> str:
    account = account or server.account_id
    return f"{server.base_url}/accounts/{account}/storage/kv/namespaces"


def test_defaults_are_the_documented_constants(emulator: EmulatorServer) -> None:
    assert emulator.account_id == DEFAULT_ACCOUNT_ID
    assert len(DEFAULT_ACCOUNT_ID) == 32
    int(DEFAULT_ACCOUNT_ID, 16)
    assert emulator.token == DEFAULT_TOKEN
    assert emulator.base_url == f"http://127.0.0.1:{emulator.port}/client/v4"
    assert emulator.root_url == f"http://127.0.0.1:{emulator.port}"


def test_missing_token_is_401_10000(emulator: EmulatorServer) -> None:
    response = httpx.get(namespaces_url(emulator))
    assert response.status_code == 401
    assert error_code(response) == 10000


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic abc", "Bearer"])
def test_wrong_token_is_rejected(emulator: EmulatorServer, header: str) -> None:
    response = httpx.get(namespaces_url(emulator), headers={"Authorization": header})
    assert response.status_code == (403 if header == "Bearer wrong" else 401)
    assert error_code(response) == 10000


def test_sdk_maps_auth_failures(emulator: EmulatorServer) -> None:
    client = cloudflare.Cloudflare(
        api_token="not-the-token", base_url=emulator.base_url, max_retries=0
    )
    with pytest.raises(cloudflare.PermissionDeniedError) as caught:
        client.kv.namespaces.list(account_id=emulator.account_id)
    assert caught.value.errors[0].code == 10000


def test_given_accounts_and_tokens_replace_the_defaults(tmp_path: Path) -> None:
    accounts, tokens = ["1" * 32, "2" * 32], ["tok-a", "tok-b"]
    with EmulatorServer(tmp_path, accounts=accounts, tokens=tokens) as server:
        assert server.account_id == accounts[0]
        assert server.token == "tok-a"
        for account in accounts:
            for token in tokens:
                response = httpx.get(
                    namespaces_url(server, account),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200
        response = httpx.get(
            namespaces_url(server), headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        )
        assert response.status_code == 403


def test_unknown_account_is_403_and_malformed_account_is_404(
    emulator: EmulatorServer,
) -> None:
    headers = {"Authorization": f"Bearer {emulator.token}"}
    unknown = httpx.get(namespaces_url(emulator, "f" * 32), headers=headers)
    assert unknown.status_code == 403
    assert error_code(unknown) == 10000

    malformed = httpx.get(namespaces_url(emulator, "not-an-id"), headers=headers)
    assert malformed.status_code == 404
    assert error_code(malformed) == 7003


@pytest.mark.parametrize(
    "path",
    ["/zones", "/accounts/x/storage/kv", "/accounts/{a}/storage/kv/namespaces/n/nope"],
)
def test_unknown_route_is_404_7003(emulator: EmulatorServer, path: str) -> None:
    url = emulator.base_url + path.replace("{a}", emulator.account_id)
    response = httpx.get(url, headers={"Authorization": f"Bearer {emulator.token}"})
    assert response.status_code == 404
    assert error_code(response) == 7003


def test_wrong_method_is_405(emulator: EmulatorServer) -> None:
    response = httpx.patch(
        namespaces_url(emulator) + "/n/bulk",
        headers={"Authorization": f"Bearer {emulator.token}"},
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "PUT, DELETE"
    assert error_code(response) == 7001


def test_paths_outside_the_api_are_404(emulator: EmulatorServer) -> None:
    response = httpx.get(emulator.root_url + "/elsewhere")
    assert response.status_code == 404
    assert emulator.stats()["total"] == 0  # not an API request


def test_health_endpoint(emulator: EmulatorServer) -> None:
    assert httpx.get(emulator.root_url + "/__emulator/health").json() == {"ok": True}
