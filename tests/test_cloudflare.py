"""Namespace resolution by id or title, and the key-list guards of KvClient."""

from __future__ import annotations

import asyncio

import pytest

from kvsnap.cloudflare import KvClient, Namespace, resolve_namespace
from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.faults import Fault
from kvsnap.errors import ApiError, NamespaceNotFound
from kvsnap.ratelimit import RetryPolicy
from kvsnap.seed import SeedEntry
from tests.kvtools import create_namespace

CACHE = Namespace("0123456789abcdef0123456789abcdef", "app-CACHE")
TITLED_LIKE_ID = Namespace(
    "fedcba9876543210fedcba9876543210", "0123456789abcdef0123456789abcdef"
)
AVAILABLE = [CACHE, TITLED_LIKE_ID]


def test_resolve_by_title_and_id() -> None:
    assert resolve_namespace("app-CACHE", AVAILABLE) == CACHE
    assert (
        resolve_namespace("fedcba9876543210fedcba9876543210", AVAILABLE)
        == TITLED_LIKE_ID
    )


def test_resolve_id_equal_to_other_title_is_ambiguous() -> None:
    with pytest.raises(NamespaceNotFound) as caught:
        resolve_namespace(CACHE.id, AVAILABLE)

    message = str(caught.value)
    assert "ambiguous" in message
    assert CACHE.id in message
    assert TITLED_LIKE_ID.id in message
    assert f"id:{CACHE.id}" in (caught.value.hint or "")


def test_resolve_explicit_field() -> None:
    assert resolve_namespace(f"id:{CACHE.id}", AVAILABLE) == CACHE
    assert resolve_namespace(f"title:{CACHE.id}", AVAILABLE) == TITLED_LIKE_ID


def test_resolve_unknown_lists_candidates() -> None:
    with pytest.raises(NamespaceNotFound) as caught:
        resolve_namespace("app-cache", AVAILABLE)

    assert "'app-CACHE'" in str(caught.value)
    assert "app-CACHE (0123456789abcdef0123456789abcdef)" in (caught.value.hint or "")


def test_resolve_is_case_sensitive() -> None:
    with pytest.raises(NamespaceNotFound):
        resolve_namespace("APP-CACHE", [CACHE])


def client_for(server: EmulatorServer, **options) -> KvClient:
    return KvClient(
        api_token=server.token,
        account_id=server.account_id,
        base_url=server.base_url,
        **options,
    )


def test_repeated_cursor_is_an_error(emulator: EmulatorServer) -> None:
    body = (
        b'{"success":true,"errors":[],"messages":[],'
        b'"result":[{"name":"a"}],"result_info":{"count":1,"cursor":"same"}}'
    )
    emulator.inject("GET keys", [Fault(status=200, body=body)], repeat_last=True)

    async def list_all() -> None:
        async with client_for(emulator) as client:
            async for _ in client.iter_key_pages("0" * 32):
                pass

    with pytest.raises(ApiError, match="twice"):
        asyncio.run(list_all())


def test_empty_page_with_cursor_continues(emulator: EmulatorServer) -> None:
    empty = (
        b'{"success":true,"errors":[],"messages":[],'
        b'"result":[],"result_info":{"count":0,"cursor":"next-page"}}'
    )
    last = (
        b'{"success":true,"errors":[],"messages":[],'
        b'"result":[{"name":"z"}],"result_info":{"count":1,"cursor":""}}'
    )
    emulator.inject(
        "GET keys", [Fault(status=200, body=empty), Fault(status=200, body=last)]
    )

    async def list_all() -> list[list[str]]:
        async with client_for(emulator) as client:
            return [
                [k.name for k in page] async for page in client.iter_key_pages("0" * 32)
            ]

    assert asyncio.run(list_all()) == [[], ["z"]]


def test_error_body_never_becomes_value(emulator: EmulatorServer) -> None:
    # A 429 body on a raw value read must be retried, not returned as the value.
    namespace_id = create_namespace(emulator, "ns", [SeedEntry("bin", b"\xff\x00")])
    emulator.inject("GET values", [Fault(status=429, retry_after=0)])

    async def read() -> tuple[bytes, str | None] | None:
        async with client_for(emulator) as client:
            return await client.get_value(namespace_id, "bin")

    assert asyncio.run(read()) == (b"\xff\x00", None)


def test_last_page_without_cursor_ends(emulator: EmulatorServer) -> None:
    first = (
        b'{"success":true,"errors":[],"messages":[],'
        b'"result":[{"name":"a"}],"result_info":{"count":1,"cursor":"c1"}}'
    )
    last = b'{"success":true,"errors":[],"messages":[],"result":[{"name":"b"}]}'
    emulator.inject(
        "GET keys", [Fault(status=200, body=first), Fault(status=200, body=last)]
    )

    async def list_all() -> list[list[str]]:
        async with client_for(emulator) as client:
            return [
                [k.name for k in page] async for page in client.iter_key_pages("0" * 32)
            ]

    assert asyncio.run(list_all()) == [["a"], ["b"]]


def test_timeout_is_retried(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "slow", [SeedEntry("k", b"value")])
    emulator.inject("GET values", [Fault(status=200, delay_ms=1500, body=b"late")])

    async def read() -> tuple[bytes, str | None] | None:
        async with client_for(emulator, timeout=0.5) as client:
            found = await client.get_value(namespace_id, "k")
            assert client.retries == 1
            return found

    assert asyncio.run(read()) == (b"value", None)


def test_retries_exhausted_names_last_error(emulator: EmulatorServer) -> None:
    namespace_id = create_namespace(emulator, "down", [SeedEntry("k", b"value")])
    emulator.inject("GET values", [Fault(status=503)], repeat_last=True)

    async def read() -> None:
        async with client_for(emulator, policy=RetryPolicy(max_attempts=3)) as client:
            await client.get_value(namespace_id, "k")

    with pytest.raises(ApiError, match="failed after 3 attempts: HTTP 503"):
        asyncio.run(read())


def create(server: EmulatorServer, title: str) -> Namespace:
    async def send() -> Namespace:
        async with client_for(server, policy=RetryPolicy(max_attempts=3)) as client:
            return await client.create_namespace(title)

    return asyncio.run(send())


def test_create_after_lost_answer_takes_the_created_namespace(
    emulator: EmulatorServer,
) -> None:
    emulator.inject("POST namespaces", [Fault(pass_through=True, truncate=True)])

    created = create(emulator, "copy")

    assert created.title == "copy"
    requests = emulator.stats()["requests"]
    assert requests["POST namespaces"] == 2


def test_create_retry_never_takes_a_namespace_holding_keys(
    emulator: EmulatorServer,
) -> None:
    # The first attempt fails before creating anything; the title is already
    # taken by a namespace with data, which must not pass as this call's own.
    create_namespace(emulator, "copy", [SeedEntry("k", b"v")])
    emulator.inject("POST namespaces", [Fault(status=503)])

    with pytest.raises(ApiError, match="copy"):
        create(emulator, "copy")


def test_create_without_retry_never_takes_a_taken_title(
    emulator: EmulatorServer,
) -> None:
    create_namespace(emulator, "copy")

    with pytest.raises(ApiError, match="code 10014"):
        create(emulator, "copy")


def test_create_failing_hints_possible_namespace(
    emulator: EmulatorServer,
) -> None:
    lost = Fault(pass_through=True, truncate=True)
    emulator.inject("POST namespaces", [lost, Fault(status=503), Fault(status=503)])

    with pytest.raises(ApiError, match="failed after 3 attempts") as caught:
        create(emulator, "copy")

    assert "may have created the namespace 'copy'" in (caught.value.hint or "")
