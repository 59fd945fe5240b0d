"""Request counters, the rate limit and added latency."""

from __future__ import annotations

import time
from pathlib import Path

import cloudflare
import httpx

from kvsnap.emulator import ENDPOINTS, EmulatorServer
from tests.emulator.helpers import error_code, sdk_client


def test_stats_count_every_endpoint_including_rejected_requests(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer
) -> None:
    account = emulator.account_id
    namespace = sdk.kv.namespaces.create(account_id=account, title="s").id
    sdk.kv.namespaces.values.update(
        "k", account_id=account, namespace_id=namespace, value=b"v"
    )
    sdk.kv.namespaces.values.get("k", account_id=account, namespace_id=namespace)
    sdk.kv.namespaces.bulk_get(namespace, account_id=account, keys=["k"])
    sdk.kv.namespaces.keys.list(namespace, account_id=account)
    httpx.get(f"{emulator.base_url}/accounts/{account}/storage/kv/namespaces")  # 401
    httpx.get(f"{emulator.base_url}/nowhere")

    stats = httpx.get(emulator.root_url + "/__emulator/stats").json()
    assert stats["total"] == 7
    assert stats["requests"] == {
        "POST namespaces": 1,
        "PUT values": 1,
        "GET values": 1,
        "POST bulk/get": 1,
        "GET keys": 1,
        "GET namespaces": 1,
        "other": 1,
    }
    assert stats["statuses"] == {"200": 5, "401": 2}
    assert set(stats["requests"]) <= {*ENDPOINTS, "other"}
    assert emulator.stats() == stats


def test_stats_reset(emulator: EmulatorServer, sdk: cloudflare.Cloudflare) -> None:
    list(sdk.kv.namespaces.list(account_id=emulator.account_id))
    assert emulator.stats()["total"] == 1

    reset = httpx.post(emulator.root_url + "/__emulator/stats/reset").json()
    assert reset == {"total": 0, "requests": {}, "statuses": {}, "faults": {}}

    list(sdk.kv.namespaces.list(account_id=emulator.account_id))
    emulator.reset_stats()
    assert emulator.stats()["total"] == 0


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, rate_limit=(5, 2.0)) as server:
        url = f"{server.base_url}/accounts/{server.account_id}/storage/kv/namespaces"
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(headers=headers) as client:
            statuses = [client.get(url).status_code for _ in range(5)]
            refused = client.get(url)
            assert statuses == [200] * 5
            assert refused.status_code == 429
            assert refused.headers["retry-after"] in ("1", "2")
            assert error_code(refused) == 971

            time.sleep(int(refused.headers["retry-after"]) + 0.1)
            assert client.get(url).status_code == 200
        assert server.stats()["statuses"] == {"200": 6, "429": 1}


def test_sdk_sees_rate_limit_error(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, rate_limit=(1, 300.0)) as server:
        client = sdk_client(server)
        list(client.kv.namespaces.list(account_id=server.account_id))
        try:
            client.kv.namespaces.list(account_id=server.account_id)
        except cloudflare.RateLimitError as exc:
            assert exc.response.headers["retry-after"] == "300"
        else:
            raise AssertionError("expected a 429")


def test_latency_is_added_per_request(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, latency_ms=(80.0, 80.0), seed=1) as server:
        url = f"{server.root_url}/client/v4/accounts/{server.account_id}"
        with httpx.Client() as client:
            client.get(url)  # warm the connection
            start = time.perf_counter()
            client.get(url)
            assert time.perf_counter() - start >= 0.08
