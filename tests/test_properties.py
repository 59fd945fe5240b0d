"""Property-based round trips: back up a generated namespace, restore it, compare.

Every example seeds a fresh namespace in one emulator shared by the module.
It runs `kvsnap backup`, `kvsnap restore --to NEW --create` and `kvsnap diff`
in this process. Both namespaces are then read back through the SDK, one GET
per value, so that kvsnap's own reading code is not the judge of itself.

The default run tries a few examples per property. Set
KVSNAP_HYPOTHESIS_EXAMPLES to try more, for example 500 in a soak run.
Examples are derandomized, so a failure repeats on the next run.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import cloudflare
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsnap import limits
from kvsnap.cli.main import run as cli_main
from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry, write_entries
from tests.kvtools import CliResult, cloudflare_env, create_namespace, sdk

EXAMPLES = int(os.environ.get("KVSNAP_HYPOTHESIS_EXAMPLES", "15"))

# Restore skips keys that expire within limits.NEAR_EXPIRY_SECONDS (90 s)
# unless --extend-expiring is given, so generated expirations start well
# beyond that: the round trip must then keep every key.
MIN_EXPIRATION_AHEAD = 600
MAX_EXPIRATION_AHEAD = 10 * 365 * 24 * 3600

# JavaScript numbers are IEEE doubles, so Workers read larger integers in
# metadata with a loss of precision; metadata written by Workers has none.
JS_SAFE_INTEGER = 2**53 - 1


# Strategies.

# Every code point except surrogates, which have no UTF-8 form. Control
# characters are included: the emulator accepts them, as does the API
# description, which limits only the length and the names "." and "..".
key_characters = st.characters(exclude_categories=("Cs",))
awkward_pieces = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "%",
        "%2F",
        "%00",
        "+",
        "#",
        "?",
        " ",
        "\t",
        "\n",
        "\x00",
        "\x7f",
        "e\u0301",  # e and a combining acute accent
        "\U0001f98a",  # an emoji outside the basic multilingual plane
        "\u200b",  # zero-width space
        "~",
        "&",
        "=",
        "\\",
    ]
)


def _is_valid_key(key: str) -> bool:
    size = len(key.encode("utf-8"))
    return 1 <= size <= limits.MAX_KEY_BYTES and key not in limits.RESERVED_KEYS


plain_keys = st.text(key_characters, min_size=1, max_size=40)
path_keys = st.lists(
    st.one_of(awkward_pieces, st.text(key_characters, max_size=6)),
    min_size=1,
    max_size=8,
).map("/".join)
# Keys of exactly the maximum size, of one-, two-, three- and four-byte
# characters, where a byte limit counted in characters would break.
long_keys = st.sampled_from(["k", "é", "€", "\U0001f98a"]).map(
    lambda char: char * (limits.MAX_KEY_BYTES // len(char.encode("utf-8")))
)
keys = st.one_of(plain_keys, path_keys, long_keys).filter(_is_valid_key)

text_values = st.text(key_characters, max_size=200).map(lambda text: text.encode())
binary_values = st.binary(max_size=300)
# Bytes that look like text but are not valid UTF-8 at the very end.
almost_text_values = st.text(max_size=50).map(lambda text: text.encode() + b"\xff")
values = st.one_of(st.just(b""), text_values, binary_values, almost_text_values)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-JS_SAFE_INTEGER, max_value=JS_SAFE_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(key_characters, max_size=20),
)
json_documents = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(key_characters, max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
# JSON null metadata means "no metadata" to the API, so it is left out here.
metadata = st.one_of(
    st.none(),
    json_documents.filter(
        lambda document: (
            document is not None
            and len(msgspec.json.encode(document)) <= limits.MAX_METADATA_BYTES
        )
    ),
)
expiration_offsets = st.one_of(
    st.none(),
    st.integers(min_value=MIN_EXPIRATION_AHEAD, max_value=MAX_EXPIRATION_AHEAD),
)


@dataclass(frozen=True)
class Pair:
    """A generated key with its value, metadata and expiration offset."""

    key: str
    value: bytes
    metadata: Any
    expires_in: int | None


pairs = st.builds(Pair, keys, values, metadata, expiration_offsets)
namespaces = st.lists(pairs, min_size=0, max_size=25, unique_by=lambda pair: pair.key)


# Running kvsnap in this process.


def invoke(args: list[str], env: dict[str, str]) -> CliResult:
    """Run the kvsnap CLI in this process with `env` as the whole environment."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch.object(sys, "argv", ["kvsnap", *args]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            cli_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


# Reading a namespace back through the SDK.


@dataclass(frozen=True)
class Stored:
    """One key as the API returns it: raw value, metadata as JSON, expiration."""

    value: bytes
    metadata_json: bytes | None
    expiration: int | None


def read_namespace(
    client: cloudflare.Cloudflare, account_id: str, namespace_id: str
) -> dict[str, Stored]:
    """Return every key of a namespace: list it, then GET each value alone."""
    listed: list[dict[str, Any]] = []
    cursor: str | None = None
    for _page in range(1000):  # a bound far above the sizes generated here
        options: dict[str, Any] = {"limit": limits.LIST_PAGE_MAX}
        if cursor:
            options["cursor"] = cursor
        response = client.kv.namespaces.keys.with_raw_response.list(
            namespace_id, account_id=account_id, **options
        )
        body = json.loads(response.http_response.content)
        listed.extend(body["result"])
        cursor = (body.get("result_info") or {}).get("cursor")
        if not cursor:
            break
    else:
        raise AssertionError("the key list did not end after 1000 pages")

    found = {}
    for info in listed:
        value = client.kv.namespaces.values.get(
            info["name"], account_id=account_id, namespace_id=namespace_id
        ).read()
        meta = info.get("metadata")
        found[info["name"]] = Stored(
            value=value,
            metadata_json=None if meta is None else msgspec.json.encode(meta),
            expiration=info.get("expiration"),
        )
    return found


def expected_state(entries: list[SeedEntry]) -> dict[str, Stored]:
    return {
        entry.key: Stored(
            value=entry.value,
            metadata_json=None
            if entry.metadata is None
            else msgspec.json.encode(entry.metadata),
            expiration=entry.expiration,
        )
        for entry in entries
    }


# Fixtures: one emulator and one repository for the whole module.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    with EmulatorServer(tmp_path_factory.mktemp("emulator")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def env(server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("repository") / "repo"
    return cloudflare_env(
        server, KVSNAP_REPOSITORY=str(repo), HOME=str(repo.parent), TZ="UTC"
    )


_titles = itertools.count(1)


def round_trip(
    server: EmulatorServer, env: dict[str, str], entries: list[SeedEntry]
) -> tuple[dict[str, Stored], dict[str, Stored], str, str]:
    """Seed, back up, restore into a new namespace and diff; return both states."""
    number = next(_titles)
    source_title, target_title = f"source-{number}", f"restored-{number}"
    source_id = create_namespace(server, source_title, entries)
    fast = ["--rate-limit", "100000/1"]

    backup = invoke(["backup", source_title, *fast, "--json"], env)
    assert backup.code == 0, backup.stderr
    snapshot_id = json.loads(backup.stdout)["namespaces"][0]["snapshot_id"]

    restore = invoke(
        [
            "restore",
            snapshot_id,
            "--to",
            target_title,
            "--create",
            "--yes",
            "--json",
            *fast,
        ],
        env,
    )
    assert restore.code == 0, restore.stdout + restore.stderr
    target_id = json.loads(restore.stdout)["namespace_id"]

    diff = invoke(["diff", snapshot_id, f"live:{target_id}"], env)
    assert diff.code == 0, diff.stdout + diff.stderr

    client = sdk(server)
    source = read_namespace(client, server.account_id, source_id)
    restored = read_namespace(client, server.account_id, target_id)
    return source, restored, snapshot_id, target_id


def seed_entries(generated: list[Pair], now: float) -> list[SeedEntry]:
    return [
        SeedEntry(
            pair.key,
            pair.value,
            metadata=pair.metadata,
            expiration=None if pair.expires_in is None else int(now) + pair.expires_in,
        )
        for pair in generated
    ]


# Properties.


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(generated=namespaces)
def test_round_trip_restores_namespace_exactly(
    server: EmulatorServer, env: dict[str, str], generated: list[Pair]
) -> None:
    entries = seed_entries(generated, time.time())

    source, restored, _snapshot, _target = round_trip(server, env, entries)

    assert source == expected_state(entries)
    assert restored.keys() == source.keys()
    for key, stored in source.items():
        assert restored[key].value == stored.value, key
        assert restored[key].metadata_json == stored.metadata_json, key
        assert restored[key].expiration == stored.expiration, key


def test_round_trip_awkward_keys_together(
    server: EmulatorServer, env: dict[str, str]
) -> None:
    """Keys that collide under naive path handling must stay distinct."""
    names = [
        "a/b",
        "a//b",
        "a/./b",
        "a/../b",
        "./a",
        "../a",
        "a/.",
        "a/..",
        "/a",
        "a/",
        "%2F",
        "%252F",
        "a%2Fb",
        "a+b",
        "a b",
        "a?b=c#d",
        "é",
        "e\u0301",
        "\x00",
        "\x01\x1f",
        "\x7f",
        "\n",
        "\U0001f98a/\U0001f98a",
        "...",
    ]
    entries = [SeedEntry(name, name.encode() + b"\x80") for name in names]

    source, restored, _snapshot, _target = round_trip(server, env, entries)

    assert sorted(source) == sorted(names)
    assert restored == source


@pytest.mark.parametrize("name", sorted(limits.RESERVED_KEYS))
def test_reserved_key_rejected_by_api(server: EmulatorServer, name: str) -> None:
    """The API rejects "." and ".." as whole key names, so no snapshot has them."""
    namespace_id = create_namespace(server, f"reserved-{next(_titles)}")

    with pytest.raises(cloudflare.BadRequestError) as raised:
        write_entries(
            sdk(server), server.account_id, namespace_id, [SeedEntry(name, b"v")]
        )

    assert f'key name "{name}" is not allowed' in str(raised.value)
    assert read_namespace(sdk(server), server.account_id, namespace_id) == {}


@pytest.mark.slow
@settings(max_examples=max(2, EXAMPLES // 5), deadline=None, derandomize=True)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 1024 * 1024, limits.MAX_VALUE_BYTES]),
        min_size=1,
        max_size=3,
    ),
    text=st.booleans(),
)
def test_round_trip_large_values(
    server: EmulatorServer, env: dict[str, str], sizes: list[int], text: bool
) -> None:
    entries = []
    for number, size in enumerate(sizes):
        value = (b"x" * size) if text else os.urandom(size)
        entries.append(SeedEntry(f"large/{number}", value, metadata={"size": size}))

    source, restored, _snapshot, _target = round_trip(server, env, entries)

    assert source == expected_state(entries)
    assert restored == source
