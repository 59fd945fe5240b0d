"""Back up one namespace the per-key way, as the benchmark's baseline.

Usage: python bench/perkey.py NAMESPACE_ID OUT.json [--concurrency 8] [--metadata]

The script does what the KV backup scripts that kvsnap replaces do, and
what the hand-run procedure does. It lists every key through the Cloudflare
SDK's auto-pager (1,000 keys a page), then reads each value with one GET.
With ``--metadata`` it also reads each key's metadata with one more GET. At
most ``--concurrency`` requests are in flight at once, as in kvsnap. The
pairs go into one JSON file in the shape of ``wrangler kv bulk put``
(``key``, ``value``, ``base64`` for values that are not UTF-8,
``metadata``, ``expiration``), which is what those scripts write.

The credentials and the API address come from CLOUDFLARE_API_TOKEN,
CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_BASE_URL. The SDK keeps its default of
2 retries. The script prints one JSON object on stdout: keys and seconds.
The emulator's statistics, not this script, count the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudflare

# Keys per list page that the auto-pager requests (the API's maximum).
LIST_PAGE_KEYS = 1000


async def list_keys(
    client: cloudflare.AsyncCloudflare, account_id: str, namespace_id: str
) -> list[dict[str, Any]]:
    """List every key with its expiration and metadata, page by page."""
    keys: list[dict[str, Any]] = []
    pages = client.kv.namespaces.keys.list(
        namespace_id, account_id=account_id, limit=LIST_PAGE_KEYS
    )
    async for key in pages:
        keys.append(
            {"name": key.name, "expiration": key.expiration, "metadata": key.metadata}
        )
    return keys


async def read_pair(
    client: cloudflare.AsyncCloudflare,
    account_id: str,
    namespace_id: str,
    key: dict[str, Any],
    with_metadata: bool,
) -> dict[str, Any]:
    """Read one key's value, and its metadata if with_metadata, as a bulk put item."""
    response = await client.kv.namespaces.values.get(
        key["name"], account_id=account_id, namespace_id=namespace_id
    )
    data = await response.read()
    item: dict[str, Any] = {"key": key["name"]}
    try:
        item["value"] = data.decode("utf-8")
    except UnicodeDecodeError:
        item["value"] = base64.b64encode(data).decode("ascii")
        item["base64"] = True

    metadata = key["metadata"]
    if with_metadata:
        metadata = await client.kv.namespaces.metadata.get(
            key["name"], account_id=account_id, namespace_id=namespace_id
        )
    if metadata is not None:
        item["metadata"] = metadata
    if key["expiration"] is not None:
        item["expiration"] = key["expiration"]
    return item


async def back_up(
    namespace_id: str, concurrency: int, with_metadata: bool
) -> list[dict[str, Any]]:
    """Return every pair of the namespace, in key order."""
    account_id = os.environ["CLOUDFLARE_ACCOUNT_ID"]
    client = cloudflare.AsyncCloudflare(
        api_token=os.environ["CLOUDFLARE_API_TOKEN"],
        base_url=os.environ["CLOUDFLARE_BASE_URL"],
    )
    slots = asyncio.Semaphore(concurrency)

    async def read_one(key: dict[str, Any]) -> dict[str, Any]:
        async with slots:
            return await read_pair(client, account_id, namespace_id, key, with_metadata)

    try:
        keys = await list_keys(client, account_id, namespace_id)
        pairs = await asyncio.gather(*(read_one(key) for key in keys))
    finally:
        await client.close()
    return list(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("namespace_id")
    parser.add_argument("out", type=Path, help="JSON file to write the pairs to")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--metadata", action="store_true", help="also GET each key's metadata"
    )
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be 1 or more")

    start = time.monotonic()
    pairs = asyncio.run(back_up(args.namespace_id, args.concurrency, args.metadata))
    args.out.write_text(json.dumps(pairs))
    seconds = time.monotonic() - start
    summary = {"keys": len(pairs), "seconds": round(seconds, 3)}
    json.dump(summary, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
