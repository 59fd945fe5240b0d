"""Single-key endpoints: write, read, metadata, delete, and their limits."""

from __future__ import annotations

import time

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.limits import MAX_VALUE_BYTES
from tests.emulator.helpers import error_code, key_path, raw_request

# Keys that need percent-encoding in a path, or that a careless server
# decodes twice or turns into something else.
AWKWARD_KEYS = [
    "with space",
    "slash/inside/",
    "/leading-slash",
    "percent%",
    "percent%25encoded",
    "plus+sign",
    "hash#tag",
    "question?mark=1&b=2",
    "emoji-\U0001f600",
    "caf\u00e9",
    "colon:at@bang!",
    "...",
    ".hidden",
    "back\\slash",
    "tab\tand\nnewline",
]


def put(
    sdk: cloudflare.Cloudflare,
    server: EmulatorServer,
    namespace: str,
    key: str,
    value: bytes,
    **options: object,
) -> None:
    sdk.kv.namespaces.values.update(
        key,
        account_id=server.account_id,
        namespace_id=namespace,
        value=value,
        **options,  # type: ignore[arg-type]
    )


def get(
    sdk: cloudflare.Cloudflare, server: EmulatorServer, namespace: str, key: str
) -> bytes:
    response = sdk.kv.namespaces.values.get(
        key, account_id=server.account_id, namespace_id=namespace
    )
    return response.read()


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_key_round_trips_through_sdk_encoding(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str, key: str
) -> None:
    put(sdk, emulator, namespace, key, key.encode())

    assert get(sdk, emulator, namespace, key) == key.encode()
    listed = sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)
    assert [k.name for k in listed] == [key]

    sdk.kv.namespaces.values.delete(
        key, account_id=emulator.account_id, namespace_id=namespace
    )
    assert (
        list(sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id))
        == []
    )


def test_key_path_is_decoded_exactly_once(http: httpx.Client, namespace: str) -> None:
    # %2541 must be stored as "%41", not decoded again to "A"; + stays +.
    assert http.put(f"namespaces/{namespace}/values/%2541+b", content=b"v").is_success
    keys = http.get(f"namespaces/{namespace}/keys").json()["result"]
    assert [k["name"] for k in keys] == ["%41+b"]


def test_binary_value_is_byte_exact(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    value = bytes(range(256)) * 64 + b"\r\n--boundary\r\n\x00"
    put(sdk, emulator, namespace, "bin", value)
    assert get(sdk, emulator, namespace, "bin") == value


def test_raw_body_write_and_octet_stream_read(
    http: httpx.Client, namespace: str
) -> None:
    path = key_path(namespace, "raw")
    written = http.put(
        path,
        content=b"\xff\xfe raw",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert written.json() == {
        "success": True,
        "errors": [],
        "messages": [],
        "result": None,
    }

    read = http.get(path)
    assert read.status_code == 200
    assert read.headers["content-type"] == "application/octet-stream"
    assert read.content == b"\xff\xfe raw"
    assert "expiration" not in read.headers


def test_overwrite_replaces_value_metadata_and_expiration(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    put(sdk, emulator, namespace, "k", b"1", metadata={"a": 1}, expiration_ttl=300)
    put(sdk, emulator, namespace, "k", b"2")

    assert get(sdk, emulator, namespace, "k") == b"2"
    [key] = sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)
    assert key.expiration is None
    assert key.metadata is None


def test_metadata_endpoint_returns_metadata_or_null(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    put(sdk, emulator, namespace, "with", b"v", metadata={"owner": "ops", "n": [1, 2]})
    put(sdk, emulator, namespace, "without", b"v")
    account = emulator.account_id

    assert sdk.kv.namespaces.metadata.get(
        "with", account_id=account, namespace_id=namespace
    ) == {"owner": "ops", "n": [1, 2]}
    assert (
        sdk.kv.namespaces.metadata.get(
            "without", account_id=account, namespace_id=namespace
        )
        is None
    )


def test_missing_key_is_404_10009(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    account = emulator.account_id
    with pytest.raises(cloudflare.NotFoundError) as caught:
        sdk.kv.namespaces.values.get("nope", account_id=account, namespace_id=namespace)
    assert caught.value.errors[0].code == 10009
    with pytest.raises(cloudflare.NotFoundError) as caught:
        sdk.kv.namespaces.metadata.get(
            "nope", account_id=account, namespace_id=namespace
        )
    assert caught.value.errors[0].code == 10009


def test_delete_of_missing_key_succeeds(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    sdk.kv.namespaces.values.delete(
        "never-written", account_id=emulator.account_id, namespace_id=namespace
    )


def test_unknown_namespace_is_404_10013(http: httpx.Client) -> None:
    response = http.get(key_path("0" * 32, "k"))
    assert response.status_code == 404
    assert error_code(response) == 10013


# -- limits ----------------------------------------------------------------


def test_key_of_512_bytes_is_accepted_and_513_rejected(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    key = "\u00e9" * 256  # 512 UTF-8 bytes
    put(sdk, emulator, namespace, key, b"ok")
    assert get(sdk, emulator, namespace, key) == b"ok"

    with pytest.raises(cloudflare.APIStatusError) as caught:
        put(sdk, emulator, namespace, key + "x", b"too long")
    assert caught.value.status_code == 414
    assert caught.value.errors[0].code == 10022


@pytest.mark.parametrize("segment", [".", "..", "%2E", "%2e%2E"])
def test_dot_keys_are_rejected(
    emulator: EmulatorServer, namespace: str, segment: str
) -> None:
    # The SDK refuses these path segments itself, so raw HTTP it is.
    path = f"/accounts/{emulator.account_id}/storage/kv/namespaces/{namespace}"
    for method, kind in (("PUT", "values"), ("GET", "values"), ("GET", "metadata")):
        status, document = raw_request(
            emulator, method, f"{path}/{kind}/{segment}", b"v"
        )
        assert status == 400, (method, document)
        assert document["errors"][0]["code"] == 10020


def test_key_that_is_not_utf8_is_rejected(http: httpx.Client, namespace: str) -> None:
    response = http.put(f"namespaces/{namespace}/values/%FF%FE", content=b"v")
    assert response.status_code == 400
    assert error_code(response) == 10020


def test_value_of_exactly_25_mib_is_accepted_and_one_more_byte_rejected(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    value = b"\xab" * MAX_VALUE_BYTES
    put(sdk, emulator, namespace, "big", value)
    assert get(sdk, emulator, namespace, "big") == value

    with pytest.raises(cloudflare.APIStatusError) as caught:
        put(sdk, emulator, namespace, "bigger", value + b"!")
    assert caught.value.status_code == 413
    assert caught.value.errors[0].code == 10024


def test_raw_value_over_25_mib_is_413(http: httpx.Client, namespace: str) -> None:
    response = http.put(key_path(namespace, "k"), content=b"x" * (MAX_VALUE_BYTES + 1))
    assert response.status_code == 413
    assert error_code(response) == 10024


def test_metadata_of_1024_bytes_is_accepted_and_1025_rejected(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    # {"m":"..."} is 8 bytes around the string, measured without whitespace
    # (the SDK sends '{"m": "..."}', one byte more, and that must not count).
    fits = {"m": "x" * 1016}
    put(sdk, emulator, namespace, "k", b"v", metadata=fits)
    assert (
        sdk.kv.namespaces.metadata.get(
            "k", account_id=emulator.account_id, namespace_id=namespace
        )
        == fits
    )

    with pytest.raises(cloudflare.APIStatusError) as caught:
        put(sdk, emulator, namespace, "k", b"v", metadata={"m": "x" * 1017})
    assert caught.value.status_code == 413
    assert caught.value.errors[0].code == 10025


def test_metadata_that_is_not_json_is_rejected(
    http: httpx.Client, namespace: str
) -> None:
    response = http.put(
        key_path(namespace, "k"),
        files={"value": ("v", b"v"), "metadata": (None, "{broken")},
    )
    assert response.status_code == 400
    assert error_code(response) == 10026


def test_multipart_without_value_part_is_rejected(
    http: httpx.Client, namespace: str
) -> None:
    response = http.put(key_path(namespace, "k"), files={"metadata": (None, "{}")})
    assert response.status_code == 400
    assert error_code(response) == 10001


def test_expiration_30s_ahead_is_rejected_and_120s_accepted(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    now = time.time()
    with pytest.raises(cloudflare.BadRequestError) as caught:
        put(sdk, emulator, namespace, "k", b"v", expiration=int(now + 30))
    assert caught.value.errors[0].code == 10033

    put(sdk, emulator, namespace, "k", b"v", expiration=int(now + 120))
    response = sdk.kv.namespaces.values.with_raw_response.get(
        "k", account_id=emulator.account_id, namespace_id=namespace
    )
    assert response.headers["expiration"] == str(int(now + 120))


def test_expiration_ttl_under_60_is_rejected_and_wins_over_expiration(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    with pytest.raises(cloudflare.BadRequestError) as caught:
        put(sdk, emulator, namespace, "k", b"v", expiration_ttl=59)
    assert caught.value.errors[0].code == 10034

    now = int(time.time())
    put(sdk, emulator, namespace, "k", b"v", expiration=now + 10_000, expiration_ttl=60)
    [key] = sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)
    assert key.expiration is not None and now + 60 <= key.expiration <= now + 62


@pytest.mark.parametrize("query", ["expiration=soon", "expiration_ttl=nan"])
def test_expiration_that_is_not_a_number_is_rejected(
    http: httpx.Client, namespace: str, query: str
) -> None:
    response = http.put(f"{key_path(namespace, 'k')}?{query}", content=b"v")
    assert response.status_code == 400
    assert error_code(response) in (10033, 10034)


def test_expired_key_disappears_from_every_read(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    account = emulator.account_id
    put(sdk, emulator, namespace, "short", b"v", expiration_ttl=120)
    put(sdk, emulator, namespace, "long", b"v")
    start = time.time()

    emulator.clock = lambda: start + 121

    with pytest.raises(cloudflare.NotFoundError):
        get(sdk, emulator, namespace, "short")
    with pytest.raises(cloudflare.NotFoundError):
        sdk.kv.namespaces.metadata.get(
            "short", account_id=account, namespace_id=namespace
        )
    names = [k.name for k in sdk.kv.namespaces.keys.list(namespace, account_id=account)]
    assert names == ["long"]
    got = sdk.kv.namespaces.bulk_get(
        namespace, account_id=account, keys=["short", "long"]
    )
    assert got is not None and got.values == {"short": None, "long": "v"}
