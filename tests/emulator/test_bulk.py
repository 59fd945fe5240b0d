"""Bulk write, bulk delete (both routes) and bulk get."""

from __future__ import annotations

import base64
import time

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.limits import BULK_WRITE_MAX_BYTES, MAX_VALUE_BYTES
from tests.emulator.helpers import error_code, sdk_client


def keys_of(sdk: cloudflare.Cloudflare, server: EmulatorServer, namespace: str) -> list:
    listed = sdk.kv.namespaces.keys.list(namespace, account_id=server.account_id)
    return [k.name for k in listed]


# -- bulk write --------------------------------------------------------------


def test_bulk_write_stores_text_base64_metadata_and_expiration(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    binary = b"\x00\xff\xfe binary"
    now = int(time.time())
    result = sdk.kv.namespaces.bulk_update(
        namespace,
        account_id=emulator.account_id,
        body=[
            {"key": "text", "value": "h\u00e9llo"},
            {"key": "bin", "value": base64.b64encode(binary).decode(), "base64": True},
            {"key": "meta", "value": "m", "metadata": {"tags": ["a"]}},
            {"key": "abs", "value": "e", "expiration": now + 3600},
            {"key": "ttl", "value": "t", "expiration_ttl": 120},
        ],
    )
    assert result is not None
    assert result.successful_key_count == 5
    assert result.unsuccessful_keys == []

    def value(key: str) -> bytes:
        return sdk.kv.namespaces.values.get(
            key, account_id=emulator.account_id, namespace_id=namespace
        ).read()

    assert value("text") == "h\u00e9llo".encode()
    assert value("bin") == binary
    listed = {
        k.name: k
        for k in sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)
    }
    assert listed["meta"].metadata == {"tags": ["a"]}
    assert listed["abs"].expiration == now + 3600
    assert listed["ttl"].expiration is not None
    assert now + 119 <= listed["ttl"].expiration <= now + 122


def test_bulk_write_of_10000_pairs_is_accepted_and_10001_rejected(
    http: httpx.Client, namespace: str
) -> None:
    pairs = [{"key": f"k{i:05d}", "value": "v"} for i in range(10_000)]
    response = http.put(f"namespaces/{namespace}/bulk", json=pairs)
    assert response.json()["result"]["successful_key_count"] == 10_000

    response = http.put(
        f"namespaces/{namespace}/bulk", json=[*pairs, {"key": "x", "value": "v"}]
    )
    assert response.status_code == 400
    assert error_code(response) == 10030


def test_bulk_write_body_over_100_mb_is_413(http: httpx.Client, namespace: str) -> None:
    body = b"[" + b" " * BULK_WRITE_MAX_BYTES + b"]"
    response = http.put(
        f"namespaces/{namespace}/bulk",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert error_code(response) == 10031
    # The connection is still usable afterwards.
    assert http.get(f"namespaces/{namespace}/keys").status_code == 200


@pytest.mark.parametrize(
    ("item", "status", "code"),
    [
        ({"key": "", "value": "v"}, 400, 10020),
        ({"key": "..", "value": "v"}, 400, 10020),
        ({"key": "k" * 513, "value": "v"}, 414, 10022),
        ({"key": "k", "value": 5}, 400, 10001),
        ({"key": "k"}, 400, 10001),
        ({"key": "k", "value": "not base64!", "base64": True}, 400, 10001),
        ({"key": "k", "value": "v", "expiration_ttl": 30}, 400, 10034),
        ({"key": "k", "value": "v", "expiration": 1}, 400, 10033),
        ({"key": "k", "value": "v", "metadata": {"m": "x" * 1017}}, 413, 10025),
        ({"key": "k", "value": "x" * (MAX_VALUE_BYTES + 1)}, 413, 10024),
    ],
)
def test_one_bad_item_fails_the_whole_bulk_write(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
    item: dict,
    status: int,
    code: int,
) -> None:
    body = [{"key": "good-1", "value": "v"}, item, {"key": "good-2", "value": "v"}]
    response = http.put(f"namespaces/{namespace}/bulk", json=body)
    assert response.status_code == status
    assert error_code(response) == code
    assert "item 1" in response.json()["errors"][0]["message"]
    assert keys_of(sdk, emulator, namespace) == []  # nothing was written


def test_bulk_write_later_duplicate_wins(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    sdk.kv.namespaces.bulk_update(
        namespace,
        account_id=emulator.account_id,
        body=[{"key": "k", "value": "first"}, {"key": "k", "value": "second"}],
    )
    value = sdk.kv.namespaces.values.get(
        "k", account_id=emulator.account_id, namespace_id=namespace
    )
    assert value.read() == b"second"


def test_bulk_write_that_is_not_an_array_is_400(
    http: httpx.Client, namespace: str
) -> None:
    response = http.put(f"namespaces/{namespace}/bulk", json={"key": "k", "value": "v"})
    assert response.status_code == 400
    assert error_code(response) == 10001


# -- bulk delete -------------------------------------------------------------


def test_bulk_delete_via_sdk_post_route(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    body = [{"key": k, "value": "v"} for k in ("a", "b", "c")]
    sdk.kv.namespaces.bulk_update(namespace, account_id=emulator.account_id, body=body)
    result = sdk.kv.namespaces.bulk_delete(
        namespace, account_id=emulator.account_id, body=["a", "c", "missing"]
    )
    assert result is not None and result.successful_key_count == 3
    assert keys_of(sdk, emulator, namespace) == ["b"]


def test_bulk_delete_via_deprecated_delete_route(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
) -> None:
    http.put(f"namespaces/{namespace}/bulk", json=[{"key": "a", "value": "v"}])
    response = http.request("DELETE", f"namespaces/{namespace}/bulk", json=["a"])
    assert response.json()["result"] == {
        "successful_key_count": 1,
        "unsuccessful_keys": [],
    }
    assert keys_of(sdk, emulator, namespace) == []


def test_bulk_delete_over_10000_keys_is_400(http: httpx.Client, namespace: str) -> None:
    response = http.post(
        f"namespaces/{namespace}/bulk/delete", json=[f"k{i}" for i in range(10_001)]
    )
    assert response.status_code == 400
    assert error_code(response) == 10030


# -- bulk get ----------------------------------------------------------------


@pytest.fixture
def filled(sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str) -> str:
    sdk.kv.namespaces.bulk_update(
        namespace,
        account_id=emulator.account_id,
        body=[
            {"key": "text", "value": "plain"},
            {"key": "json", "value": '{"n": 1}', "metadata": {"m": True}},
            {"key": "num", "value": "42", "expiration_ttl": 600},
        ],
    )
    return namespace


def test_bulk_get_text_values(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, filled: str
) -> None:
    result = sdk.kv.namespaces.bulk_get(
        filled, account_id=emulator.account_id, keys=["text", "json", "missing"]
    )
    assert result is not None
    assert result.values == {"text": "plain", "json": '{"n": 1}', "missing": None}


def test_bulk_get_json_values_with_metadata(
    http: httpx.Client, emulator: EmulatorServer, filled: str
) -> None:
    response = http.post(
        f"namespaces/{filled}/bulk/get",
        json={"keys": ["json", "num", "missing"], "type": "json", "withMetadata": True},
    )
    values = response.json()["result"]["values"]
    assert values["json"] == {"value": {"n": 1}, "metadata": {"m": True}}
    assert values["num"]["value"] == 42
    assert values["num"]["metadata"] is None
    assert isinstance(values["num"]["expiration"], int)
    assert values["missing"] is None


def test_bulk_get_json_of_a_non_json_value_is_400(
    http: httpx.Client, filled: str
) -> None:
    response = http.post(
        f"namespaces/{filled}/bulk/get", json={"keys": ["text"], "type": "json"}
    )
    assert response.status_code == 400
    assert error_code(response) == 10041
    assert "'text'" in response.json()["errors"][0]["message"]


def test_bulk_get_of_101_keys_is_400_and_100_ok(
    http: httpx.Client, namespace: str
) -> None:
    url = f"namespaces/{namespace}/bulk/get"
    ok = http.post(url, json={"keys": [f"k{i}" for i in range(100)]})
    assert ok.status_code == 200
    assert len(ok.json()["result"]["values"]) == 100

    response = http.post(url, json={"keys": [f"k{i}" for i in range(101)]})
    assert response.status_code == 400
    assert error_code(response) == 10030


@pytest.mark.parametrize(
    "body", [{"keys": "k"}, {"keys": ["k"], "type": "arrayBuffer"}, ["k"], {}]
)
def test_bulk_get_with_bad_body_is_400(
    http: httpx.Client, namespace: str, body: object
) -> None:
    response = http.post(f"namespaces/{namespace}/bulk/get", json=body)
    assert response.status_code == 400
    assert error_code(response) == 10001


def _put_binary(server: EmulatorServer, namespace: str) -> None:
    client = sdk_client(server)
    client.kv.namespaces.values.update(
        "bin", account_id=server.account_id, namespace_id=namespace, value=b"ok\xff\xfe"
    )
    client.kv.namespaces.values.update(
        "txt", account_id=server.account_id, namespace_id=namespace, value=b"fine"
    )


def test_bulk_get_binary_value_is_replaced_by_default(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    _put_binary(emulator, namespace)
    result = sdk.kv.namespaces.bulk_get(
        namespace, account_id=emulator.account_id, keys=["bin", "txt"]
    )
    assert result is not None
    assert result.values == {"bin": "ok\ufffd\ufffd", "txt": "fine"}


def test_bulk_get_binary_value_is_rejected_in_reject_mode(tmp_path) -> None:
    with EmulatorServer(tmp_path, bulk_get_binary="reject") as server:
        client = sdk_client(server)
        namespace = client.kv.namespaces.create(
            account_id=server.account_id, title="t"
        ).id
        _put_binary(server, namespace)

        with pytest.raises(cloudflare.BadRequestError) as caught:
            client.kv.namespaces.bulk_get(
                namespace, account_id=server.account_id, keys=["txt", "bin"]
            )
        assert caught.value.errors[0].code == 10040
        assert "'bin'" in caught.value.errors[0].message

        result = client.kv.namespaces.bulk_get(
            namespace, account_id=server.account_id, keys=["txt"]
        )
        assert result is not None and result.values == {"txt": "fine"}


def test_bulk_get_keeps_duplicate_and_awkward_names(
    http: httpx.Client, namespace: str
) -> None:
    awkward = ["a/b", "%41", "+ ?#", "\U0001f600"]
    http.put(
        f"namespaces/{namespace}/bulk", json=[{"key": k, "value": k} for k in awkward]
    )
    response = http.post(
        f"namespaces/{namespace}/bulk/get", json={"keys": [*awkward, awkward[0]]}
    )
    assert response.json()["result"]["values"] == {k: k for k in awkward}
