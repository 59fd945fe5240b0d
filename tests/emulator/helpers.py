"""Helpers for the emulator tests: SDK client, key paths, envelope checks."""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote

import cloudflare
import httpx

from kvsnap.emulator import EmulatorServer


def sdk_client(server: EmulatorServer, **options: object) -> cloudflare.Cloudflare:
    """The official SDK pointed at server; no retries unless asked."""
    options.setdefault("max_retries", 0)
    return cloudflare.Cloudflare(
        api_token=server.token,
        base_url=server.base_url,
        **options,  # type: ignore[arg-type]
    )


def key_path(namespace_id: str, key: str, kind: str = "values") -> str:
    """The path of a key under http's base URL, encoded like the SDK does."""
    return f"namespaces/{namespace_id}/{kind}/{quote(key, safe='')}"


def error_code(response: httpx.Response) -> int:
    """The first envelope error code of a failed response (checks the shape)."""
    document = response.json()
    assert document["success"] is False
    assert document["result"] is None
    assert document["messages"] == []
    assert document["errors"], document
    assert document["errors"][0]["code"] >= 971
    return document["errors"][0]["code"]


def raw_request(
    server: EmulatorServer, method: str, path: str, body: bytes = b""
) -> tuple[int, dict]:
    """Send a path byte for byte (httpx would normalise ``.``/``..`` away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            method,
            server.base_url.removeprefix(server.root_url) + path,
            body=body,
            headers={"Authorization": f"Bearer {server.token}"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
