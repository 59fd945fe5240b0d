"""GET .../keys: byte order, cursor paging, prefixes, limits."""

from __future__ import annotations

import cloudflare
import httpx
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.store import prefix_end
from tests.emulator.helpers import error_code


def write_keys(
    sdk: cloudflare.Cloudflare, server: EmulatorServer, namespace: str, keys: list[str]
) -> None:
    for start in range(0, len(keys), 10_000):
        sdk.kv.namespaces.bulk_update(
            namespace,
            account_id=server.account_id,
            body=[{"key": k, "value": "v"} for k in keys[start : start + 10_000]],
        )


def test_keys_are_listed_in_utf8_byte_order(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    keys = ["b", "\U0001f600", "a", "\u00e9", "Z", "\uffff", "a\x00", "~", "0"]
    write_keys(sdk, emulator, namespace, keys)

    listed = sdk.kv.namespaces.keys.list(namespace, account_id=emulator.account_id)
    names = [k.name for k in listed]
    assert names == sorted(keys, key=lambda k: k.encode("utf-8"))
    # Byte order differs from code-point order for U+FFFF vs U+1F600 and
    # from UTF-16 order (what JavaScript sorts by): check the telling pair.
    assert names.index("\uffff") < names.index("\U0001f600")


def test_pagination_over_2501_keys_takes_three_pages(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
) -> None:
    keys = [f"key-{i:05d}" for i in range(2501)]
    write_keys(sdk, emulator, namespace, keys)

    seen: list[str] = []
    cursors: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
        page = http.get(f"namespaces/{namespace}/keys", params=params).json()
        seen += [k["name"] for k in page["result"]]
        assert page["result_info"]["count"] == len(page["result"])
        cursor = page["result_info"]["cursor"]
        cursors.append(cursor)
        if not cursor:
            break
    assert seen == keys
    assert len(cursors) == 3
    assert cursors[0]
    assert cursors[1]
    assert cursors[2] == ""


def test_sdk_auto_pager_reads_every_key(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    keys = [f"k{i:04d}" for i in range(35)]
    write_keys(sdk, emulator, namespace, keys)
    listed = sdk.kv.namespaces.keys.list(
        namespace, account_id=emulator.account_id, limit=10
    )
    assert [k.name for k in listed] == keys


def test_page_of_exactly_limit_keys_with_none_left_has_empty_cursor(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
) -> None:
    write_keys(sdk, emulator, namespace, [f"k{i:02d}" for i in range(20)])
    first = http.get(f"namespaces/{namespace}/keys", params={"limit": 10}).json()
    assert first["result_info"]["cursor"] != ""
    second = http.get(
        f"namespaces/{namespace}/keys",
        params={"limit": 10, "cursor": first["result_info"]["cursor"]},
    ).json()
    assert second["result_info"] == {"count": 10, "cursor": ""}


def test_prefix_matches_bytes_and_treats_like_wildcards_literally(
    sdk: cloudflare.Cloudflare, emulator: EmulatorServer, namespace: str
) -> None:
    keys = [
        "user:1",
        "user:2",
        "user",
        "users",
        "usex",
        "u%er",
        "u_er",
        "caf\u00e9",
        "caf",
    ]
    keys += ["a b+c", "a b+cd", "a bxc", "\xff\xff", "\xffz"]
    write_keys(sdk, emulator, namespace, keys)

    def names(prefix: str) -> list[str]:
        listed = sdk.kv.namespaces.keys.list(
            namespace, account_id=emulator.account_id, prefix=prefix
        )
        return [k.name for k in listed]

    assert names("user") == ["user", "user:1", "user:2", "users"]
    assert names("user:") == ["user:1", "user:2"]
    assert names("u%") == ["u%er"]
    assert names("u_") == ["u_er"]
    assert names("caf\u00e9") == ["caf\u00e9"]
    assert names("a b+c") == ["a b+c", "a b+cd"]  # + and space survive the query
    assert names("\xff") == ["\xffz", "\xff\xff"]  # U+00FF is C3 BF in UTF-8
    assert names("nothing") == []


def test_prefix_pages_with_cursor(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
) -> None:
    write_keys(sdk, emulator, namespace, [f"a{i:02d}" for i in range(15)] + ["b"])
    first = http.get(
        f"namespaces/{namespace}/keys", params={"prefix": "a", "limit": 10}
    ).json()
    second = http.get(
        f"namespaces/{namespace}/keys",
        params={"prefix": "a", "limit": 10, "cursor": first["result_info"]["cursor"]},
    ).json()
    assert len(first["result"]) == 10
    assert [k["name"] for k in second["result"]] == [f"a{i:02d}" for i in range(10, 15)]
    assert second["result_info"]["cursor"] == ""


def test_list_shows_expiration_and_metadata_only_when_set(
    http: httpx.Client,
    sdk: cloudflare.Cloudflare,
    emulator: EmulatorServer,
    namespace: str,
) -> None:
    sdk.kv.namespaces.bulk_update(
        namespace,
        account_id=emulator.account_id,
        body=[
            {"key": "plain", "value": "v"},
            {"key": "rich", "value": "v", "metadata": {"a": 1}, "expiration_ttl": 600},
        ],
    )
    plain, rich = http.get(f"namespaces/{namespace}/keys").json()["result"]
    assert plain == {"name": "plain"}
    assert set(rich) == {"name", "expiration", "metadata"}
    assert rich["metadata"] == {"a": 1}


@pytest.mark.parametrize("limit", [9, 1001, 0, -1, "ten", "inf", "nan", "10.5"])
def test_limit_outside_10_to_1000_is_400(
    http: httpx.Client, namespace: str, limit: object
) -> None:
    response = http.get(f"namespaces/{namespace}/keys", params={"limit": limit})
    assert response.status_code == 400
    assert error_code(response) == 10004


@pytest.mark.parametrize("limit", [10, 1000])
def test_limit_bounds_are_accepted(
    http: httpx.Client, namespace: str, limit: int
) -> None:
    response = http.get(f"namespaces/{namespace}/keys", params={"limit": limit})
    assert response.status_code == 200
    assert response.json()["result_info"] == {"count": 0, "cursor": ""}


def test_garbage_cursor_is_400(http: httpx.Client, namespace: str) -> None:
    response = http.get(f"namespaces/{namespace}/keys", params={"cursor": "!!!"})
    assert response.status_code == 400
    assert error_code(response) == 10004


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None
