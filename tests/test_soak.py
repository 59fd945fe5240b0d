"""The soak script (bench/soak.py): one short cycle, and its judging helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def load_soak() -> ModuleType:
    """Import bench/soak.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("bench_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up by name while it builds the classes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_soak_one_cycle_json(tmp_path: Path) -> None:
    # Faults without waits (no 429 or slow responses) keep the cycle short.
    command = [sys.executable, str(SCRIPT), "--cycles", "1", "--keys", "60"]
    command += ["--fault-rate", "0.3", "--faults", "500,502,503,drop,truncate"]
    command += ["--json"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cycles"] == 1
    assert result["commands_by_name"]["backup"] == 1
    assert sum(result["faults_injected"].values()) > 0
    assert result["kvsnap_api_requests"] > 0
    assert result["data_lost"] == 0
    assert result["quiet_failures"] == 0
    assert result["problems"] == []
    assert list(tmp_path.iterdir()) == [], "the working folder was not removed"


def test_soak_kills_backups_and_sweeps_orphans(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--cycles", "3", "--keys", "60"]
    command += ["--fault-rate", "0.1", "--faults", "500,503,drop"]
    command += ["--kill-share", "1", "--json"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # Every cycle starts one backup to kill, then runs the one it checks.
    assert result["commands_by_name"]["backup"] == 6
    assert result["backups_killed"] >= 1
    assert result["data_lost"] == 0
    assert result["quiet_failures"] == 0
    assert result["settings"]["kill_share"] == 1


def test_soak_rejects_kill_share_above_one() -> None:
    command = [sys.executable, str(SCRIPT), "--kill-share", "1.5"]

    done = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert "--kill-share 1.5 is not between 0 and 1" in done.stderr


def test_soak_rejects_unknown_fault_kind() -> None:
    command = [sys.executable, str(SCRIPT), "--faults", "500,lost"]

    done = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert "unknown fault kind 'lost'" in done.stderr
    assert done.stdout == ""


def test_reported_counts_reads_restore_error() -> None:
    soak = load_soak()
    stderr = (
        "error: restore of snapshot abc into namespace n1 stopped while writing,\n"
        "after it wrote 200 of 401 planned keys and up to 100 more and deleted "
        "0 of 0 planned keys: bulk write failed"
    )

    assert soak.reported_counts(stderr, "wrote") == (200, 100)
    assert soak.reported_counts(stderr, "deleted") == (0, 0)
    assert soak.reported_counts("error: list failed", "wrote") == (0, 0)


def test_differences_names_each_field() -> None:
    soak = load_soak()
    expected = {
        "same": (b"v", None, None),
        "value": (b"v", None, None),
        "meta": (b"v", '{"a": 1}', None),
        "gone": (b"v", None, None),
    }
    actual = {
        "same": (b"v", None, None),
        "value": (b"w", None, None),
        "meta": (b"v", '{"a": 1.0}', 5.0),
        "new": (b"v", None, None),
    }

    found = soak.differences(actual, expected)

    assert "'gone' missing" in found
    assert "'new' unexpected" in found
    assert "'value' differs in value" in found
    assert "'meta' differs in metadata, expiration" in found
    assert len(found) == 4
