"""Back up one namespace with wrangler's kv commands, as a benchmark baseline.

Usage, as root::

    unshare -n python bench/wrangler_baseline.py PLAN.json RESULT.json

The backup is what a shell script around wrangler does. One
``wrangler kv key list`` lists every key (wrangler pages through the list
itself). Then one ``wrangler kv bulk get FILE`` runs per 100 keys: wrangler
sends the whole file in one request, and the API takes at most 100 keys a
bulk get. Each call is its own wrangler process, at most ``concurrency`` of
them at once. The values go into one JSON file.

PLAN.json fields: ``data_dir`` (an emulator data folder that no other
emulator has open), ``workdir`` (wrangler's home and working folder),
``wrangler`` (the executable), ``namespace_id``, ``concurrency``,
``latency_ms`` ([low, high] or null), ``seed`` and ``out`` (the JSON file of
pairs). RESULT.json gets the wall time, the processes run and failed, the
keys read, and the emulator's request counts.

wrangler checks npm for updates and may send metrics, so the script exits
with status 2 before it starts wrangler when the network namespace has any
interface besides ``lo``, exactly as tests/wrangler_sandbox.py does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kvsnap.emulator import EmulatorServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wrangler_sandbox import enter_loopback_only, wrangler_environment

# The API's maximum number of keys in one bulk get.
BULK_GET_KEYS = 100
# One wrangler kv command takes about 1 s on a 2-core machine, and a listing
# of many pages takes longer. A command still running after this is hung.
COMMAND_TIMEOUT_SECONDS = 600


class WranglerFailed(Exception):
    """A wrangler command exited non-zero or printed output that is not JSON."""


def run_wrangler(
    wrangler: str, args: list[str], env: dict[str, str], workdir: Path
) -> str:
    """Run one wrangler command and return its stdout, or raise WranglerFailed."""
    try:
        done = subprocess.run(
            [wrangler, *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        raise WranglerFailed(
            f"wrangler {' '.join(args[:3])} timed out after {COMMAND_TIMEOUT_SECONDS} s"
        ) from exc
    if done.returncode != 0:
        raise WranglerFailed(
            f"wrangler {' '.join(args[:3])} exited {done.returncode}: "
            f"{done.stderr.strip()[-500:]}"
        )
    return done.stdout


def parse_json_output(stdout: str) -> Any:
    """Parse wrangler's JSON output, which `kv bulk get` follows with "Success!"."""
    text = stdout.strip()
    if text.endswith("Success!"):
        text = text[: -len("Success!")]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WranglerFailed(
            f"wrangler printed output that is not JSON: {exc}"
        ) from exc


def back_up(plan: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """List the keys, bulk-get them 100 at a time, write the pairs to plan["out"]."""
    workdir = Path(plan["workdir"])
    remote = ["--remote", "--namespace-id", plan["namespace_id"]]
    keys = parse_json_output(
        run_wrangler(plan["wrangler"], ["kv", "key", "list", *remote], env, workdir)
    )
    names = [key["name"] for key in keys]

    key_files = []
    for index, start in enumerate(range(0, len(names), BULK_GET_KEYS)):
        path = workdir / f"keys-{index:06d}.json"
        path.write_text(json.dumps(names[start : start + BULK_GET_KEYS]))
        key_files.append(path)

    def bulk_get(path: Path) -> dict[str, Any]:
        args = ["kv", "bulk", "get", str(path), *remote]
        return parse_json_output(run_wrangler(plan["wrangler"], args, env, workdir))

    with ThreadPoolExecutor(max_workers=plan["concurrency"]) as pool:
        batches = list(pool.map(bulk_get, key_files))

    pairs = [
        {"key": name, "value": value}
        for batch in batches
        for name, value in batch.items()
    ]
    Path(plan["out"]).write_text(json.dumps(pairs))
    return {"keys": len(pairs), "processes": 1 + len(key_files)}


def main(plan_path: str, result_path: str) -> int:
    if not enter_loopback_only():
        return 2

    plan = json.loads(Path(plan_path).read_text())
    workdir = Path(plan["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    latency = tuple(plan["latency_ms"]) if plan["latency_ms"] else None
    with EmulatorServer(
        plan["data_dir"], latency_ms=latency, seed=plan["seed"]
    ) as server:
        env = wrangler_environment(server, workdir)
        start = time.monotonic()
        try:
            outcome: dict[str, Any] = back_up(plan, env)
        except WranglerFailed as exc:
            outcome = {"error": str(exc)}
        outcome["wall_seconds"] = time.monotonic() - start
        outcome["stats"] = server.stats()
    Path(result_path).write_text(json.dumps(outcome))
    return 0 if "error" not in outcome else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: wrangler_baseline.py PLAN.json RESULT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
