"""Where command output goes: results to stdout, everything else to stderr."""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from rich.console import Console

# Results (tables, --json) go to stdout; logs, progress and errors to stderr.
# Rich wraps tables to 80 columns when stdout is not a terminal; piped output
# is read by tools and people alike, so give tables room instead.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout, followed by a newline."""
    sys.stdout.write(msgspec.json.encode(obj).decode("utf-8") + "\n")
    sys.stdout.flush()
