"""Namespace endpoints: list, create, get, rename, delete."""

from __future__ import annotations

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from tests.emulator.helpers import error_code


def test_create_get_rename_delete_namespace(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer
) -> None:
    account = emulator.account_id
    created = sdk.kv.namespaces.create(account_id=account, title="orders")
    assert len(created.id) == 32
    assert created.title == "orders"
    assert created.supports_url_encoding is True

    assert sdk.kv.namespaces.get(created.id, account_id=account).title == "orders"
    renamed = sdk.kv.namespaces.update(created.id, account_id=account, title="sales")
    assert renamed is not None and renamed.title == "sales"
    assert sdk.kv.namespaces.get(created.id, account_id=account).title == "sales"

    sdk.kv.namespaces.delete(created.id, account_id=account)
    with pytest.raises(cloudflare.NotFoundError) as caught:
        sdk.kv.namespaces.get(created.id, account_id=account)
    assert caught.value.errors[0].code == 10013


def test_create_namespace_with_duplicate_title_is_400(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer
) -> None:
    sdk.kv.namespaces.create(account_id=emulator.account_id, title="same")
    with pytest.raises(cloudflare.BadRequestError) as caught:
        sdk.kv.namespaces.create(account_id=emulator.account_id, title="same")
    assert caught.value.errors[0].code == 10014


def test_rename_namespace_to_a_taken_title_is_400(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer
) -> None:
    account = emulator.account_id
    sdk.kv.namespaces.create(account_id=account, title="a")
    b = sdk.kv.namespaces.create(account_id=account, title="b")
    with pytest.raises(cloudflare.BadRequestError):
        sdk.kv.namespaces.update(b.id, account_id=account, title="a")


@pytest.mark.parametrize("title", ["", "x" * 513])
def test_create_namespace_with_bad_title_is_400(http: httpx.Client, title: str) -> None:
    response = http.post("namespaces", json={"title": title})
    assert response.status_code == 400
    assert error_code(response) == 10019


def test_create_namespace_with_non_json_body_is_400(http: httpx.Client) -> None:
    response = http.post("namespaces", content=b"{not json")
    assert response.status_code == 400
    assert error_code(response) == 10001


def test_list_namespaces_pages_and_orders(
    sdk: cloudflare.Cloudflare, http: httpx.Client, emulator: EmulatorServer
) -> None:
    titles = [f"ns-{i:02d}" for i in range(25)]
    for title in reversed(titles):
        sdk.kv.namespaces.create(account_id=emulator.account_id, title=title)

    first = http.get("namespaces").json()
    assert first["success"] is True
    assert len(first["result"]) == 20
    assert first["result_info"] == {
        "page": 1,
        "per_page": 20,
        "count": 20,
        "total_count": 25,
    }

    page = http.get(
        "namespaces",
        params={"page": 2, "per_page": 10, "order": "title", "direction": "desc"},
    ).json()
    assert [n["title"] for n in page["result"]] == titles[::-1][10:20]
    assert page["result_info"]["count"] == 10

    listed = sdk.kv.namespaces.list(account_id=emulator.account_id, order="title")
    assert [n.title for n in listed] == titles  # the SDK pages on by itself


@pytest.mark.parametrize(
    "params",
    [{"per_page": 1001}, {"per_page": 0}, {"page": 0}, {"order": "name"}],
)
def test_list_namespaces_with_bad_parameters_is_400(
    http: httpx.Client, params: dict[str, object]
) -> None:
    response = http.get("namespaces", params=params)
    assert response.status_code == 400
    assert error_code(response) == 10004


def test_namespaces_are_separate_per_account(tmp_path) -> None:
    other = "f" * 32
    with EmulatorServer(tmp_path, accounts=["a" * 32, other]) as server:
        client = cloudflare.Cloudflare(
            api_token=server.token, base_url=server.base_url, max_retries=0
        )
        created = client.kv.namespaces.create(account_id="a" * 32, title="mine")
        assert list(client.kv.namespaces.list(account_id=other)) == []
        with pytest.raises(cloudflare.NotFoundError):
            client.kv.namespaces.get(created.id, account_id=other)
