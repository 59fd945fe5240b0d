"""wrangler as a second, independent client of the emulator.

wrangler's ``kv`` commands run against the emulator through
``CLOUDFLARE_API_BASE_URL``. The main case loads a ``kvsnap export`` file with
``wrangler kv bulk put`` and reads every pair back byte for byte.

wrangler checks npm for updates and may send metrics. So it only runs inside
a network namespace whose only interface is loopback (``unshare -n``), next to
an emulator on the same data folder (see tests/wrangler_sandbox.py). Seeding
and checks happen outside the namespace with an emulator that is stopped
before the sandbox starts, so two emulators never share the SQLite file.

tools/wrangler pins wrangler 4.86.0, the last release whose package.json
accepts Node.js 20, the version on the project's machines (4.87.0 requires
Node.js 22). The tests skip where wrangler is not installed (``npm ci --prefix
tools/wrangler``, which .ci/run does) or ``unshare -n`` is not permitted.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudflare
import pytest

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry
from tests.kvtools import (
    cloudflare_env,
    create_namespace,
    records_by_key,
    run_cli,
    sdk,
    snapshots,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
WRANGLER = REPO_ROOT / "tools" / "wrangler" / "node_modules" / ".bin" / "wrangler"
SANDBOX = Path(__file__).resolve().parent / "wrangler_sandbox.py"
PACKAGE_JSON = REPO_ROOT / "tools" / "wrangler" / "package.json"
SANDBOX_TIMEOUT_SECONDS = 240

# A week ahead: expirations must be at least 60 s in the future when written.
EXPIRATION = int(time.time()) + 7 * 86400
ALL_BYTES = bytes(range(256))
NOT_UTF8 = b"\xff\xfe\x00 not text \x80\xc3("

SOURCE = [
    SeedEntry("text/plain", b"hello, wrangler"),
    SeedEntry("text/json-like", b'{"b":1, "a":2}'),
    SeedEntry("text/number-like", b"123"),
    SeedEntry("text/empty", b""),
    SeedEntry("text/multiline", "line one\r\nline two\n\ttabbed \u2603\n".encode()),
    SeedEntry("bin/all-bytes", ALL_BYTES),
    SeedEntry("bin/not-utf8", NOT_UTF8, metadata={"kind": "binary"}),
    SeedEntry(
        "meta/object",
        b"v",
        metadata={"owner": "ops", "tags": ["a", "b"], "n": 1.5, "deep": {"x": None}},
    ),
    SeedEntry("expiring/plain", b"soon", expiration=EXPIRATION),
    SeedEntry("expiring/meta", b"both", metadata={"t": 1}, expiration=EXPIRATION),
    SeedEntry("\u00e9t\u00e9/\u00fcn\u00efc\u00f6d\u00e9", "caf\u00e9 \u2615".encode()),
    SeedEntry("emoji \U0001f511 key", "\U0001f600".encode()),
    SeedEntry("\u65e5\u672c\u8a9e\u306e\u30ad\u30fc", "\u5024".encode()),
    SeedEntry("combining e\u0301 and \u212b", b"nfd"),
    SeedEntry("path/with spaces/and?query#frag%41+plus", b"reserved characters"),
    SeedEntry("unit\x1fseparator", b"control character"),
]
SOURCE_BY_KEY = {entry.key: entry for entry in SOURCE}
TEXT_KEYS = [entry.key for entry in SOURCE if not entry.key.startswith("bin/")]
BINARY_KEYS = ["bin/all-bytes", "bin/not-utf8"]
RAW_GET_KEYS = [
    *BINARY_KEYS,
    "emoji \U0001f511 key",
    "path/with spaces/and?query#frag%41+plus",
]


@dataclass
class WranglerRun:
    args: list[str]
    returncode: int | None
    stdout: bytes
    stderr: str


def _skip_reason() -> str | None:
    if not WRANGLER.exists():
        if shutil.which("npm") is None:
            return "wrangler not installed and npm not found: install Node.js and npm"
        return "wrangler not installed: run `npm ci --prefix tools/wrangler`"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return (
            "unshare or ip not found: wrangler runs only in a network namespace "
            "with loopback alone"
        )
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return (
            "`unshare -n` is not permitted here (needs root or CAP_SYS_ADMIN): "
            f"{probe.stderr.strip()}"
        )
    return None


@pytest.fixture(scope="module")
def wrangler_available() -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)


def run_wrangler(
    data_dir: Path, workdir: Path, commands: list[list[str]]
) -> list[WranglerRun]:
    """Run wrangler commands in the sandbox against an emulator serving data_dir."""
    runs, _ = run_wrangler_counted(data_dir, workdir, commands)
    return runs


def run_wrangler_counted(
    data_dir: Path, workdir: Path, commands: list[list[str]]
) -> tuple[list[WranglerRun], dict[str, int]]:
    """Run wrangler commands like `run_wrangler`; also return the emulator's
    request counts by endpoint name, such as ``"DELETE bulk"``."""
    plan = {
        "data_dir": str(data_dir),
        "workdir": str(workdir),
        "wrangler": str(WRANGLER),
        "commands": commands,
    }
    plan_path = workdir.parent / f"{workdir.name}-plan.json"
    result_path = workdir.parent / f"{workdir.name}-result.json"
    plan_path.write_text(json.dumps(plan))
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(SANDBOX), plan_path, result_path],
        capture_output=True,
        text=True,
        timeout=SANDBOX_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(result_path.read_text())
    runs = [
        WranglerRun(
            run["args"],
            run["returncode"],
            base64.b64decode(run["stdout_base64"]),
            run["stderr"],
        )
        for run in result["runs"]
    ]
    return runs, result["requests"]


def remote(namespace_id: str, *args: str) -> list[str]:
    return [*args, "--remote", "--namespace-id", namespace_id]


def parse_bulk_get(stdout: bytes) -> dict[str, Any]:
    """Parse `kv bulk get` output: a JSON object, then a "Success!" line."""
    text = stdout.decode("utf-8")
    body, _, last = text.rstrip().rpartition("\n")
    assert last == "Success!", text
    return json.loads(body)


def read_namespace(server: EmulatorServer, namespace_id: str) -> dict[str, Any]:
    """Read every pair with the Python SDK: key -> (value, metadata, expiration)."""
    pairs: dict[str, Any] = {}
    with sdk(server) as client:
        for key in client.kv.namespaces.keys.list(
            namespace_id, account_id=server.account_id
        ):
            value = client.kv.namespaces.values.get(
                key.name, account_id=server.account_id, namespace_id=namespace_id
            ).read()
            pairs[key.name] = (value, key.metadata, key.expiration)
    return pairs


def expected_pair(entry: SeedEntry) -> tuple[bytes, Any, int | None]:
    return entry.value, entry.metadata, entry.expiration


def test_wrangler_version_is_pinned(wrangler_available: None, tmp_path: Path) -> None:
    (run,) = run_wrangler(tmp_path / "kv", tmp_path / "wrangler", [["--version"]])

    pinned = json.loads(PACKAGE_JSON.read_text())["dependencies"]["wrangler"]
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == pinned


def test_wrangler_bulk_put_loads_export(
    wrangler_available: None, tmp_path: Path
) -> None:
    data_dir = tmp_path / "kv"
    repo = str(tmp_path / "repo")
    export_file = tmp_path / "wrangler" / "export.json"
    export_file.parent.mkdir()
    with EmulatorServer(data_dir) as server:
        create_namespace(server, "source", SOURCE)
        target_id = create_namespace(server, "target")
        env = cloudflare_env(server)
        backup = run_cli(["backup", "--repo", repo, "source"], env)
        assert backup.code == 0, backup.stderr
        export = run_cli(
            ["export", "latest@source", "--repo", repo, "-o", str(export_file)], env
        )
        assert export.code == 0, export.stderr
    exported = json.loads(export_file.read_bytes())
    assert {item["key"] for item in exported} == set(SOURCE_BY_KEY)
    assert [item["base64"] for item in exported if "base64" in item] == [True, True]
    keys_file = tmp_path / "wrangler" / "keys.json"
    keys_file.write_text(json.dumps(TEXT_KEYS))

    put, bulk_get, listing, *raw_gets = run_wrangler(
        data_dir,
        tmp_path / "wrangler",
        [
            remote(target_id, "kv", "bulk", "put", str(export_file)),
            remote(target_id, "kv", "bulk", "get", str(keys_file)),
            remote(target_id, "kv", "key", "list"),
            *[remote(target_id, "kv", "key", "get", key) for key in RAW_GET_KEYS],
        ],
    )

    assert put.returncode == 0, put.stderr
    assert b"Success!" in put.stdout
    assert "Unexpected" not in put.stderr
    assert bulk_get.returncode == 0, bulk_get.stderr
    values = parse_bulk_get(bulk_get.stdout)
    assert values == {key: SOURCE_BY_KEY[key].value.decode() for key in TEXT_KEYS}
    assert listing.returncode == 0, listing.stderr
    listed = {item["name"]: item for item in json.loads(listing.stdout)}
    assert set(listed) == set(SOURCE_BY_KEY)
    for key, entry in SOURCE_BY_KEY.items():
        assert listed[key].get("metadata") == entry.metadata, key
        assert listed[key].get("expiration") == entry.expiration, key
    for key, run in zip(RAW_GET_KEYS, raw_gets, strict=True):
        assert run.returncode == 0, run.stderr
        assert run.stdout == SOURCE_BY_KEY[key].value, key

    with EmulatorServer(data_dir) as server:
        restored = read_namespace(server, target_id)
        assert restored == {key: expected_pair(e) for key, e in SOURCE_BY_KEY.items()}
        again = run_cli(["backup", "--repo", repo, "target"], cloudflare_env(server))
        assert again.code == 0, again.stderr
    by_title = {manifest.namespace_title: manifest for manifest in snapshots(repo)}
    assert records_by_key(repo, by_title["target"]) == records_by_key(
        repo, by_title["source"]
    )


def test_wrangler_key_put_get_list(wrangler_available: None, tmp_path: Path) -> None:
    data_dir = tmp_path / "kv"
    workdir = tmp_path / "wrangler"
    workdir.mkdir()
    blob = workdir / "blob.bin"
    blob.write_bytes(NOT_UTF8 + ALL_BYTES)
    with EmulatorServer(data_dir) as server:
        namespace_id = create_namespace(server, "keys")
    text_key = "\u043a\u043b\u044e\u0447/\U0001f511 x?y#z"
    metadata = {"a": [1, 2], "s": "\u00e9"}

    runs = run_wrangler(
        data_dir,
        workdir,
        [
            remote(
                namespace_id,
                *("kv", "key", "put", text_key, "text \u2603 value"),
                *("--metadata", json.dumps(metadata)),
                *("--expiration", str(EXPIRATION)),
            ),
            remote(namespace_id, "kv", "key", "put", "blob", "--path", str(blob)),
            remote(
                namespace_id,
                *("kv", "key", "put", "blob+meta", "--path", str(blob)),
                *("--metadata", '{"k":"v"}'),
            ),
            remote(namespace_id, "kv", "key", "get", text_key),
            remote(namespace_id, "kv", "key", "get", "blob"),
            remote(namespace_id, "kv", "key", "get", "blob+meta"),
            remote(namespace_id, "kv", "key", "list", "--prefix", "blob"),
            remote(namespace_id, "kv", "key", "list"),
        ],
    )

    for run in runs:
        assert run.returncode == 0, (run.args, run.stderr)
    get_text, get_blob, get_blob_meta, list_prefix, list_all = runs[3:]
    assert get_text.stdout == "text \u2603 value".encode()
    assert get_blob.stdout == blob.read_bytes()
    assert get_blob_meta.stdout == blob.read_bytes()
    assert [item["name"] for item in json.loads(list_prefix.stdout)] == [
        "blob",
        "blob+meta",
    ]
    assert json.loads(list_all.stdout) == [
        {"name": "blob"},
        {"name": "blob+meta", "metadata": {"k": "v"}},
        {"name": text_key, "expiration": EXPIRATION, "metadata": metadata},
    ]

    with EmulatorServer(data_dir) as server:
        assert read_namespace(server, namespace_id) == {
            "blob": (blob.read_bytes(), None, None),
            "blob+meta": (blob.read_bytes(), {"k": "v"}, None),
            text_key: ("text \u2603 value".encode(), metadata, EXPIRATION),
        }


# wrangler puts the key of `kv key delete` into the URL path with
# encodeURIComponent. Its neighbour differs only in "%41", so a second
# percent-decoding would delete the wrong key.
KEY_DELETED = "path/with spaces/and?query#frag%41+plus"
KEY_KEPT = "path/with spaces/and?query#fragA+plus"
BULK_DELETED = ["bulk/\u00e9t\u00e9", "bulk/emoji \U0001f511", "unit\x1fseparator"]
DELETE_SOURCE = [
    SeedEntry(KEY_DELETED, b"deleted by kv key delete"),
    SeedEntry(KEY_KEPT, b"kept", metadata={"neighbour": True}),
    SeedEntry(BULK_DELETED[0], b"deleted by kv bulk delete"),
    SeedEntry(BULK_DELETED[1], b"deleted too", metadata={"m": 1}),
    SeedEntry(BULK_DELETED[2], b"deleted too", expiration=EXPIRATION),
    SeedEntry("bulk/kept", b"kept", expiration=EXPIRATION),
    SeedEntry("bin/kept", NOT_UTF8),
]


def test_wrangler_key_and_bulk_delete(wrangler_available: None, tmp_path: Path) -> None:
    data_dir = tmp_path / "kv"
    workdir = tmp_path / "wrangler"
    workdir.mkdir()
    keys_file = workdir / "delete.json"
    # A key that was never written is no error for a bulk delete.
    keys_file.write_text(json.dumps([*BULK_DELETED, "never/written"]))
    with EmulatorServer(data_dir) as server:
        namespace_id = create_namespace(server, "deletes", DELETE_SOURCE)

    (key_delete, bulk_delete), requests = run_wrangler_counted(
        data_dir,
        workdir,
        [
            remote(namespace_id, "kv", "key", "delete", KEY_DELETED),
            remote(namespace_id, "kv", "bulk", "delete", str(keys_file), "--force"),
        ],
    )

    assert key_delete.returncode == 0, key_delete.stderr
    assert bulk_delete.returncode == 0, bulk_delete.stderr
    assert b"Success!" in bulk_delete.stdout
    # wrangler 4.86.0 sends bulk deletes to the deprecated DELETE .../bulk.
    assert requests == {"DELETE values": 1, "DELETE bulk": 1}
    deleted_keys = [KEY_DELETED, *BULK_DELETED]
    kept = [entry for entry in DELETE_SOURCE if entry.key not in deleted_keys]
    with EmulatorServer(data_dir) as server:
        assert read_namespace(server, namespace_id) == {
            entry.key: expected_pair(entry) for entry in kept
        }
        with sdk(server) as client:
            for key in deleted_keys:
                with pytest.raises(cloudflare.NotFoundError):
                    client.kv.namespaces.values.get(
                        key, account_id=server.account_id, namespace_id=namespace_id
                    )


def test_wrangler_bulk_put_rejects_scalar_metadata(
    wrangler_available: None, tmp_path: Path
) -> None:
    # wrangler 4.86.0 accepts only an object, an array or null as an item's
    # metadata, and checks the whole file before it sends any request.
    data_dir = tmp_path / "kv"
    repo = str(tmp_path / "repo")
    export_file = tmp_path / "wrangler" / "export.json"
    export_file.parent.mkdir()
    scalars = [
        SeedEntry("metadata/string", b"a", metadata="text"),
        SeedEntry("metadata/number", b"b", metadata=5),
        SeedEntry("metadata/list", b"c", metadata=[1, "two"]),
    ]
    with EmulatorServer(data_dir) as server:
        create_namespace(server, "scalars", scalars)
        target_id = create_namespace(server, "target")
        env = cloudflare_env(server)
        assert run_cli(["backup", "--repo", repo, "scalars"], env).code == 0
        export = run_cli(
            ["export", "latest", "--repo", repo, "-o", str(export_file)], env
        )
        assert export.code == 0, export.stderr

    (put,) = run_wrangler(
        data_dir,
        tmp_path / "wrangler",
        [remote(target_id, "kv", "bulk", "put", str(export_file))],
    )

    assert put.returncode == 1
    assert "Unexpected JSON input" in put.stderr
    assert '"metadata":"text"' in put.stderr
    assert '"metadata":5' in put.stderr
    assert '"metadata":[1,"two"]' not in put.stderr
    with EmulatorServer(data_dir) as server:
        assert read_namespace(server, target_id) == {}


def test_sandbox_rejects_host_network(tmp_path: Path) -> None:
    if [name for _, name in socket.if_nameindex()] == ["lo"]:
        pytest.skip("this test already runs in a loopback-only network namespace")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"commands": [["--version"]]}))
    result_path = tmp_path / "result.json"

    done = subprocess.run(
        [sys.executable, str(SANDBOX), plan_path, result_path],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert "refusing to run wrangler" in done.stderr
    assert not result_path.exists()
