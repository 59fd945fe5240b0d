"""Tables and lines shared by several commands."""

from __future__ import annotations

from rich.table import Table

from kvsnap.format import Manifest


def human_bytes(size: int) -> str:
    """Format a byte count with binary units, e.g. 1.5 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def snapshot_table(manifests: list[Manifest]) -> Table:
    """A table of snapshots: id, namespace, time, keys and stored size."""
    table = Table(box=None, pad_edge=False)
    for column in ("id", "namespace", "namespace id", "time (UTC)", "keys", "size"):
        table.add_column(
            column, justify="right" if column in ("keys", "size") else "left"
        )
    for manifest in manifests:
        table.add_row(
            manifest.id,
            manifest.namespace_title,
            manifest.namespace_id,
            manifest.read_started,
            str(manifest.keys),
            human_bytes(manifest.stored_bytes),
        )
    return table
