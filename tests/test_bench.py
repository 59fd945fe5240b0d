"""The benchmark harness (bench/harness.py): a --quick run and its bounds.

The benchmarks themselves are not part of the test suite. These tests run
the harness once on a few hundred keys into a temporary folder. They check
that every row is there with request counts that follow from N, and that
the bounds, ratios, Markdown page and plot are computed from them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "harness.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HARNESS_TIMEOUT_SECONDS = 240


def load_harness() -> ModuleType:
    """Import bench/harness.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("bench_harness", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up by name while it builds the classes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = load_harness()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run `harness.py --quick --out DIR` once; return its outputs."""
    out = tmp_path_factory.mktemp("bench-out")
    page = ROOT / "BENCHMARKS.md"
    before = page.read_bytes() if page.exists() else None
    env = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("bench-tmp"))}

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_SECONDS,
    )

    after = page.read_bytes() if page.exists() else None
    return {
        "done": done,
        "out": out,
        "page_unchanged": before == after,
        "results": json.loads((out / "results.json").read_text()),
    }


def rows_by_id(quick_run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in quick_run["results"]["rows"]}


def test_quick_run_exits_zero(quick_run: dict[str, Any]) -> None:
    done = quick_run["done"]
    out = quick_run["out"]

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(out / "results.json"),
        str(out / "BENCHMARKS.md"),
        str(out / "wall_time.png"),
    ]
    assert quick_run["page_unchanged"]


def test_quick_run_has_every_row(quick_run: dict[str, Any]) -> None:
    expected = [row.id for row in harness.quick_plan(long=False).rows]

    assert [row["id"] for row in quick_run["results"]["rows"]] == expected
    for row in quick_run["results"]["rows"]:
        assert "error" not in row, row


def test_quick_run_header_fields(quick_run: dict[str, Any]) -> None:
    results = quick_run["results"]
    machine = results["machine"]

    assert results["command"].startswith("python bench/harness.py --quick --out ")
    assert results["plan"]["name"] == "quick"
    assert machine["cores"] >= 1
    assert machine["python"].count(".") == 2
    assert machine["kvsnap"]
    assert "resources" in results


def test_kvsnap_requests_follow_formula(quick_run: dict[str, Any]) -> None:
    for row in quick_run["results"]["rows"]:
        if row["tool"] != "kvsnap":
            continue
        keys = row["keys"]
        by_endpoint = row["requests_by_endpoint"]
        # One namespace list, the list pages and one bulk get per 100 keys.
        assert row["requests"] == math.ceil(keys / 1000) + math.ceil(keys / 100) + 1
        assert by_endpoint["POST bulk/get"] == math.ceil(keys / 100), row["id"]
        assert by_endpoint["GET namespaces"] == 1, row["id"]
        assert row["requests_needed"] == row["requests"]
        assert row["statuses"] == {"200": row["requests"]}, row["id"]


def test_perkey_requests_follow_keys(quick_run: dict[str, Any]) -> None:
    for row in quick_run["results"]["rows"]:
        if not row["tool"].startswith("perkey"):
            continue
        keys = row["keys"]
        reads = 2 * keys if row["tool"] == "perkey+metadata" else keys
        assert row["requests"] == math.ceil(keys / 1000) + reads, row["id"]
        assert row["requests_by_endpoint"]["GET values"] == keys, row["id"]


def test_wrangler_row_measured_or_skipped(quick_run: dict[str, Any]) -> None:
    (row,) = [r for r in quick_run["results"]["rows"] if r["tool"] == "wrangler"]
    if "skipped" in row:
        pytest.skip(f"wrangler baseline not run: {row['skipped']}")

    keys = row["keys"]
    assert row["processes"] == 1 + math.ceil(keys / 100)
    assert row["requests_by_endpoint"]["POST bulk/get"] == math.ceil(keys / 100)
    assert row["wall_seconds"] > 0


def test_budget_rows_ratio_and_bounds(quick_run: dict[str, Any]) -> None:
    budgeted = [r for r in quick_run["results"]["rows"] if r["budget"]]

    assert len(budgeted) == 3
    for row in budgeted:
        budget = row["budget"]
        needed = row["requests_needed"]
        bound = (needed - 1) // budget["requests"] * budget["seconds"]
        assert row["lower_bound_seconds"] == bound
        assert (
            row["rate_bound_seconds"] == needed * budget["seconds"] / budget["requests"]
        )
        assert row["ratio"] == pytest.approx(row["wall_seconds"] / bound)
        # The emulator enforces the window, so no run can beat its bound.
        assert row["wall_seconds"] >= bound
        names = [target["name"] for target in row["targets"]]
        assert names == ["requests", "budget"]


def test_speedup_against_perkey(quick_run: dict[str, Any]) -> None:
    rows = rows_by_id(quick_run)

    for row in rows.values():
        if row["tool"] != "kvsnap" or row["budget"]:
            continue
        baseline = rows.get(f"perkey/{row['keys']}/{row['latency']}")
        if baseline is None:
            assert "speedup_vs_perkey" not in row
            continue
        expected = baseline["wall_seconds"] / row["wall_seconds"]
        assert row["speedup_vs_perkey"] == pytest.approx(expected)
    targeted = [r for r in rows.values() if "speedup" in str(r.get("targets"))]
    assert len(targeted) == 1


def test_outputs_page_and_plot(quick_run: dict[str, Any]) -> None:
    out = quick_run["out"]
    page = (out / "BENCHMARKS.md").read_text()
    image = (out / "wall_time.png").read_bytes()

    assert image.startswith(PNG_SIGNATURE)
    assert len(image) > 5_000
    assert page.startswith("# Benchmarks\n")
    assert quick_run["results"]["command"] in page
    assert "![Backup wall time against N" in page
    assert "**Smoke run (--quick).**" in page
    for row in quick_run["results"]["rows"]:
        assert f"| {row['id']} |" in page


@pytest.mark.parametrize(
    ("requests", "budget", "seconds"),
    [
        (1, (55, 30.0), 0.0),
        (55, (55, 30.0), 0.0),
        (56, (55, 30.0), 30.0),
        (111, (55, 30.0), 60.0),
        (1101, (550, 30.0), 60.0),
        (11_001, (1200, 30.0), 270.0),
    ],
)
def test_window_bound_cases(
    requests: int, budget: tuple[int, float], seconds: float
) -> None:
    window = harness.Budget(*budget, note="")

    assert harness.window_bound(requests, window) == seconds


def test_rate_bound_is_requests_over_rate() -> None:
    budget = harness.Budget(1200, 300.0, note="")

    assert harness.rate_bound(1101, budget) == pytest.approx(275.25)


@pytest.mark.parametrize(
    ("keys", "requests"), [(200, 3), (1000, 11), (10_000, 110), (100_000, 1100)]
)
def test_request_formula_cases(keys: int, requests: int) -> None:
    assert harness.request_formula(keys) == requests


def test_resources_missing_is_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes `import resources` raise ImportError.
    monkeypatch.setitem(sys.modules, "resources", None)

    results, text = harness.run_resources(tmp_path, quick=True)

    assert "skipped" in results
    assert "Not measured" in text
