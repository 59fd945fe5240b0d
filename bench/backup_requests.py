"""Measure requests and wall time of one backup on the emulator.

Usage: python bench/backup_requests.py [--keys 10000] [--latency-ms 0]

Seeds a namespace of N text keys (100 to 2,000 bytes of JSON each) into a
fresh emulator, backs it up through the kvsnap CLI into a temporary local
repository, and prints the request count from /__emulator/stats, the bound
ceil(N/1000) + ceil(N/100) + 1 and the wall time of the backup as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cloudflare

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import SeedEntry, write_namespace


def iter_synthetic_entries(count: int, seed: int = 7) -> Iterator[SeedEntry]:
    """Yield N text keys with JSON values of 100 to 2,000 bytes, the same for a seed."""
    rng = random.Random(seed)
    for i in range(count):
        body = {"id": i, "name": f"user-{i}", "pad": "x" * rng.randint(60, 1900)}
        yield SeedEntry(f"user/{i:08d}", json.dumps(body).encode())


def synthetic_entries(count: int, seed: int = 7) -> list[SeedEntry]:
    return list(iter_synthetic_entries(count, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        latency = (args.latency_ms, args.latency_ms) if args.latency_ms else None
        with EmulatorServer(Path(folder, "kv"), latency_ms=latency) as server:
            client = cloudflare.Cloudflare(
                api_token=server.token, base_url=server.base_url, max_retries=0
            )
            write_namespace(
                client, server.account_id, "bench", synthetic_entries(args.keys)
            )
            server.reset_stats()
            env = {
                "CLOUDFLARE_API_TOKEN": server.token,
                "CLOUDFLARE_ACCOUNT_ID": server.account_id,
                "CLOUDFLARE_BASE_URL": server.base_url,
                "PATH": "",
            }
            command = [sys.executable, "-m", "kvsnap", "backup", "bench", "--json"]
            start = time.monotonic()
            done = subprocess.run(
                [*command, "--repo", str(Path(folder, "repo"))],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.monotonic() - start
            stats = server.stats()

    outcome = json.loads(done.stdout)
    print(
        json.dumps(
            {
                "keys": args.keys,
                "latency_ms": args.latency_ms,
                "requests": stats["total"],
                "requests_by_endpoint": stats["requests"],
                "bound": math.ceil(args.keys / 1000) + math.ceil(args.keys / 100) + 1,
                "wall_seconds": round(seconds, 2),
                "snapshot_keys": outcome["namespaces"][0]["keys"],
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                f"Python {platform.python_version()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
