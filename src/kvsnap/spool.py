"""Private temporary folders for a restore's plan, and sweeping abandoned ones.

A restore spools its plan (the keys to write, with their values) to files
in a folder under the system's temporary directory, which it removes when
it ends. A process killed with SIGKILL cannot remove it, and the folder
keeps a copy of restored values. Each folder name therefore carries the id
of the process that made it, and every new restore first removes the
folders of processes that no longer run, once no file in them has changed
for ABANDONED_AFTER_SECONDS. The wait covers a process of another PID
namespace (a container sharing /tmp), whose id means nothing here: a live
restore appends to its files as it writes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "kvsnap-restore-"
ABANDONED_AFTER_SECONDS = 3600.0
# mkdtemp's random part has letters, digits and underscores, never a hyphen.
_NAME_RE = re.compile(rf"{re.escape(PREFIX)}(\d+)-[A-Za-z0-9_]+")


def new_folder() -> tempfile.TemporaryDirectory[str]:
    """Sweep abandoned folders, then return a new private one for this process."""
    remove_abandoned()
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-")


def remove_abandoned(
    root: Path | None = None,
    *,
    older_than: float = ABANDONED_AFTER_SECONDS,
    now: float | None = None,
) -> list[Path]:
    """Remove this user's spool folders left by processes that no longer run."""
    root = Path(tempfile.gettempdir()) if root is None else root
    now = time.time() if now is None else now
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        found = _NAME_RE.fullmatch(path.name)
        if found is None or _process_runs(int(found.group(1))):
            continue
        try:
            if not _owned_folder(path) or now - _last_change(path) < older_than:
                continue
        except OSError:
            continue  # removed meanwhile, or not readable
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the plan folder %s of a restore that did not finish", path)
        removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False
    return True


def _owned_folder(path: Path) -> bool:
    status = path.lstat()
    return path.is_dir() and not path.is_symlink() and status.st_uid == os.getuid()


def _last_change(path: Path) -> float:
    """Return the newest modification time of the folder and the files in it."""
    times = [path.lstat().st_mtime]
    times += [child.lstat().st_mtime for child in path.iterdir()]
    return max(times)
