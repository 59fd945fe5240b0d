"""`kvsnap demo`: run the whole backup job on real data against the emulator."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.cli.output import print_table, stderr, stdout
from kvsnap.cli.repository import snapshot_table
from kvsnap.demo import DemoResult, run_demo
from kvsnap.errors import EXIT_OK, EXIT_VERIFY
from kvsnap.progress import Reporter, RichReporter


@app.command()
def demo(
    folder: Path = typer.Option(
        None,
        "--dir",
        help="Folder for the emulator data and the repository "
        "[default: a new temporary folder].",
        show_default=False,
        file_okay=False,
    ),
) -> None:
    """Back up real data from the bundled emulator and verify it.

    Starts the KV emulator on a free port on 127.0.0.1, seeds three
    namespaces, backs them up into a local repository, lists and verifies
    the snapshots, then stops the emulator. Needs no Cloudflare account.
    """
    folder = folder or Path(tempfile.mkdtemp(prefix="kvsnap-demo-"))
    reporter = RichReporter(stderr) if sys.stderr.isatty() else Reporter()
    try:
        result = asyncio.run(run_demo(folder, reporter=reporter))
    finally:
        reporter.close()
    _print(result)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_VERIFY)


def _print(result: DemoResult) -> None:
    out = stdout
    out.print(
        f"\n[bold]Emulator[/] {result.base_url} (stopped), account {result.account_id}"
    )
    for title, keys in result.seeded.items():
        out.print(f"  seeded {title}: {keys} keys", highlight=False)

    out.print("\n[bold]Snapshots[/]")
    print_table(snapshot_table(result.snapshots))

    out.print("[bold]Verify --read-data[/]")
    for check in result.verified:
        status = "[green]ok[/]" if check.ok else "[red]FAILED[/]"
        out.print(
            f"  {check.snapshot_id}  {status}  parts {check.parts_checked}, "
            f"records {check.records_checked}, bytes re-read {check.bytes_read}",
            highlight=False,
        )
        for problem in check.problems:
            out.print(f"    {problem}", markup=False)

    repo = result.repository
    out.print("\n[bold]Where everything is[/]")
    out.print(f"  repository     {repo}", highlight=False)
    out.print(f"  emulator data  {result.emulator_data}", highlight=False)
    kvsnap = _command_name()
    out.print("\n[bold]Try next[/]")
    out.print(f"  {kvsnap} snapshots --repo {repo}", highlight=False)
    out.print(f"  {kvsnap} verify --read-data --repo {repo}", highlight=False)
    out.print(f"  {kvsnap} export latest@auth-state --repo {repo}", highlight=False)
    out.print(f"  {kvsnap} emulator --data {result.emulator_data}", highlight=False)


def _command_name() -> str:
    """Return how to run kvsnap: its name if on PATH, else its full path."""
    script = Path(sys.executable).parent / "kvsnap"
    on_path = shutil.which("kvsnap")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "kvsnap"
    return str(script) if script.exists() else "kvsnap"
