"""Scripted faults: status answers, Retry-After, dropped and cut connections."""

from __future__ import annotations

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer, Fault
from tests.emulator.helpers import error_code, sdk_client


def bulk_get_url(server: EmulatorServer, namespace: str) -> str:
    return (
        f"{server.base_url}/accounts/{server.account_id}/storage/kv/namespaces/"
        f"{namespace}/bulk/get"
    )


@pytest.fixture
def client(emulator: EmulatorServer) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {emulator.token}"})


def test_429_storm_with_retry_after_then_recovery(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("POST bulk/get", [Fault(status=429, retry_after=7)] * 3)
    url = bulk_get_url(emulator, namespace)

    answers = [client.post(url, json={"keys": ["k"]}) for _ in range(4)]

    for refused in answers[:3]:
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert error_code(refused) == 971
    assert answers[3].status_code == 200
    assert emulator.faults_fired == 3


def test_500_then_success_through_sdk_retries(
    emulator: EmulatorServer, namespace: str
) -> None:
    emulator.inject("POST bulk/get", [Fault(status=500, retry_after=0.01)])
    client = sdk_client(emulator, max_retries=1)
    emulator.reset_stats()

    result = client.kv.namespaces.bulk_get(
        namespace, account_id=emulator.account_id, keys=["k"]
    )

    assert result is not None and result.values == {"k": None}
    assert emulator.stats()["requests"] == {"POST bulk/get": 2}
    assert emulator.stats()["statuses"] == {"200": 1, "500": 1}


def test_fails_forever_after_the_third_request(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("POST bulk/get", [Fault(status=500)], after=3, repeat_last=True)
    url = bulk_get_url(emulator, namespace)

    statuses = [client.post(url, json={"keys": ["k"]}).status_code for _ in range(8)]

    assert statuses == [200, 200, 200] + [500] * 5
    # Other endpoints are untouched.
    assert client.get(url.replace("/bulk/get", "/keys")).status_code == 200


def test_none_lets_a_request_through_and_scripts_are_per_endpoint(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("GET keys", [None, Fault(status=503)])
    keys = bulk_get_url(emulator, namespace).replace("/bulk/get", "/keys")

    assert [client.get(keys).status_code for _ in range(3)] == [200, 503, 200]


def test_wildcard_script_matches_every_endpoint(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("*", [Fault(status=502), Fault(status=503)])
    url = bulk_get_url(emulator, namespace)
    assert client.get(url.replace("/bulk/get", "/keys")).status_code == 502
    assert client.post(url, json={"keys": []}).status_code == 503
    emulator.inject("*", [Fault(status=500)], repeat_last=True)
    emulator.clear_faults()
    assert client.post(url, json={"keys": []}).status_code == 200


def test_dropped_connection(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("POST bulk/get", [Fault(drop=True)])
    emulator.reset_stats()
    url = bulk_get_url(emulator, namespace)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json={"keys": ["k"]})
    assert client.post(url, json={"keys": ["k"]}).status_code == 200
    assert emulator.stats()["statuses"] == {"200": 1, "drop": 1}


def test_dropped_connection_is_a_connection_error_for_the_sdk(
    emulator: EmulatorServer, namespace: str
) -> None:
    emulator.inject("GET keys", [Fault(drop=True)])
    client = sdk_client(emulator)
    with pytest.raises(cloudflare.APIConnectionError):
        client.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)


def test_truncated_body(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject(
        "POST bulk/get", [Fault(status=200, body=b'{"success": true}', truncate=True)]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(bulk_get_url(emulator, namespace), json={"keys": ["k"]})


def test_fault_with_delay(
    emulator: EmulatorServer, namespace: str, client: httpx.Client
) -> None:
    emulator.inject("POST bulk/get", [Fault(status=504, delay_ms=300)])
    with pytest.raises(httpx.ReadTimeout):
        client.post(bulk_get_url(emulator, namespace), json={"keys": []}, timeout=0.1)
