"""Measure memory, requests, time and size of backup, verify and restore.

Usage: python bench/resources.py [--quick] [--sizes 10000,100000,1000000]

For each size N a synthetic namespace is written straight into the SQLite
store of a fresh emulator, then `kvsnap backup`, `kvsnap verify --read-data`
and `kvsnap restore --create --yes` run as child processes against it. For
each child the bench records its peak RSS (ru_maxrss from os.wait4, exact
for that process) and its wall time. For the restore it also records the
write requests the emulator counted and the time until the first key
appears in the new namespace. The bound on write requests is
ceil(N / 10,000), plus the splits that the 100,000,000-byte body limit
forces, plus one namespace creation.
Snapshot sizes are compared with the compact JSON export of the same pairs
(the array `wrangler kv bulk put` takes), for the synthetic namespace and
the demo data. `verify --read-data` throughput is compared with
`zstd -d -c PARTS | sha256sum` over the same part files.

The synthetic namespace comes from a seeded RNG. Five keys hold 1 MiB
values, a 4 KB text repeated, so they compress well (none in quick mode).
Of the other keys, 98.5 % hold JSON objects of 100 to 2,000 bytes (ids,
timestamps and text drawn from a fixed vocabulary). 1 % hold 64 to 1,024
random bytes that are not UTF-8, and 0.5 % are empty or short plain text.
10 % of keys have metadata and 5 % expire 30 days ahead.
`run(workdir, quick)` returns the figures as a dict and `markdown(results)`
renders them. Run alone, the module prints the JSON.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudflare

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.store import Store, Write
from kvsnap.seed import demo_namespaces, write_namespace

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (300,)
SEED = 20261204
LARGE_VALUE_BYTES = 1024 * 1024
LARGE_VALUES = 5
BULK_PAIRS = 10_000
BULK_BYTES = 100_000_000
RSS_TARGET_MB = 150.0  # 10^6 bytes; peak RSS is reported in MiB
# How often the parent looks for the first restored key, and for how long.
POLL_SECONDS = 0.02
CHILD_TIMEOUT_SECONDS = 3600.0
# The emulator sets no rate limit; the client's own budget is lifted to match.
RATE_LIMIT = "1000000/1"

_WORDS = (  # noqa: SIM905
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu account order invoice customer session token region "
    "cache config feature flag enabled disabled pending active archived user "
    "admin editor viewer team project billing plan free pro enterprise trial "
    "paris london tokyo berlin madrid lisbon oslo vienna prague dublin "
    "created updated deleted status value count total price currency eur usd"
).split()


@dataclass
class Synthetic:
    """Counts and sizes of the synthetic namespace, computed while writing it."""

    keys: int
    value_bytes: int
    export_bytes: int  # the compact JSON array of bulk-put items
    binary: int
    large: int
    with_metadata: int
    with_expiration: int
    min_batches: int  # minimum bulk writes within both request limits


def _corpus(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(200_000))


def _entries(
    count: int, *, quick: bool, now: int
) -> list[tuple[str, bytes, str | None, int | None]]:
    """Return (key, value, metadata JSON, expiration) for `count` pairs."""
    rng = random.Random(SEED + count)
    corpus = _corpus(rng)
    large = set() if quick else set(rng.sample(range(count), LARGE_VALUES))
    prefixes = ("user/", "session/", "order/", "config/", "cache/")
    out = []
    for index in range(count):
        key = f"{prefixes[index % 5]}{rng.getrandbits(64):016x}-{index}"
        roll = rng.random()
        if index in large:
            start = rng.randrange(len(corpus) - 4096)
            text = corpus[start : start + 4096]
            value = (text * (LARGE_VALUE_BYTES // len(text) + 1)).encode()
            value = value[:LARGE_VALUE_BYTES]
        elif roll < 0.01:
            value = b"\xff" + rng.randbytes(rng.randint(63, 1023))
        elif roll < 0.015:
            value = f"v{rng.getrandbits(16)}".encode() if roll < 0.0125 else b""
        else:
            size = rng.randint(100, 2000)
            start = rng.randrange(len(corpus) - 2000)
            body = {
                "id": index,
                "uid": f"{rng.getrandbits(128):032x}",
                "created": now - rng.randrange(10**8),
                "tags": [rng.choice(_WORDS) for _ in range(3)],
                "active": rng.random() < 0.8,
                "note": "",
            }
            shell = len(json.dumps(body, separators=(",", ":")))
            body["note"] = corpus[start : start + max(0, size - shell)]
            value = json.dumps(body, separators=(",", ":")).encode()
        metadata = None
        if rng.random() < 0.10:
            metadata = json.dumps({"v": rng.randint(1, 9), "src": rng.choice(_WORDS)})
        expiration = now + 30 * 86_400 + index % 3600 if rng.random() < 0.05 else None
        out.append((key, value, metadata, expiration))
    return out


def _item(
    key: str, value: bytes, metadata: str | None, expiration: int | None
) -> dict[str, Any]:
    """Return the bulk-put item of one pair, as it appears in a JSON export."""
    try:
        item: dict[str, Any] = {"key": key, "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        item = {"key": key, "value": base64.b64encode(value).decode(), "base64": True}
    if metadata is not None:
        item["metadata"] = json.loads(metadata)
    if expiration is not None:
        item["expiration"] = expiration
    return item


def _item_size(item: dict[str, Any]) -> int:
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def _min_batches(sizes: list[int]) -> int:
    """Return the minimum number of consecutive bulk writes within both limits.

    Filling each request greedily is optimal for consecutive runs.
    """
    batches = count = 0
    body = 2
    for size in sizes:
        added = size + (1 if count else 0)
        if count and (count >= BULK_PAIRS or body + added > BULK_BYTES):
            batches += 1
            count, body, added = 0, 2, size
        count += 1
        body += added
    return batches + (1 if count else 0)


def seed_store(
    data_dir: Path, account: str, title: str, count: int, quick: bool
) -> Synthetic:
    """Write the synthetic namespace into the emulator's store, 10,000 at a time."""
    now = int(time.time())
    entries = _entries(count, quick=quick, now=now)
    store = Store(data_dir)
    try:
        namespace = store.create_namespace(account, title)
        for start in range(0, len(entries), BULK_PAIRS):
            chunk = entries[start : start + BULK_PAIRS]
            writes = [Write(k.encode(), v, e, m) for k, v, m, e in chunk]
            store.put(namespace, writes, now)
    finally:
        store.close()
    sized = []
    binary = value_bytes = 0
    for key, value, metadata, expiration in entries:
        item = _item(key, value, metadata, expiration)
        binary += bool(item.get("base64"))
        value_bytes += len(value)
        sized.append((key.encode(), _item_size(item)))
    sized.sort()
    sizes = [size for _, size in sized]
    return Synthetic(
        keys=count,
        value_bytes=value_bytes,
        export_bytes=2 + sum(sizes) + max(0, count - 1),
        binary=binary,
        large=sum(len(v) == LARGE_VALUE_BYTES for _, v, _, _ in entries),
        with_metadata=sum(m is not None for _, _, m, _ in entries),
        with_expiration=sum(e is not None for _, _, _, e in entries),
        min_batches=_min_batches(sizes),
    )


# Child processes.


@dataclass
class Child:
    code: int
    seconds: float
    peak_rss_mib: float
    stdout: str
    stderr: str


# The child is started by a small Python launcher that reaps it with wait4.
# Linux starts a process's peak RSS at that of the process it was forked
# from, so a child forked straight from this process (which runs the
# emulator and keeps the generated pairs) would report this process's size.
_LAUNCHER = """
import json, os, subprocess, sys
process = subprocess.Popen(sys.argv[3:])
with open(sys.argv[2], "w") as out:
    out.write(str(process.pid))
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "maxrss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_child(args: list[str], env: dict[str, str], folder: Path, name: str) -> Child:
    """Run `python -m kvsnap ARGS` and return its exit code, time and peak RSS."""
    out_path, err_path = folder / f"{name}.out", folder / f"{name}.err"
    usage_path = folder / f"{name}.rusage.json"
    pid_path = folder / f"{name}.pid"
    usage_path.unlink(missing_ok=True)
    command = [sys.executable, "-c", _LAUNCHER, str(usage_path), str(pid_path)]
    command += [sys.executable, "-m", "kvsnap", *args]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        try:
            process.wait(timeout=CHILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_path.read_text()), signal.SIGKILL)
            process.kill()
            process.wait()
            raise
        seconds = time.monotonic() - start
    usage = json.loads(usage_path.read_text())
    return Child(
        code=os.waitstatus_to_exitcode(usage["status"]),
        seconds=round(seconds, 3),
        peak_rss_mib=round(usage["maxrss_kib"] / 1024, 1),  # KiB on Linux
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _env(server: EmulatorServer) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDFLARE_", "KVSNAP_", "AWS_"))
    }
    env |= {
        "CLOUDFLARE_API_TOKEN": server.token,
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_BASE_URL": server.base_url,
    }
    return env


def _check(child: Child, what: str) -> None:
    if child.code != 0:
        tail = child.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"{what} exited {child.code}: {' | '.join(tail)}")


class FirstKey:
    """Poll the store from a thread for the first key of a namespace."""

    def __init__(self, db: Path, title: str, limit: float) -> None:
        self.db, self.title, self.limit = db, title, limit
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.started = time.monotonic()

    def start(self) -> FirstKey:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _poll(self) -> None:
        conn = sqlite3.connect(self.db, timeout=5)
        query = (
            "SELECT 1 FROM pairs WHERE ns = "
            "(SELECT pk FROM namespaces WHERE title = ?) LIMIT 1"
        )
        try:
            while not self._stop.is_set():
                if time.monotonic() - self.started > self.limit:
                    return
                try:
                    if conn.execute(query, (self.title,)).fetchone():
                        self.seconds = round(time.monotonic() - self.started, 3)
                        return
                except sqlite3.OperationalError:
                    pass  # locked by the writer; look again
                self._stop.wait(POLL_SECONDS)
        finally:
            conn.close()


# One size.


def _manifest(repo: Path) -> tuple[dict[str, Any], int]:
    found = sorted((repo / "snapshots").rglob("*.json"))
    path = found[-1]
    return json.loads(path.read_bytes()), path.stat().st_size


def local_limit(repo: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Time `zstd -d -c PARTS | sha256sum` over the snapshot's parts."""
    paths = [str(repo / part["path"]) for part in manifest["parts"]]
    raw = sum(part["raw_size"] for part in manifest["parts"])
    zstd = shutil.which("zstd")
    start = time.monotonic()
    if zstd and shutil.which("sha256sum"):
        tool = "zstd -d -c | sha256sum"
        decompress = subprocess.Popen(
            [zstd, "-q", "-d", "-c", *paths], stdout=subprocess.PIPE
        )
        digest = subprocess.run(
            ["sha256sum"], stdin=decompress.stdout, capture_output=True, check=True
        )
        assert decompress.stdout is not None
        decompress.stdout.close()
        decompress.wait()
        del digest
    else:
        tool = "python zstandard stream + hashlib (zstd CLI absent)"
        code = (
            "import hashlib,sys,zstandard\n"
            "h=hashlib.sha256()\n"
            "for p in sys.argv[1:]:\n"
            "    with open(p,'rb') as f:\n"
            "        r=zstandard.ZstdDecompressor().stream_reader(f)\n"
            "        while b:=r.read(1<<20): h.update(b)\n"
            "print(h.hexdigest())\n"
        )
        subprocess.run(
            [sys.executable, "-c", code, *paths], check=True, capture_output=True
        )
    seconds = time.monotonic() - start
    return {"tool": tool, "seconds": round(seconds, 3), "mb_per_s": _rate(raw, seconds)}


def _rate(size: int, seconds: float) -> float:
    return round(size / 1e6 / seconds, 1) if seconds > 0 else 0.0


def measure_size(workdir: Path, count: int, quick: bool) -> dict[str, Any]:
    """Seed N keys, then back up, verify and restore them, measuring each step."""
    folder = workdir / f"n{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    kv, repo = folder / "kv", folder / "repo"
    started = time.monotonic()
    title = f"bench-{count}"
    from kvsnap.emulator import DEFAULT_ACCOUNT_ID

    synthetic = seed_store(kv, DEFAULT_ACCOUNT_ID, title, count, quick)
    seed_seconds = round(time.monotonic() - started, 1)
    rate = ["--rate-limit", RATE_LIMIT]
    with EmulatorServer(kv) as server:
        env = _env(server)
        backup = run_child(
            ["backup", title, "--repo", str(repo), "--json", *rate],
            env,
            folder,
            "backup",
        )
        _check(backup, "backup")
        manifest, manifest_size = _manifest(repo)
        snapshot = manifest["id"]
        verify = run_child(
            ["verify", snapshot, "--read-data", "--repo", str(repo), "--json"],
            env,
            folder,
            "verify",
        )
        _check(verify, "verify")
        # The same command without --read-data: start-up, manifest and HEADs.
        fixed = run_child(
            ["verify", snapshot, "--repo", str(repo), "--json"], env, folder, "quick"
        )
        _check(fixed, "verify without --read-data")
        limit = local_limit(repo, manifest)
        server.reset_stats()
        new_title = f"{title}-restored"
        poller = FirstKey(kv / "kv.sqlite3", new_title, CHILD_TIMEOUT_SECONDS).start()
        restore = run_child(
            [
                "restore",
                snapshot,
                "--to",
                new_title,
                "--create",
                "--yes",
                "--repo",
                str(repo),
                "--json",
                *rate,
            ],
            env,
            folder,
            "restore",
        )
        poller.stop()
        _check(restore, "restore")
        stats = server.stats()["requests"]
    shutil.rmtree(kv, ignore_errors=True)

    raw = sum(part["raw_size"] for part in manifest["parts"])
    stored = sum(part["size"] for part in manifest["parts"]) + manifest_size
    writes = stats.get("PUT bulk", 0) + stats.get("PUT values", 0)
    creations = stats.get("POST namespaces", 0)
    floor = math.ceil(synthetic.keys / BULK_PAIRS)
    result = {
        "keys": count,
        "namespace": {
            "value_bytes": synthetic.value_bytes,
            "binary_values": synthetic.binary,
            "values_1mib": synthetic.large,
            "with_metadata": synthetic.with_metadata,
            "with_expiration": synthetic.with_expiration,
            "seed_seconds": seed_seconds,
        },
        "backup": {"seconds": backup.seconds, "peak_rss_mib": backup.peak_rss_mib},
        "verify": {
            "seconds": verify.seconds,
            "peak_rss_mib": verify.peak_rss_mib,
            "raw_bytes": raw,
            "mb_per_s": _rate(raw, verify.seconds),
            "without_read_data_seconds": fixed.seconds,
            "reading_mb_per_s": _rate(raw, verify.seconds - fixed.seconds),
            "local_limit": limit,
        },
        "restore": {
            "seconds": restore.seconds,
            "peak_rss_mib": restore.peak_rss_mib,
            "first_key_seconds": poller.seconds,
            "write_requests": writes + creations,
            "bulk_writes": stats.get("PUT bulk", 0),
            "single_writes": stats.get("PUT values", 0),
            "namespace_creations": creations,
            "bound": synthetic.min_batches + 1,
            "splits_forced": synthetic.min_batches - floor,
            "requests": stats,
        },
        "size": {
            "snapshot_bytes": stored,
            "parts": len(manifest["parts"]),
            "export_bytes": synthetic.export_bytes,
            "ratio": round(stored / synthetic.export_bytes, 4),
        },
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def measure_demo(workdir: Path) -> list[dict[str, Any]]:
    """Back up the demo namespaces and compare each snapshot with its JSON export."""
    folder = workdir / "demo"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    now = int(time.time())
    out = []
    with EmulatorServer(folder / "kv") as server:
        client = cloudflare.Cloudflare(
            api_token=server.token, base_url=server.base_url, max_retries=0
        )
        namespaces = demo_namespaces()
        for title, entries in namespaces.items():
            write_namespace(client, server.account_id, title, entries)
        env = _env(server)
        for title, entries in namespaces.items():
            repo = folder / f"repo-{title}"
            child = run_child(
                ["backup", title, "--repo", str(repo)], env, folder, title
            )
            _check(child, f"backup of {title}")
            manifest, manifest_size = _manifest(repo)
            export = 2 + max(0, len(entries) - 1)
            for entry in entries:
                expiration = entry.expiration
                if entry.expiration_ttl is not None:
                    expiration = now + entry.expiration_ttl
                metadata = (
                    None if entry.metadata is None else json.dumps(entry.metadata)
                )
                export += _item_size(
                    _item(entry.key, entry.value, metadata, expiration)
                )
            stored = sum(part["size"] for part in manifest["parts"]) + manifest_size
            out.append(
                {
                    "namespace": title,
                    "keys": manifest["keys"],
                    "value_bytes": manifest["value_bytes"],
                    "snapshot_bytes": stored,
                    "export_bytes": export,
                    "ratio": round(stored / export, 4),
                }
            )
    shutil.rmtree(folder, ignore_errors=True)
    return out


def run(
    workdir: Path, quick: bool, sizes: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Measure every size (300 keys in quick mode) and the demo data."""
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = sizes or (QUICK_SIZES if quick else SIZES)
    results: dict[str, Any] = {
        "quick": quick,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rss_target_mb": RSS_TARGET_MB,
        "sizes": [measure_size(workdir, count, quick) for count in chosen],
        "demo": measure_demo(workdir),
    }
    return results


def markdown(results: dict[str, Any]) -> str:
    """Render the results as Markdown tables with the targets beside them."""
    sizes = results["sizes"]
    lines = [
        "### Peak RSS and wall time",
        "",
        "Peak RSS is ru_maxrss of each `python -m kvsnap` child process, in MiB.",
        f"Target: at most {results['rss_target_mb']:.0f} MB "
        f"({results['rss_target_mb'] * 1e6 / 2**20:.1f} MiB) at every size.",
        "",
        "| keys | backup MiB | backup s | verify --read-data MiB | verify s "
        "| restore MiB | restore s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for item in sizes:
        b, v, r = item["backup"], item["verify"], item["restore"]
        lines.append(
            f"| {item['keys']:,} | {b['peak_rss_mib']:.1f} | {b['seconds']:.1f} "
            f"| {v['peak_rss_mib']:.1f} | {v['seconds']:.1f} "
            f"| {r['peak_rss_mib']:.1f} | {r['seconds']:.1f} |"
        )

    lines += [
        "",
        "### Restore write requests",
        "",
        "Bound: ceil(N / 10,000) plus the splits the 100,000,000-byte body limit "
        "forces, plus one namespace creation.",
        "",
        "| keys | write requests | bound | splits forced | first key after s |",
        "|---:|---:|---:|---:|---:|",
    ]

    for item in sizes:
        r = item["restore"]
        first = (
            "-" if r["first_key_seconds"] is None else f"{r['first_key_seconds']:.2f}"
        )
        lines.append(
            f"| {item['keys']:,} | {r['write_requests']} | {r['bound']} "
            f"| {r['splits_forced']} | {first} |"
        )

    lines += [
        "",
        "### verify --read-data throughput",
        "",
        "MB/s of uncompressed part bytes (10^6 bytes) over the process wall time.",
        "The reading column leaves out the time of the same command without",
        "`--read-data` (start-up, manifest, one HEAD per part).",
        "Target: a share of at least 50 %. At small sizes the process start-up",
        "takes most of the wall time, so the reading share shows the rate there.",
        "",
        "| keys | uncompressed MB | kvsnap MB/s | reading MB/s | local limit MB/s "
        "| share | reading share | limit tool |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    for item in sizes:
        v = item["verify"]
        limit = v["local_limit"]
        tool = limit["tool"].replace("|", "\\|")  # a pipe would end the cell
        best = limit["mb_per_s"] or 1.0
        share, reading = v["mb_per_s"] / best, v["reading_mb_per_s"] / best
        # Below about 100 MB the start-up time dominates and its noise can
        # exceed the reading time, which leaves no reading rate to show.
        reading_text = f"{v['reading_mb_per_s']:.1f}" if reading else "-"
        reading_share = f"{reading:.0%}" if reading else "-"
        lines.append(
            f"| {item['keys']:,} | {v['raw_bytes'] / 1e6:.1f} | {v['mb_per_s']:.1f} "
            f"| {reading_text} | {limit['mb_per_s']:.1f} | {share:.0%} "
            f"| {reading_share} | {tool} |"
        )

    lines += [
        "",
        "### Snapshot size against the JSON export",
        "",
        "Snapshot: parts plus manifest. Export: the compact JSON array of "
        "bulk-put items (text values as text, others as base64).",
        "",
        "| data | keys | snapshot bytes | export bytes | ratio |",
        "|---|---:|---:|---:|---:|",
    ]

    for item in sizes:
        s = item["size"]
        lines.append(
            f"| synthetic | {item['keys']:,} | {s['snapshot_bytes']:,} "
            f"| {s['export_bytes']:,} | {s['ratio']:.3f} |"
        )
    for demo in results["demo"]:
        lines.append(
            f"| demo {demo['namespace']} | {demo['keys']:,} "
            f"| {demo['snapshot_bytes']:,} | {demo['export_bytes']:,} "
            f"| {demo['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated key counts")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    if args.workdir:
        results = run(args.workdir, args.quick, sizes)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kvsnap-resources-") as folder:
            results = run(Path(folder), args.quick, sizes)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
