"""Where command output goes: results to stdout, everything else to stderr."""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Results (tables, --json) go to stdout; logs, progress and errors to stderr.
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


# Whether a command already wrote its --json document, so that the error
# handler does not add a second one.
json_written = False


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout, followed by a newline."""
    global json_written
    json_written = True
    sys.stdout.write(msgspec.json.encode(obj).decode("utf-8") + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    """Print a table to stdout at its full width, even in a narrow terminal.

    A pipe counts as 80 columns, which would cut snapshot ids that users copy
    into other commands, so the console widens to fit the table.
    """
    needed = Measurement.get(stdout, stdout.options.update_width(1000), table).maximum
    width = stdout.width
    stdout.width = max(width, needed)
    try:
        stdout.print(table)
    finally:
        stdout.width = width
