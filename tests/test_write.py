"""KvClient writes against the emulator: bulk write, bulk delete, namespaces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from kvsnap import limits
from kvsnap.batching import iter_batches
from kvsnap.cloudflare import KvClient
from kvsnap.emulator import EmulatorServer, Fault
from kvsnap.errors import ApiError, NamespaceNotFound, WriteFailed
from kvsnap.format import Record
from kvsnap.ratelimit import RetryPolicy
from tests.kvtools import create_namespace, sdk

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


def client_for(server: EmulatorServer, **options: Any) -> KvClient:
    return KvClient(
        api_token=server.token,
        account_id=server.account_id,
        base_url=server.base_url,
        **options,
    )


def run(
    server: EmulatorServer, action: Callable[[KvClient], Awaitable[Any]], **options: Any
) -> Any:
    async def main() -> Any:
        async with client_for(server, **options) as client:
            return await action(client)

    return asyncio.run(main())


def stored(server: EmulatorServer, namespace_id: str) -> dict[str, dict[str, Any]]:
    """Every live key with its raw value, metadata and expiration."""
    client = sdk(server)
    account = server.account_id
    found: dict[str, dict[str, Any]] = {}
    listing = httpx.get(
        f"{server.base_url}/accounts/{account}/storage/kv/namespaces/"
        f"{namespace_id}/keys",
        headers={"Authorization": f"Bearer {server.token}"},
    ).json()["result"]
    for entry in listing:
        value = client.kv.namespaces.values.get(
            entry["name"], account_id=account, namespace_id=namespace_id
        ).read()
        found[entry["name"]] = {"value": value} | {
            field: entry[field]
            for field in ("metadata", "expiration")
            if field in entry
        }
    return found


@pytest.fixture(autouse=True)
def quick_key_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resend failed keys after 50 ms, not after KV's 1 s per-key interval."""
    monkeypatch.setattr(limits, "KEY_WRITE_INTERVAL_SECONDS", 0.05)


# -- records map to items field for field ---------------------------


def test_bulk_write_stores_exact_bytes_and_metadata(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "restore")
    records = [
        Record("img/header", "iVBORw0KGgoAgP/+", True),
        Record("cfg/app", '{"hello":"world"}', metadata={"v": 2}),
        Record("cfg/plain", "no metadata"),
    ]

    run(emulator, lambda client: client.bulk_write(namespace_id, records))

    client = sdk(emulator)
    account = emulator.account_id
    header = client.kv.namespaces.values.get(
        "img/header", account_id=account, namespace_id=namespace_id
    ).read()
    assert header == bytes.fromhex("89504e470d0a1a0a0080fffe")
    app = client.kv.namespaces.values.get(
        "cfg/app", account_id=account, namespace_id=namespace_id
    ).read()
    assert app == b'{"hello":"world"}'
    metadata = client.kv.namespaces.metadata.get(
        "cfg/app", account_id=account, namespace_id=namespace_id
    )
    assert metadata == {"v": 2}
    keys = stored(emulator, namespace_id)
    assert keys["cfg/plain"] == {"value": b"no metadata"}
    assert "metadata" not in keys["img/header"]
    assert keys["cfg/app"]["metadata"] == {"v": 2}


def test_sent_body_size_equals_measured_size(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "sizes")
    records = [
        Record("q", '"quoted" \\ and \x01\x1f\n', metadata={"k": "\u00e9"}),
        Record("u", "caf\u00e9 \U0001f600", expiration=time.time() + 3600.5),
        Record("b", "AAEC", True),
    ]
    [batch] = iter_batches(records, now=time.time())
    sent: list[int] = []

    async def remember(request: httpx.Request) -> None:
        if request.method == "PUT":
            sent.append(len(request.content))

    hooks = httpx.AsyncClient(event_hooks={"request": [remember]})
    run(
        emulator,
        lambda client: client.bulk_write(namespace_id, batch.records),
        http_client=hooks,
    )

    assert sent == [batch.body_bytes]
    values = {
        key: entry["value"] for key, entry in stored(emulator, namespace_id).items()
    }
    assert values == {
        "q": b'"quoted" \\ and \x01\x1f\n',
        "u": "caf\u00e9 \U0001f600".encode(),
        "b": b"\x00\x01\x02",
    }


# -- unsuccessful keys are sent again, alone -----------------------------


def partial_success(unsuccessful: list[str], successful: int) -> Fault:
    body = msgspec.json.encode(
        {
            "success": True,
            "errors": [],
            "messages": [],
            "result": {
                "successful_key_count": successful,
                "unsuccessful_keys": unsuccessful,
            },
        }
    )
    return Fault(status=200, body=body)


def five_records() -> list[Record]:
    expires = int(time.time()) + 7200
    return [
        Record(f"r{i}", f"value {i}", metadata={"n": i}, expiration=expires + i)
        for i in range(1, 6)
    ]


def test_unsuccessful_keys_are_sent_again(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "partial")
    records = five_records()
    # The injected response replaces the first request, so nothing of it is
    # stored. Whatever is stored afterwards came from the second request.
    emulator.inject("PUT bulk", [partial_success(["r2", "r4"], 3)])
    emulator.reset_stats()

    async def write(client: KvClient) -> int:
        await client.bulk_write(namespace_id, records)
        return client.write_requests

    assert run(emulator, write, policy=FAST) == 2

    assert emulator.stats()["requests"] == {"PUT bulk": 2}
    assert stored(emulator, namespace_id) == {
        "r2": {
            "value": b"value 2",
            "metadata": {"n": 2},
            "expiration": records[1].expiration,
        },
        "r4": {
            "value": b"value 4",
            "metadata": {"n": 4},
            "expiration": records[3].expiration,
        },
    }


def test_keys_that_keep_failing_raise_write_failed(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "BULK_WRITE_MAX_KEY_RETRIES", 3)
    namespace_id = create_namespace(emulator, "failing")
    emulator.inject("PUT bulk", [partial_success(["r2", "r4"], 3)], repeat_last=True)
    emulator.reset_stats()

    with pytest.raises(WriteFailed) as caught:
        run(emulator, lambda c: c.bulk_write(namespace_id, five_records()), policy=FAST)

    assert caught.value.keys == ["r2", "r4"]
    assert "'r2', 'r4'" in str(caught.value)
    assert "after 3 retries" in str(caught.value)
    assert caught.value.exit_code == 12
    assert emulator.stats()["requests"] == {"PUT bulk": 4}


def test_rejected_bulk_write_names_its_keys(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "rejected")
    records = [Record("good", "v"), Record("past", "v", expiration=1_000_000)]

    with pytest.raises(WriteFailed) as caught:
        run(emulator, lambda c: c.bulk_write(namespace_id, records), policy=FAST)

    assert caught.value.keys == ["good", "past"]
    assert "HTTP 400" in str(caught.value)
    assert stored(emulator, namespace_id) == {}


# -- 429 and 5xx are retried --------------------------------------------------


def test_bulk_write_retries_429_and_5xx(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "flaky")
    records = [
        Record("text", "h\u00e9llo", metadata={"a": [1, 2]}),
        Record("bin", "//79", True),
        Record("ttl", "t", expiration=int(time.time()) + 3600),
    ]
    emulator.inject(
        "PUT bulk",
        [Fault(status=429, retry_after=0), Fault(status=500), Fault(status=503)],
    )
    emulator.reset_stats()

    async def write(client: KvClient) -> tuple[int, int]:
        await client.bulk_write(namespace_id, records)
        return client.write_requests, client.retries

    assert run(emulator, write, policy=FAST) == (4, 3)
    assert emulator.stats()["statuses"] == {"200": 1, "429": 1, "500": 1, "503": 1}
    assert stored(emulator, namespace_id) == {
        "bin": {"value": b"\xff\xfe\xfd"},
        "text": {"value": "h\u00e9llo".encode(), "metadata": {"a": [1, 2]}},
        "ttl": {"value": b"t", "expiration": records[2].expiration},
    }


def test_bulk_write_retried_after_timeout_is_idempotent(
    emulator: EmulatorServer,
) -> None:
    # The first response comes too late, so the client sends the same body
    # again, and a second run writes it a third time. Items carry absolute
    # expirations, never a TTL, so every write stores the same state.
    namespace_id = create_namespace(emulator, "slow")
    records = [Record("a", "1", expiration=int(time.time()) + 3600), Record("b", "2")]
    expected = {
        "a": {"value": b"1", "expiration": records[0].expiration},
        "b": {"value": b"2"},
    }
    emulator.inject("PUT bulk", [Fault(status=200, delay_ms=1500, body=b"{}")])

    async def write(client: KvClient) -> int:
        await client.bulk_write(namespace_id, records)
        return client.retries

    assert run(emulator, write, policy=FAST, timeout=0.5) == 1
    assert stored(emulator, namespace_id) == expected

    run(emulator, write, policy=FAST)
    assert stored(emulator, namespace_id) == expected


def test_bulk_write_rejects_more_than_10000_pairs(emulator: EmulatorServer) -> None:
    records = [Record(f"k{i}", "v") for i in range(10_001)]
    with pytest.raises(ValueError, match="at most 10000 pairs"):
        run(emulator, lambda c: c.bulk_write("0" * 32, records))


def test_bulk_write_to_missing_namespace(emulator: EmulatorServer) -> None:
    with pytest.raises(NamespaceNotFound):
        run(emulator, lambda c: c.bulk_write("0" * 32, [Record("k", "v")]))


# -- bulk delete -------------------------------------------------------------------


def test_bulk_delete_in_chunks_of_10000(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "deletes")
    keys = [f"k{i:05d}" for i in range(10_005)]

    async def fill_and_delete(client: KvClient) -> None:
        await client.bulk_write(namespace_id, [Record(k, "v") for k in keys[:10_000]])
        await client.bulk_write(namespace_id, [Record(k, "v") for k in keys[10_000:]])
        emulator.reset_stats()
        await client.bulk_delete(namespace_id, iter(keys[2:]))

    run(emulator, fill_and_delete)

    assert emulator.stats()["requests"] == {"POST bulk/delete": 2}
    assert sorted(stored(emulator, namespace_id)) == keys[:2]


def test_bulk_delete_sends_unsuccessful_keys_again(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "partial-delete")
    run(emulator, lambda c: c.bulk_write(namespace_id, five_records()))
    emulator.inject("POST bulk/delete", [partial_success(["r3"], 4)])
    emulator.reset_stats()

    run(emulator, lambda c: c.bulk_delete(namespace_id, ["r1", "r3"]), policy=FAST)

    assert emulator.stats()["requests"] == {"POST bulk/delete": 2}
    # The injected response replaced the first request, so only r3 was deleted.
    assert sorted(stored(emulator, namespace_id)) == ["r1", "r2", "r4", "r5"]


# -- namespaces -------------------------------------------------------------------


def test_create_and_get_namespace(emulator: EmulatorServer) -> None:
    async def create_then_get(client: KvClient) -> tuple[Any, Any, int]:
        created = await client.create_namespace("restored")
        fetched = await client.get_namespace(created.id)
        return created, fetched, client.write_requests

    created, fetched, writes = run(emulator, create_then_get)

    assert created.title == "restored"
    assert len(created.id) == 32
    assert fetched == created
    assert writes == 1


def test_get_unknown_namespace(emulator: EmulatorServer) -> None:
    with pytest.raises(NamespaceNotFound, match=r"0{32}"):
        run(emulator, lambda c: c.get_namespace("0" * 32))


def test_create_namespace_with_taken_title(emulator: EmulatorServer) -> None:
    create_namespace(emulator, "taken")
    with pytest.raises(ApiError, match="code 10014") as caught:
        run(emulator, lambda c: c.create_namespace("taken"))
    assert caught.value.hint is not None
