"""Tests of kvsnap.diff and the `kvsnap diff` command."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvsnap.diff import (
    DiffCounts,
    KeyDiff,
    diff_records,
    format_key,
    json_equal,
    manifest_for_prefix,
    parse_keys_file,
    parse_side,
)
from kvsnap.emulator import EmulatorServer
from kvsnap.errors import ConfigError
from kvsnap.format import Record
from kvsnap.repository import Repository
from kvsnap.seed import SeedEntry, write_entries
from tests.kvtools import cloudflare_env, create_namespace, run_cli, sdk, snapshots
from tests.test_repository import make_records, run, write_snapshot


async def stream(records: list[Record]) -> AsyncIterator[Record]:
    for record in records:
        yield record


def diff_lists(
    a: list[Record], b: list[Record], prefix: str | None = None
) -> tuple[dict[str, KeyDiff], DiffCounts]:
    counts = DiffCounts()

    async def collect() -> list[KeyDiff]:
        return [
            found
            async for found in diff_records(stream(a), stream(b), counts, prefix=prefix)
        ]

    found = run(collect())
    return {item.key: item for item in found}, counts


# Merging.


def test_merge_added_removed_changed() -> None:
    a = [Record("a", "1"), Record("b", "2"), Record("c", "3")]
    b = [Record("b", "2"), Record("c", "three"), Record("d", "4")]
    found, counts = diff_lists(a, b)
    assert found["a"].change == "removed"
    assert found["a"].b is None
    assert found["a"].a is not None
    assert found["a"].a.sha256 == hashlib.sha256(b"1").hexdigest()
    assert found["c"].change == "changed"
    assert found["c"].fields == ["value"]
    assert found["c"].b is not None
    assert found["c"].b.size == 5
    assert found["d"].change == "added"
    assert found["d"].a is None
    assert "b" not in found
    assert (counts.added, counts.removed, counts.changed) == (1, 1, 1)
    assert counts.unchanged == 1
    assert (counts.keys_a, counts.keys_b) == (3, 3)


@pytest.mark.parametrize(
    ("old", "new", "fields"),
    [
        (Record("k", "v"), Record("k", "w"), ["value"]),
        (
            Record("k", "v", metadata={"a": 1}),
            Record("k", "v", metadata={"a": 2}),
            ["metadata"],
        ),
        (Record("k", "v"), Record("k", "v", metadata={"a": 1}), ["metadata"]),
        (Record("k", "v"), Record("k", "v", metadata=None), ["metadata"]),
        (Record("k", "v", metadata=True), Record("k", "v", metadata=1), ["metadata"]),
        (
            Record("k", "v", expiration=100),
            Record("k", "v", expiration=200),
            ["expiration"],
        ),
        (Record("k", "v", expiration=100), Record("k", "v"), ["expiration"]),
        (
            Record("k", "v", metadata=[1], expiration=1),
            Record("k", "x", metadata=[2], expiration=2),
            ["value", "metadata", "expiration"],
        ),
        (Record.from_bytes("k", b"\xff"), Record.from_bytes("k", b"\xfe"), ["value"]),
    ],
)
def test_merge_changed_fields(old: Record, new: Record, fields: list[str]) -> None:
    found, counts = diff_lists([old], [new])
    assert found["k"].change == "changed"
    assert found["k"].fields == fields
    assert counts.changed == 1


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            Record("k", "v", metadata={"a": 1, "b": 2}),
            Record("k", "v", metadata={"b": 2, "a": 1}),
        ),
        (Record("k", "v", metadata={"n": 1}), Record("k", "v", metadata={"n": 1.0})),
        (Record("k", "v", expiration=100), Record("k", "v", expiration=100.0)),
        (Record.from_bytes("k", b"\x00\xff"), Record.from_bytes("k", b"\x00\xff")),
    ],
)
def test_merge_equal_fields(old: Record, new: Record) -> None:
    found, counts = diff_lists([old], [new])
    assert found == {}
    assert counts.unchanged == 1


def test_merge_identical_streams() -> None:
    records = make_records(50)
    found, counts = diff_lists(records, list(records))
    assert found == {}
    assert counts.differences == 0
    assert counts.unchanged == 50


def test_merge_empty_sides() -> None:
    records = make_records(3)
    nothing, empty = diff_lists([], [])
    added, to_full = diff_lists([], records)
    removed, to_empty = diff_lists(records, [])
    assert nothing == {}
    assert empty.summary()["identical"] is True
    assert [item.change for item in added.values()] == ["added"] * 3
    assert to_full.added == 3
    assert [item.change for item in removed.values()] == ["removed"] * 3
    assert to_empty.removed == 3


def test_merge_follows_utf8_byte_order() -> None:
    # UTF-16 (JavaScript) order puts the emoji (d83d de00) before U+FFFF;
    # UTF-8 byte order, which KV lists in, puts U+FFFF (ef bf bf) first.
    a = [Record("z", "1"), Record("\uffff", "1"), Record("\U0001f600", "1")]
    b = [Record("\uffff", "2"), Record("\U0001f600", "1"), Record("\U0001f601", "1")]
    found, counts = diff_lists(a, b)
    assert found["z"].change == "removed"
    assert found["\uffff"].change == "changed"
    assert found["\U0001f601"].change == "added"
    assert "\U0001f600" not in found
    assert counts.unchanged == 1


def test_merge_rejects_unsorted_stream() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        diff_lists([Record("b", "1"), Record("a", "1")], [])


def test_merge_prefix_filter() -> None:
    a = [
        Record("app", "1"),
        Record("user/1", "1"),
        Record("user/2", "1"),
        Record("zz", "1"),
    ]
    b = [Record("user/1", "x"), Record("user/3", "1"), Record("users", "1")]
    found, counts = diff_lists(a, b, prefix="user/")
    assert sorted(found) == ["user/1", "user/2", "user/3"]
    assert (counts.keys_a, counts.keys_b) == (2, 2)


def test_merge_prefix_stops_reading_after_range() -> None:
    served: list[str] = []

    async def counted() -> AsyncIterator[Record]:
        for record in [
            Record("a", "1"),
            Record("b/1", "1"),
            Record("c", "1"),
            Record("d", "1"),
        ]:
            served.append(record.key)
            yield record

    async def collect() -> list[KeyDiff]:
        counts = DiffCounts()
        return [
            item
            async for item in diff_records(counted(), stream([]), counts, prefix="b/")
        ]

    found = run(collect())
    assert [item.key for item in found] == ["b/1"]
    assert served == ["a", "b/1", "c"]


def test_json_equal_distinguishes_bool_and_number() -> None:
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal(True, 1)
    assert not json_equal([1, 2], [2, 1])
    assert not json_equal({"a": 1}, {"a": 1, "b": 1})
    assert not json_equal("1", 1)


def test_manifest_for_prefix_keeps_overlapping_parts(tmp_path: Path) -> None:
    repo = run(Repository.init(str(tmp_path / "repo")))
    parts = [make_records(3, "a"), make_records(3, "b"), make_records(3, "c")]
    manifest = run(write_snapshot(repo, parts))
    assert [p.number for p in manifest_for_prefix(manifest, "b").parts] == [2]
    assert [p.number for p in manifest_for_prefix(manifest, "a-0000").parts] == [1]
    assert manifest_for_prefix(manifest, "bb").parts == []
    assert manifest_for_prefix(manifest, None) == manifest


def test_parse_side_forms() -> None:
    assert parse_side("live:app-cache").live_namespace == "app-cache"
    assert parse_side("latest@app").live_namespace is None
    with pytest.raises(ConfigError, match="live:my-namespace"):
        parse_side("live:")


# The keys file.

AWKWARD_KEYS = [
    "plain",
    "line\nbreak",
    "tab\tkey",
    "carriage\rreturn",
    "100%/caf\u00e9/\U0001f600",
    '"starts with a quote',
    '{"type":"summary"}',
    " leading space",
    "trailing space ",
    "back\\slash",
    "\x1b[31mred",
    "bidi\u202eevil",
    "line\u2028separator",
    "tag\U000e0001char",
    "\uffff",
]


def test_format_key_is_one_printable_line() -> None:
    for key in AWKWARD_KEYS:
        line = format_key(key)
        assert line.isprintable(), key
    assert format_key("plain") == "plain"
    assert format_key("100%/caf\u00e9/\U0001f600") == "100%/caf\u00e9/\U0001f600"
    assert format_key("line\nbreak") == '"line\\nbreak"'
    assert format_key("tag\U000e0001char") == '"tag\\udb40\\udc01char"'


def test_keys_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("".join(format_key(key) + "\n" for key in AWKWARD_KEYS))
    assert parse_keys_file(path) == AWKWARD_KEYS


def test_keys_file_reads_json_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "diff.jsonl"
    lines = [
        json.dumps({"type": "key", "key": "a\nb", "change": "added"}),
        "plain",
        '"quoted\\tkey"',
        "",
        json.dumps({"type": "summary", "added": 1}),
    ]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    assert parse_keys_file(path) == ["a\nb", "plain", "quoted\tkey"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'"unterminated\n', "line 1 is not valid JSON"),
        (b"ok\n[1, 2]\n", None),
        (b'ok\n{"type": "other"}\n', "line 2 is neither a key"),
        (b"\xff\n", "line 1 is not valid UTF-8"),
    ],
)
def test_keys_file_invalid_lines(
    tmp_path: Path, content: bytes, message: str | None
) -> None:
    path = tmp_path / "keys.txt"
    path.write_bytes(content)
    if message is None:
        # A raw line that starts with "[" is a key like any other.
        assert parse_keys_file(path) == ["ok", "[1, 2]"]
        return
    with pytest.raises(ConfigError, match=message):
        parse_keys_file(path)


def test_keys_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read keys file"):
        parse_keys_file(tmp_path / "absent.txt")


# End to end against the emulator.

NAMESPACE = "diffed"
SEED = [
    SeedEntry("config/flags", b'{"beta": true}'),
    SeedEntry("line\nbreak", b"first"),
    SeedEntry("100%/caf\u00e9/\U0001f600", b"emoji", metadata={"v": 1}),
    SeedEntry("tab\tkey", b"tab", metadata={"owner": "ops"}),
    SeedEntry("doomed", b"gone soon"),
    SeedEntry("expires", b"e", expiration=4_000_000_000),
    SeedEntry("steady", bytes(range(256))),
]
EXPECTED = {
    "line\nbreak": ("changed", ["value"]),
    "tab\tkey": ("changed", ["metadata"]),
    "expires": ("changed", ["expiration"]),
    "doomed": ("removed", []),
    "100%/caf\u00e9/\U0001f600/new": ("added", []),
}


def corrupt(server: EmulatorServer, namespace_id: str) -> None:
    """Change a value, metadata only and an expiration; delete one key, add one."""
    client = sdk(server)
    write_entries(
        client,
        server.account_id,
        namespace_id,
        [
            SeedEntry("line\nbreak", b"second"),
            SeedEntry("tab\tkey", b"tab", metadata={"owner": "mallory"}),
            SeedEntry("expires", b"e", expiration=4_100_000_000),
            SeedEntry("100%/caf\u00e9/\U0001f600/new", b"new"),
        ],
    )
    client.kv.namespaces.values.delete(
        "doomed", account_id=server.account_id, namespace_id=namespace_id
    )


@pytest.fixture
def corrupted(emulator: EmulatorServer, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A repository with one backup of NAMESPACE, which was then changed."""
    repo = str(tmp_path / "repo")
    env = cloudflare_env(emulator, KVSNAP_REPOSITORY=repo)
    namespace_id = create_namespace(emulator, NAMESPACE, SEED)
    backed_up = run_cli(["backup", NAMESPACE], env)
    assert backed_up.code == 0, backed_up.stderr
    corrupt(emulator, namespace_id)
    return repo, env


def test_cli_diff_json_names_changed_keys(
    corrupted: tuple[str, dict[str, str]],
) -> None:
    repo, env = corrupted
    result = run_cli(
        ["diff", f"latest@{NAMESPACE}", f"live:{NAMESPACE}", "--json"], env
    )
    assert result.code == 5, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    keys = [line for line in lines if line["type"] == "key"]
    assert {line["key"]: (line["change"], line["fields"]) for line in keys} == EXPECTED
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert (summary["added"], summary["removed"], summary["changed"]) == (1, 1, 3)
    assert summary["unchanged"] == len(SEED) - 4
    assert summary["identical"] is False
    changed = next(line for line in keys if line["key"] == "line\nbreak")
    assert changed["a"]["sha256"] == hashlib.sha256(b"first").hexdigest()
    assert changed["b"]["size"] == len(b"second")
    assert "first" not in result.stdout
    assert "second" not in result.stdout
    assert f"A: snapshot {snapshots(repo)[0].id}" in result.stderr
    assert f"B: live namespace {NAMESPACE}" in result.stderr


def test_cli_diff_keys_only_round_trip(
    corrupted: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    _repo, env = corrupted
    result = run_cli(
        ["diff", f"latest@{NAMESPACE}", f"live:{NAMESPACE}", "--keys-only"], env
    )
    assert result.code == 5, result.stderr
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(result.stdout)
    assert sorted(parse_keys_file(keys_file)) == sorted(EXPECTED)
    assert '"line\\nbreak"\n' in result.stdout
    assert "100%/caf\u00e9/\U0001f600/new\n" in result.stdout


def test_cli_diff_text_output_escapes_keys(
    corrupted: tuple[str, dict[str, str]],
) -> None:
    _repo, env = corrupted
    result = run_cli(["diff", f"latest@{NAMESPACE}", f"live:{NAMESPACE}"], env)
    assert result.code == 5, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(EXPECTED) + 1
    assert '"line\\nbreak"  value: 5 B, sha256' in result.stdout
    assert 'changed  "tab\\tkey"  metadata\n' in result.stdout
    assert "removed  doomed  (9 B, sha256" in result.stdout
    assert "expiration: 4000000000 -> 4100000000" in result.stdout
    assert lines[-1] == "1 added, 1 removed, 3 changed, 3 unchanged"


def test_cli_diff_between_snapshots_and_identical(
    corrupted: tuple[str, dict[str, str]],
) -> None:
    repo, env = corrupted
    second = run_cli(["backup", NAMESPACE], env)
    assert second.code == 0, second.stderr
    first_id, second_id = (manifest.id for manifest in snapshots(repo))

    between = run_cli(["diff", first_id, second_id[:6], "--json"], env)
    same = run_cli(["diff", f"latest@{NAMESPACE}", f"live:{NAMESPACE}"], env)
    same_json = run_cli(["diff", second_id, second_id, "--json"], env)

    assert between.code == 5, between.stderr
    keys = [json.loads(line) for line in between.stdout.splitlines()][:-1]
    assert {line["key"]: (line["change"], line["fields"]) for line in keys} == EXPECTED
    assert same.code == 0, same.stderr
    assert same.stdout == f"identical: {len(SEED)} keys\n"
    assert same_json.code == 0, same_json.stderr
    [summary] = [json.loads(line) for line in same_json.stdout.splitlines()]
    assert summary["identical"] is True
    assert summary["keys_a"] == summary["keys_b"] == len(SEED)


def test_cli_diff_prefix(corrupted: tuple[str, dict[str, str]]) -> None:
    _repo, env = corrupted
    result = run_cli(
        [
            "diff",
            f"latest@{NAMESPACE}",
            f"live:{NAMESPACE}",
            "--prefix",
            "100%",
            "--keys-only",
        ],
        env,
    )
    assert result.code == 5, result.stderr
    assert result.stdout == "100%/caf\u00e9/\U0001f600/new\n"


def test_cli_diff_errors(corrupted: tuple[str, dict[str, str]]) -> None:
    _repo, env = corrupted
    missing = run_cli(["diff", "abcdef12", f"live:{NAMESPACE}"], env)
    unknown_live = run_cli(["diff", f"latest@{NAMESPACE}", "live:nope", "--json"], env)
    both_modes = run_cli(["diff", "latest", "latest", "--json", "--keys-only"], env)

    assert missing.code == 22
    assert missing.stdout == ""
    assert "error: no snapshot 'abcdef12'" in missing.stderr
    assert unknown_live.code == 10
    assert "error: namespace 'nope' not found" in unknown_live.stderr
    assert json.loads(unknown_live.stdout)["exit_code"] == 10
    assert both_modes.code == 2
    assert both_modes.stdout == ""
    assert "either --keys-only or --json" in both_modes.stderr


def test_cli_diff_live_needs_token(corrupted: tuple[str, dict[str, str]]) -> None:
    _repo, env = corrupted
    env = {key: value for key, value in env.items() if key != "CLOUDFLARE_API_TOKEN"}
    result = run_cli(["diff", f"latest@{NAMESPACE}", f"live:{NAMESPACE}"], env)
    assert result.code == 10
    assert result.stdout == ""
    assert "no Cloudflare API token" in result.stderr
