"""Measure write requests and wall time of one restore on the emulator.

Usage: python bench/restore_requests.py [--keys 100000] [--latency-ms 0]

Seeds a namespace of N text keys (JSON values of 100 to 2,000 bytes) into a
fresh emulator, backs it up into a temporary local repository, then restores
the snapshot into a new namespace with `kvsnap restore --create --yes` as a
child process. Prints the restore's wall time, its phase timings, the write
requests counted by the emulator (bulk writes and namespace creation) and
the bound ceil(N/10000) + 1 as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudflare

from kvsnap.emulator import EmulatorServer
from kvsnap.seed import write_namespace

sys.path.insert(0, str(Path(__file__).parent))
from backup_requests import synthetic_entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        latency = (args.latency_ms, args.latency_ms) if args.latency_ms else None
        repo = str(Path(folder, "repo"))
        with EmulatorServer(Path(folder, "kv"), latency_ms=latency) as server:
            client = cloudflare.Cloudflare(
                api_token=server.token, base_url=server.base_url, max_retries=0
            )
            entries = synthetic_entries(args.keys)
            write_namespace(client, server.account_id, "bench", entries)
            env = {
                "CLOUDFLARE_API_TOKEN": server.token,
                "CLOUDFLARE_ACCOUNT_ID": server.account_id,
                "CLOUDFLARE_BASE_URL": server.base_url,
                "PATH": "",
            }
            kvsnap = [sys.executable, "-m", "kvsnap"]
            subprocess.run(
                [*kvsnap, "backup", "bench", "--repo", repo],
                env=env,
                capture_output=True,
                check=True,
            )
            server.reset_stats()
            start = time.monotonic()
            restore = [*kvsnap, "restore", "latest@bench", "--repo", repo]
            done = subprocess.run(
                [*restore, "--to", "restored", "--create", "--yes", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.monotonic() - start
            stats = server.stats()["requests"]

    summary = json.loads(done.stdout)
    writes = stats.get("PUT bulk", 0) + stats.get("POST namespaces", 0)
    print(
        json.dumps(
            {
                "keys": args.keys,
                "latency_ms": args.latency_ms,
                "written": summary["written"],
                "verified": summary["verified"],
                "write_requests": writes,
                "bound": math.ceil(args.keys / 10_000) + 1,
                "wall_seconds": round(seconds, 2),
                "phase_seconds": summary["seconds"],
                "requests_by_endpoint": stats,
                "machine": f"{platform.machine()}, Python {platform.python_version()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
