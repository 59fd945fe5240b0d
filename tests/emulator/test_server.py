"""Server life cycle: persistence across restarts, concurrency, stop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from tests.emulator.helpers import sdk_client


def test_data_persists_across_restart(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path) as first:
        client = sdk_client(first)
        namespace = client.kv.namespaces.create(
            account_id=first.account_id, title="kept"
        ).id
        client.kv.namespaces.values.update(
            "k",
            account_id=first.account_id,
            namespace_id=namespace,
            value=b"\x00kept\xff",
            metadata={"m": 1},
        )
    assert (tmp_path / "kv.sqlite3").exists()

    with EmulatorServer(tmp_path) as second:
        client = sdk_client(second)
        [listed] = client.kv.namespaces.list(account_id=second.account_id)
        assert (listed.id, listed.title) == (namespace, "kept")
        value = client.kv.namespaces.values.get(
            "k", account_id=second.account_id, namespace_id=namespace
        )
        assert value.read() == b"\x00kept\xff"


def test_stop_is_idempotent_and_start_again_serves(tmp_path: Path) -> None:
    server = EmulatorServer(tmp_path).start()
    server.stop()
    server.stop()
    server.port = 0
    server.start()
    try:
        assert httpx.get(server.root_url + "/__emulator/health").status_code == 200
    finally:
        server.stop()


def test_stop_closes_kept_alive_connections(tmp_path: Path) -> None:
    server = EmulatorServer(tmp_path).start()
    with httpx.Client() as client:
        assert client.get(server.root_url + "/__emulator/health").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get(server.root_url + "/__emulator/health")


def test_concurrent_writers_and_readers(
    emulator: EmulatorServer, namespace: str
) -> None:
    base = (
        f"{emulator.base_url}/accounts/{emulator.account_id}/storage/kv/namespaces/"
        f"{namespace}"
    )
    headers = {"Authorization": f"Bearer {emulator.token}"}

    def work(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(headers=headers) as client:
            for i in range(40):
                key = f"w{worker}-{i}"
                statuses.append(
                    client.put(f"{base}/values/{key}", content=b"v").status_code
                )
                statuses.append(client.get(f"{base}/values/{key}").status_code)
                pairs = [{"key": f"{key}-{j}", "value": "v"} for j in range(20)]
                statuses.append(client.put(f"{base}/bulk", json=pairs).status_code)
                statuses.append(client.get(f"{base}/keys").status_code)
        return statuses

    with ThreadPoolExecutor(8) as pool:
        results = [s for statuses in pool.map(work, range(8)) for s in statuses]

    assert set(results) == {200}
    listed = httpx.get(f"{base}/keys", headers=headers).json()
    assert listed["result_info"]["count"] == 1000  # 8 * 40 * 21 = 6720 keys in all
