"""Real data for the demo and the tests, written through the KV API.

Three namespaces, from data that kvsnap did not make up:

- ``tz-binary``: the IANA time-zone files shipped by the ``tzdata`` package,
  binary TZif values under their paths (``zoneinfo/Europe/Paris``);
- ``pkg-text``: the source files of the installed ``rich`` package as text;
- ``auth-state``: the state of a credential service: status records as JSON
  with metadata and TTLs, a JWKS document, a revocation list, Unicode user
  names, keys with ``/``, ``%`` and spaces, 512-byte keys, empty values, and
  values that look like JSON but must stay the bytes they are.

Everything goes through the same SDK calls a user would make (create
namespace, bulk write), so seeding also exercises the emulator.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any

import cloudflare

from kvsnap import limits
from kvsnap.errors import ApiError

TZ_NAMESPACE = "tz-binary"
TEXT_NAMESPACE = "pkg-text"
AUTH_NAMESPACE = "auth-state"


@dataclass(frozen=True)
class SeedEntry:
    """One pair to write, with the value as raw bytes."""

    key: str
    value: bytes
    metadata: Any = None
    expiration_ttl: int | None = None
    expiration: int | None = None

    def to_bulk_item(self) -> dict[str, Any]:
        """Return the bulk-write item for this pair, with binary values in base64."""
        try:
            item: dict[str, Any] = {
                "key": self.key,
                "value": self.value.decode("utf-8"),
            }
        except UnicodeDecodeError:
            item = {
                "key": self.key,
                "value": base64.b64encode(self.value).decode("ascii"),
                "base64": True,
            }
        if self.metadata is not None:
            item["metadata"] = self.metadata
        if self.expiration_ttl is not None:
            item["expiration_ttl"] = self.expiration_ttl
        if self.expiration is not None:
            item["expiration"] = self.expiration
        return item


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("__") or entry.name.endswith(".pyc"):
            continue
        path = f"{prefix}/{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, path)
        else:
            yield path, entry


def tz_entries() -> list[SeedEntry]:
    """Return every TZif file of the tzdata package, keyed by its zoneinfo path."""
    root = importlib.resources.files("tzdata") / "zoneinfo"
    return [
        SeedEntry(path, file.read_bytes()) for path, file in _walk(root, "zoneinfo")
    ]


def text_entries() -> list[SeedEntry]:
    """Return the source files of the installed rich package as text values."""
    root = importlib.resources.files("rich")
    return [
        SeedEntry(path, file.read_bytes())
        for path, file in _walk(root, "rich")
        if path.endswith((".py", ".typed", ".txt"))
    ]


# Names as users register them: accents, scripts other than Latin, an emoji.
_USER_NAMES = [
    "Zoë Ångström",
    "José Núñez",
    "Björk Guðmundsdóttir",
    "Đặng Thị Ngọc Thịnh",
    "李小龍",
    "محمد بن موسى",
    "Ольга Ладыженская",
    "Σωκράτης",
    "Saoirse Ní Bhriain",
    "test 🦊 user",
]


def auth_entries(now: float | None = None) -> list[SeedEntry]:
    """Return the state of a credential service, with every awkward key kind."""
    now = time.time() if now is None else now
    entries: list[SeedEntry] = []

    # Credential status records: JSON values, metadata, some with a TTL.
    statuses = ["active", "active", "active", "revoked", "suspended"]
    for number in range(60):
        digest = hashlib.sha256(f"credential-{number}".encode()).hexdigest()
        status = statuses[number % len(statuses)]
        uuid = "-".join(
            digest[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
        )
        record = {
            "id": f"urn:uuid:{uuid}",
            "status": status,
            "subject": f"did:example:{digest[32:48]}",
            "issued": int(now) - number * 3600,
        }
        entries.append(
            SeedEntry(
                f"credential/{digest[:16]}",
                json.dumps(record, separators=(",", ":")).encode(),
                metadata={"status": status, "v": 1},
                expiration_ttl=86_400 + number * 60 if number % 3 == 0 else None,
            )
        )

    # Signing keys: the public JWKS document and a revocation list.
    jwks = {"keys": [_jwk(f"key-{year}") for year in (2025, 2026)]}
    entries.append(
        SeedEntry(
            "jwks.json",
            json.dumps(jwks, indent=2).encode(),
            metadata={"kid": "key-2026"},
        )
    )
    revoked = [e.key for e in entries if b'"revoked"' in e.value]
    entries.append(SeedEntry("revocations", json.dumps({"revoked": revoked}).encode()))

    # Users by Unicode name.
    for name in _USER_NAMES:
        profile = {"display_name": name, "created": int(now)}
        entries.append(
            SeedEntry(f"user/{name}", json.dumps(profile, ensure_ascii=False).encode())
        )

    # Keys that break naive URL handling, and the longest legal keys.
    for key in [
        "path/with space",
        "100%",
        "%2F-stays-literal",
        "a+b",
        "q?x=1#frag",
        "/lead",
    ]:
        entries.append(SeedEntry(f"odd/{key}", key.encode()))
    entries.append(SeedEntry("k" * limits.MAX_KEY_BYTES, b"512 ASCII bytes"))
    entries.append(
        SeedEntry("é" * (limits.MAX_KEY_BYTES // 2), b"256 two-byte characters")
    )

    # Empty values, and values that must never be parsed as JSON.
    entries.append(SeedEntry("empty/no-metadata", b""))
    entries.append(
        SeedEntry("empty/with-metadata", b"", metadata={"reason": "tombstone"})
    )
    for index, text in enumerate(["123", '"quoted"', '{"b":1, "a":2}', "true", "null"]):
        entries.append(SeedEntry(f"json-like/{index}", text.encode()))

    # Metadata of every JSON type.
    kinds: list[Any] = [
        "text",
        42,
        2.5,
        True,
        [1, "two", None],
        {"nested": {"deep": [1]}},
    ]
    for index, metadata in enumerate(kinds):
        entries.append(SeedEntry(f"metadata/{index}", b"v", metadata=metadata))

    # An absolute expiration a week ahead.
    entries.append(
        SeedEntry("session/expiring", b"token-state", expiration=int(now) + 604_800)
    )
    return entries


def _jwk(kid: str) -> dict[str, str]:
    """Build an RSA public key entry whose modulus is derived, not a real key."""
    modulus = b"".join(hashlib.sha256(f"{kid}-{i}".encode()).digest() for i in range(8))
    n = base64.urlsafe_b64encode(modulus).rstrip(b"=").decode()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}


def demo_namespaces() -> dict[str, list[SeedEntry]]:
    """Return the three demo namespaces by title."""
    return {
        TZ_NAMESPACE: tz_entries(),
        TEXT_NAMESPACE: text_entries(),
        AUTH_NAMESPACE: auth_entries(),
    }


def write_namespace(
    client: cloudflare.Cloudflare, account_id: str, title: str, entries: list[SeedEntry]
) -> str:
    """Create a namespace titled `title`, bulk-write the entries, return its id."""
    namespace = client.kv.namespaces.create(account_id=account_id, title=title)
    if namespace is None:
        raise ApiError(f"creating namespace {title!r} returned no namespace")
    write_entries(client, account_id, namespace.id, entries)
    return namespace.id


def write_entries(
    client: cloudflare.Cloudflare,
    account_id: str,
    namespace_id: str,
    entries: list[SeedEntry],
) -> None:
    """Bulk-write entries in requests of at most 10,000 pairs and about 50 MB."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        item = entry.to_bulk_item()
        item_size = len(json.dumps(item))
        if batch and (
            len(batch) >= limits.BULK_WRITE_MAX_PAIRS
            or size + item_size > limits.BULK_WRITE_MAX_BYTES // 2
        ):
            _bulk_write(client, account_id, namespace_id, batch)
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        _bulk_write(client, account_id, namespace_id, batch)


def _bulk_write(
    client: cloudflare.Cloudflare,
    account_id: str,
    namespace_id: str,
    batch: list[dict[str, Any]],
) -> None:
    result = client.kv.namespaces.bulk_update(
        namespace_id, account_id=account_id, body=batch
    )
    failed = result.unsuccessful_keys if result is not None else None
    if failed:
        raise ApiError(f"bulk write failed for {len(failed)} keys, first {failed[0]!r}")
