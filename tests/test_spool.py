"""Sweeping the plan folders that killed restores leave in the temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvsnap import spool

HOUR = 3600.0


def dead_pid() -> int:
    """The id of a child process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_folder(root: Path, name: str, age: float) -> Path:
    folder = root / name
    folder.mkdir()
    spooled = folder / "writes.jsonl"
    spooled.write_text('{"key":"k","value":"secret"}\n')
    stamp = time.time() - age
    for path in (spooled, folder):
        os.utime(path, (stamp, stamp))
    return folder


def test_removes_old_folders_of_ended_processes(tmp_path: Path) -> None:
    ended = dead_pid()
    abandoned = make_folder(tmp_path, f"kvsnap-restore-{ended}-ab_12", 2 * HOUR)
    recent = make_folder(tmp_path, f"kvsnap-restore-{ended}-cd_34", 60.0)
    running = make_folder(tmp_path, f"kvsnap-restore-{os.getpid()}-ef56", 2 * HOUR)
    unnamed = make_folder(tmp_path, "kvsnap-restore-x1y2z3ab", 2 * HOUR)
    other = make_folder(tmp_path, f"other-{ended}-ab_12", 2 * HOUR)

    removed = spool.remove_abandoned(tmp_path)

    assert removed == [abandoned]
    assert not abandoned.exists()
    for kept in (recent, running, unnamed, other):
        assert kept.exists(), kept.name


def test_spool_recent_file_keeps_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, f"kvsnap-restore-{dead_pid()}-gh78", 2 * HOUR)
    # A restore in another PID namespace still appends to its spool file.
    (folder / "writes.jsonl").touch()

    assert spool.remove_abandoned(tmp_path) == []
    assert folder.exists()


def test_new_folder_names_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool.tempfile, "tempdir", str(tmp_path))
    abandoned = make_folder(tmp_path, f"kvsnap-restore-{dead_pid()}-ij90", 2 * HOUR)

    with spool.new_folder() as created:
        name = Path(created).name
        assert name.startswith(f"kvsnap-restore-{os.getpid()}-")
        assert spool.remove_abandoned(tmp_path) == []

    assert not abandoned.exists()
    assert not Path(created).exists()
