"""Run every backup benchmark on the emulator and write the results.

Usage: python bench/harness.py [--quick] [--long] [--out DIR] [--only TEXT]...
                               [--no-resources]

Without --out the harness writes bench/results.json, BENCHMARKS.md and
bench/wall_time.png in the repository. With --out DIR it writes the three
files into DIR. --quick runs every row on a few hundred keys with almost no
latency, in well under a minute, and writes into a new temporary folder
unless --out is given. --long adds the per-key rows at 100,000 keys that the
default run leaves out for time. --only runs the rows whose id contains
TEXT, and --no-resources skips bench/resources.py.

Each row seeds a namespace of N text keys straight into the emulator's
SQLite store and starts an emulator on 127.0.0.1 with the row's latency and
request budget. It runs one backup as a child process and reads the
requests from the emulator's statistics (``/__emulator/stats``). The tools are
kvsnap, the per-key baseline (bench/perkey.py, values only and with a
metadata GET per key) and wrangler (bench/wrangler_baseline.py, inside
``unshare -n``). When bench/resources.py exists, its section (memory,
restore, snapshot size, verify throughput) follows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kvsnap
from kvsnap.emulator import DEFAULT_ACCOUNT_ID, EmulatorServer
from kvsnap.emulator.store import Store, Write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_requests import iter_synthetic_entries
from benchmarks_page import render

log = logging.getLogger("bench.harness")

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRANGLER = ROOT / "tools" / "wrangler" / "node_modules" / ".bin" / "wrangler"

# Cloudflare's API budget: 1,200 requests per 300 s per token.
REAL_BUDGET = (1200, 300.0)
# The targets of the benchmark.
REQUEST_TARGET_FACTOR = 1.01  # requests <= 1.01 x (ceil(N/1000) + ceil(N/100))
BUDGET_TARGET_RATIO = 1.05  # wall time <= 1.05 x the lower bound
SPEEDUP_TARGET = 20.0  # kvsnap >= 20x faster than the per-key baseline
# Pairs per direct write into the store while seeding.
SEED_CHUNK = 10_000
# No budget for kvsnap's own limiter in the rows without an emulator budget.
UNLIMITED_RATE = "1000000/1"
TITLE = "bench"


class BenchmarkFailed(Exception):
    """A benchmark's tool failed or returned the wrong number of keys."""


@dataclass(frozen=True)
class Budget:
    """A sliding-window budget of `requests` per `seconds`, with why it was chosen."""

    requests: int
    seconds: float
    note: str

    @property
    def label(self) -> str:
        return f"{self.requests}/{self.seconds:g} s"


@dataclass(frozen=True)
class Row:
    """One benchmark: a tool backing up `keys` keys under the emulator's settings."""

    id: str
    tool: str  # "kvsnap", "perkey", "perkey+metadata" or "wrangler"
    keys: int
    latency_ms: tuple[float, float]
    budget: Budget | None = None
    # The row whose speedup over the per-key baseline is held to SPEEDUP_TARGET.
    speedup_target: bool = False


@dataclass(frozen=True)
class Plan:
    """The settings of one harness run."""

    name: str
    concurrency: int
    seed: int
    rows: tuple[Row, ...]
    notes: tuple[str, ...]


def _latency_label(latency: tuple[float, float]) -> str:
    low, high = latency
    return f"{low:g} ms" if low == high else f"{low:g}-{high:g} ms"


def _row(
    tool: str,
    keys: int,
    latency: tuple[float, float],
    budget: Budget | None = None,
    speedup_target: bool = False,
) -> Row:
    """Build a row whose id reads like "kvsnap/10000/30-80 ms/budget 55/30 s"."""
    row_id = f"{tool}/{keys}/{_latency_label(latency)}"
    if budget is not None:
        row_id += f"/budget {budget.label}"
    return Row(row_id, tool, keys, latency, budget, speedup_target)


def _rows(
    small: int,
    large: int,
    huge: int,
    varied: tuple[float, float],
    fixed: tuple[float, float],
    budgets: dict[int, Budget],
    long: bool,
) -> tuple[Row, ...]:
    """Build the rows of a plan from its sizes, latencies and budgets."""
    rows = [
        _row("kvsnap", small, varied),
        _row("perkey", small, varied),
        _row("perkey+metadata", small, varied),
        _row("wrangler", small, varied),
        _row("kvsnap", large, varied),
    ]
    if long:
        rows += [_row("perkey", large, varied), _row("perkey+metadata", large, varied)]
    rows += [
        _row("kvsnap", small, fixed),
        _row("perkey", small, fixed),
        _row("kvsnap", large, fixed, speedup_target=True),
        _row("perkey", large, fixed),
    ]
    for keys in (small, large, huge):
        rows.append(_row("kvsnap", keys, varied, budgets[keys]))
    return tuple(rows)


def full_plan(long: bool) -> Plan:
    """Return the plan of the measured run, an estimated 17 minutes on 2 cores."""
    budgets = {
        10_000: Budget(55, 30.0, "scaled: 111 requests need 2 full windows"),
        100_000: Budget(550, 30.0, "scaled: 1,101 requests need 2 full windows"),
        1_000_000: Budget(
            1200, 30.0, "the real 1,200 requests, window 300 s divided by 10"
        ),
    }
    notes = [
        "The per-key baseline at 100,000 keys runs at 50 ms only, and its "
        "metadata variant at 10,000 keys only: each 100,000-key per-key row "
        "takes about 5 minutes on 2 cores, so `--long` adds the two rows at "
        "30-80 ms."
    ]
    if long:
        notes = []
    notes.append(
        "wrangler runs at 10,000 keys only: it starts one process per 100 keys, "
        "and 1,001 processes for 100,000 keys would take about 10 times as long."
    )
    rows = _rows(10_000, 100_000, 1_000_000, (30, 80), (50, 50), budgets, long)
    return Plan("full", 16, 7, rows, tuple(notes))


def quick_plan(long: bool) -> Plan:
    """Return the smoke plan: every kind of row on a few hundred keys."""
    budgets = {
        200: Budget(2, 1.0, "smoke run: 4 requests need 1 full window"),
        500: Budget(3, 1.0, "smoke run: 7 requests need 2 full windows"),
        1000: Budget(6, 1.0, "smoke run: 12 requests need 1 full window"),
    }
    notes = ("Smoke run with tiny sizes: the ratios and targets are not meaningful.",)
    rows = _rows(200, 500, 1000, (0, 2), (2, 2), budgets, long)
    return Plan("quick", 4, 7, rows, notes)


# -- bounds ---------------------------------------------------------------


def request_formula(keys: int) -> int:
    """Return list pages plus bulk gets for N keys: ceil(N/1000) + ceil(N/100)."""
    return max(1, math.ceil(keys / 1000)) + math.ceil(keys / 100)


def window_bound(requests: int, budget: Budget) -> float:
    """Return the least time between the first and the last of R accepted requests.

    The emulator's window, like Cloudflare's, accepts request k (from 1) no
    sooner than W seconds after request k - B, so request R comes at least
    floor((R - 1) / B) x W seconds after request 1.
    """
    return (requests - 1) // budget.requests * budget.seconds


def rate_bound(requests: int, budget: Budget) -> float:
    """Return R / (B / W): the time at the budget's average rate."""
    return requests * budget.seconds / budget.requests


# -- seeding --------------------------------------------------------------


def seed_namespace(data_dir: Path, keys: int, seed: int) -> str:
    """Write N synthetic text keys straight into an emulator store; return the id."""
    store = Store(data_dir)
    try:
        namespace = store.create_namespace(DEFAULT_ACCOUNT_ID, TITLE)
        chunk: list[Write] = []
        now = time.time()
        for entry in iter_synthetic_entries(keys, seed):
            chunk.append(Write(entry.key.encode(), entry.value, None, None))
            if len(chunk) == SEED_CHUNK:
                store.put(namespace, chunk, now)
                chunk = []
        if chunk:
            store.put(namespace, chunk, now)
    finally:
        store.close()
    return namespace.id


# -- running rows ---------------------------------------------------------


def _client_env(server: EmulatorServer, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLOUDFLARE_API_TOKEN": server.token,
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_BASE_URL": server.base_url,
    }


def _emulator(row: Row, data_dir: Path, seed: int) -> EmulatorServer:
    rate = (row.budget.requests, row.budget.seconds) if row.budget else None
    return EmulatorServer(
        data_dir, latency_ms=row.latency_ms, rate_limit=rate, seed=seed
    )


def _run_child(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    return done, time.monotonic() - start


def _check_exit(done: subprocess.CompletedProcess[str], tool: str) -> None:
    if done.returncode != 0:
        raise BenchmarkFailed(
            f"{tool} exited {done.returncode}: {done.stderr.strip()[-800:]}"
        )


def _parse_output(done: subprocess.CompletedProcess[str], tool: str) -> Any:
    """Return the JSON a tool printed on stdout, or raise BenchmarkFailed."""
    _check_exit(done, tool)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise BenchmarkFailed(f"{tool} printed output that is not JSON: {exc}") from exc


def _check_keys(found: int, row: Row) -> None:
    if found != row.keys:
        raise BenchmarkFailed(f"{row.tool} backed up {found} keys, expected {row.keys}")


def run_kvsnap(
    row: Row, plan: Plan, data_dir: Path, namespace_id: str, work: Path
) -> dict[str, Any]:
    """Back up with `kvsnap backup` into a new local repository."""
    rate = f"{row.budget.requests}/{row.budget.seconds:g}" if row.budget else None
    options = [
        "--concurrency",
        str(plan.concurrency),
        "--rate-limit",
        rate or UNLIMITED_RATE,
        "--no-anomaly-check",
        "--json",
    ]
    repo = work / "repo"
    with _emulator(row, data_dir, plan.seed) as server:
        command = [sys.executable, "-m", "kvsnap", "backup", namespace_id]
        done, seconds = _run_child(
            [*command, "--repo", str(repo), *options], _client_env(server, work), work
        )
        stats = server.stats()
    shutil.rmtree(repo, ignore_errors=True)
    outcome = _parse_output(done, "kvsnap backup")
    _check_keys(outcome["namespaces"][0]["keys"], row)
    return {
        "command": shlex.join(
            ["kvsnap", "backup", "NAMESPACE_ID", "--repo", "DIR", *options]
        ),
        "wall_seconds": seconds,
        "tool_seconds": outcome["seconds"],
        "stats": stats,
    }


def run_perkey(
    row: Row, plan: Plan, data_dir: Path, namespace_id: str, work: Path
) -> dict[str, Any]:
    """Back up with bench/perkey.py into a JSON file."""
    options = ["--concurrency", str(plan.concurrency)]
    if row.tool == "perkey+metadata":
        options.append("--metadata")
    out = work / "pairs.json"
    with _emulator(row, data_dir, plan.seed) as server:
        command = [sys.executable, str(BENCH / "perkey.py"), namespace_id, str(out)]
        done, seconds = _run_child(
            [*command, *options], _client_env(server, work), work
        )
        stats = server.stats()
    out.unlink(missing_ok=True)
    outcome = _parse_output(done, "perkey.py")
    _check_keys(outcome["keys"], row)
    return {
        "command": shlex.join(
            ["python", "bench/perkey.py", "NAMESPACE_ID", "OUT.json", *options]
        ),
        "wall_seconds": seconds,
        "tool_seconds": outcome["seconds"],
        "stats": stats,
    }


def wrangler_unavailable() -> str | None:
    """Return why the wrangler baseline cannot run here, or None when it can."""
    if not WRANGLER.exists():
        return "wrangler is not installed: run `npm ci --prefix tools/wrangler`"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found: wrangler runs only inside `unshare -n`"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip()}"
    return None


def run_wrangler(
    row: Row, plan: Plan, data_dir: Path, namespace_id: str, work: Path
) -> dict[str, Any]:
    """Back up with wrangler's kv commands in a network namespace of its own."""
    wrangler_plan = {
        "data_dir": str(data_dir),
        "workdir": str(work / "wrangler"),
        "wrangler": str(WRANGLER),
        "namespace_id": namespace_id,
        "concurrency": plan.concurrency,
        "latency_ms": list(row.latency_ms),
        "seed": plan.seed,
        "out": str(work / "pairs.json"),
    }
    plan_path, result_path = work / "wrangler-plan.json", work / "wrangler-result.json"
    plan_path.write_text(json.dumps(wrangler_plan))

    script = str(BENCH / "wrangler_baseline.py")
    done, _ = _run_child(
        ["unshare", "-n", sys.executable, script, str(plan_path), str(result_path)],
        dict(os.environ),
        work,
    )
    if not result_path.exists():
        _check_exit(done, "wrangler_baseline.py")
        raise BenchmarkFailed("wrangler_baseline.py exited 0 but wrote no result")
    outcome = json.loads(result_path.read_text())
    shutil.rmtree(work / "wrangler", ignore_errors=True)
    (work / "pairs.json").unlink(missing_ok=True)

    if "error" in outcome:
        raise BenchmarkFailed(outcome["error"])
    _check_keys(outcome["keys"], row)
    return {
        "command": (
            "wrangler kv key list --remote --namespace-id NAMESPACE_ID, then "
            f"wrangler kv bulk get KEYS.json per 100 keys, {plan.concurrency} at once"
        ),
        "wall_seconds": outcome["wall_seconds"],
        "tool_seconds": None,
        "processes": outcome["processes"],
        "stats": outcome["stats"],
    }


RUNNERS = {
    "kvsnap": run_kvsnap,
    "perkey": run_perkey,
    "perkey+metadata": run_perkey,
    "wrangler": run_wrangler,
}


def measure(
    row: Row, plan: Plan, data_dir: Path, namespace_id: str, work: Path
) -> dict[str, Any]:
    """Run one row and return its result, with bounds and targets."""
    result: dict[str, Any] = {
        "id": row.id,
        "tool": row.tool,
        "keys": row.keys,
        "latency_ms": list(row.latency_ms),
        "latency": _latency_label(row.latency_ms),
        "concurrency": plan.concurrency,
        "budget": dataclasses.asdict(row.budget) if row.budget else None,
    }
    if row.tool == "wrangler":
        reason = wrangler_unavailable()
        if reason is not None:
            log.warning("skipping %s: %s", row.id, reason)
            return result | {"skipped": reason}
    log.info("running %s", row.id)
    work.mkdir(parents=True, exist_ok=True)
    try:
        measured = RUNNERS[row.tool](row, plan, data_dir, namespace_id, work)
    except BenchmarkFailed as exc:
        log.error("%s failed: %s", row.id, exc)
        return result | {"error": str(exc)}

    stats = measured.pop("stats")
    result |= measured
    result |= {
        "requests": stats["total"],
        "requests_by_endpoint": stats["requests"],
        "statuses": stats["statuses"],
    }
    add_bounds(result, row)
    log.info(
        "%s: %d requests, %.2f s", row.id, result["requests"], result["wall_seconds"]
    )
    return result


def add_bounds(result: dict[str, Any], row: Row) -> None:
    """Add the request bound, the time bounds and the targets that apply to a row."""
    targets = []
    if row.tool == "kvsnap":
        formula = request_formula(row.keys)
        # kvsnap also lists the account's namespaces once, to check the id.
        result["requests_needed"] = formula + 1
        limit = REQUEST_TARGET_FACTOR * formula
        targets.append(
            {
                "name": "requests",
                "text": f"<= 1.01 x {formula:,} = {limit:,.1f}",
                "met": result["requests"] <= limit,
            }
        )
    if row.budget is not None:
        needed = result["requests_needed"]
        bound = window_bound(needed, row.budget)
        result["lower_bound_seconds"] = bound
        result["rate_bound_seconds"] = rate_bound(needed, row.budget)
        result["ratio"] = result["wall_seconds"] / bound if bound > 0 else None
        result["rate_ratio"] = result["wall_seconds"] / result["rate_bound_seconds"]
        targets.append(
            {
                "name": "budget",
                "text": f"wall <= {BUDGET_TARGET_RATIO} x lower bound",
                "met": result["ratio"] is not None
                and result["ratio"] <= BUDGET_TARGET_RATIO,
            }
        )
    result["targets"] = targets


def add_speedups(results: list[dict[str, Any]], rows: Iterable[Row]) -> None:
    """Give each kvsnap row without a budget its speedup over the per-key rows."""
    by_id = {result["id"]: result for result in results}
    for row in rows:
        if row.tool != "kvsnap" or row.budget is not None:
            continue
        result = by_id[row.id]
        label = _latency_label(row.latency_ms)
        baseline = by_id.get(f"perkey/{row.keys}/{label}")
        if (
            "wall_seconds" not in result
            or not baseline
            or "wall_seconds" not in baseline
        ):
            continue
        speedup = baseline["wall_seconds"] / result["wall_seconds"]
        result["speedup_vs_perkey"] = speedup
        if row.speedup_target:
            result["targets"].append(
                {
                    "name": "speedup",
                    "text": f">= {SPEEDUP_TARGET:g} x faster than per-key",
                    "met": speedup >= SPEEDUP_TARGET,
                }
            )


def run_rows(plan: Plan, only: list[str] | None, work: Path) -> list[dict[str, Any]]:
    """Run the plan's rows, seeding each size once, and return their results."""
    rows = [row for row in plan.rows if not only or any(t in row.id for t in only)]
    results_by_id: dict[str, dict[str, Any]] = {}
    for keys in sorted({row.keys for row in rows}):
        data_dir = work / f"kv-{keys}"
        start = time.monotonic()
        namespace_id = seed_namespace(data_dir, keys, plan.seed)
        log.info("seeded %d keys in %.1f s", keys, time.monotonic() - start)
        for index, row in enumerate(r for r in rows if r.keys == keys):
            row_work = work / f"row-{keys}-{index}"
            results_by_id[row.id] = measure(row, plan, data_dir, namespace_id, row_work)
            shutil.rmtree(row_work, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    results = [results_by_id[row.id] for row in rows]
    add_speedups(results, rows)
    return results


# -- the resources section ------------------------------------------------


def run_resources(work: Path, quick: bool) -> tuple[dict[str, Any], str]:
    """Run bench/resources.py's section if the module exists; return dict and text."""
    try:
        import resources
    except ImportError as exc:
        note = f"bench/resources.py could not be imported ({exc}), so it was skipped."
        log.warning("%s", note)
        return {"skipped": note}, f"## Resources\n\nNot measured: {note}\n"
    try:
        results = resources.run(work / "resources", quick)
    # The module belongs to another benchmark: whatever it raises is reported
    # in the output and the exit code, and the rows measured so far are kept.
    except Exception as exc:
        log.exception("bench/resources.py failed")
        note = f"bench/resources.py failed: {type(exc).__name__}: {exc}"
        return {"error": note}, f"## Resources\n\nNot measured: {note}\n"
    return results, resources.markdown(results)


# -- machine and output ---------------------------------------------------


def _read_first(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def describe_machine() -> dict[str, Any]:
    """Return CPU model, cores, memory, Python, kvsnap version and git commit."""
    memory = _read_first("/proc/meminfo", "MemTotal")
    memory_gib = int(memory.split()[0]) / 1024**2 if memory else None
    commit = _git("rev-parse", "HEAD")
    changed = _git("diff-index", "--quiet", "HEAD", "--")
    return {
        "cpu": _read_first("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "kvsnap": kvsnap.__version__,
        "git_commit": commit.stdout.strip()
        if commit and commit.returncode == 0
        else None,
        "git_uncommitted_changes": changed.returncode == 1 if changed else None,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Plot wall time against N for kvsnap and the per-key baseline, no budget."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for tool, marker in (("kvsnap", "o"), ("perkey", "s"), ("perkey+metadata", "^")):
        latencies = sorted(
            {r["latency"] for r in results if r["tool"] == tool and not r["budget"]}
        )
        for latency in latencies:
            points = sorted(
                (r["keys"], r["wall_seconds"])
                for r in results
                if r["tool"] == tool
                and r["latency"] == latency
                and not r["budget"]
                and "wall_seconds" in r
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker=marker, label=f"{tool}, {latency}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("keys (N)")
    axes.set_ylabel("wall time (s)")
    axes.set_title("Backup wall time on the emulator, no request budget")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny sizes")
    parser.add_argument("--long", action="store_true", help="add the long rows")
    parser.add_argument("--out", type=Path, help="folder for the three output files")
    parser.add_argument(
        "--only",
        action="append",
        help="run only the rows whose id contains this text (repeatable)",
    )
    parser.add_argument(
        "--no-resources", action="store_true", help="skip bench/resources.py"
    )
    args = parser.parse_args()
    # The harness logs its progress; the emulator, kvsnap and httpx only warnings.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    log.setLevel(logging.INFO)

    if args.only and args.out is None and not args.quick:
        parser.error("--only writes part of the rows: give --out DIR as well")
    plan = quick_plan(args.long) if args.quick else full_plan(args.long)
    out = args.out
    if out is None and args.quick:
        out = Path(tempfile.mkdtemp(prefix="kvsnap-bench-"))
    if out is None:
        paths = (
            BENCH / "results.json",
            ROOT / "BENCHMARKS.md",
            BENCH / "wall_time.png",
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        paths = (out / "results.json", out / "BENCHMARKS.md", out / "wall_time.png")

    started = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="kvsnap-bench-work-") as folder:
        work = Path(folder)
        rows = run_rows(plan, args.only, work)
        if args.no_resources:
            note = "skipped with --no-resources"
            resources = {"skipped": note}
            resources_text = f"## Resources\n\nNot measured: {note}.\n"
        else:
            resources, resources_text = run_resources(work, args.quick)

    results = {
        "date": date,
        "command": shlex.join(["python", "bench/harness.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "plan": {
            "name": plan.name,
            "concurrency": plan.concurrency,
            "seed": plan.seed,
            "real_budget": list(REAL_BUDGET),
            "notes": list(plan.notes),
        },
        "rows": rows,
        "resources": resources,
        "seconds": round(time.monotonic() - started, 1),
    }
    results_path, markdown_path, plot_path = paths
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, plot_path)
    image = os.path.relpath(plot_path, markdown_path.parent)
    markdown_path.write_text(render(results, image, resources_text))
    for path in paths:
        print(path)

    failed = [row["id"] for row in rows if "error" in row]
    if failed or "error" in resources:
        log.error("failed: %s", ", ".join(failed) or "bench/resources.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
