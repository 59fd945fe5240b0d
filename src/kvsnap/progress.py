"""Progress reporting fed by the workflows and drawn by the CLI.

Workflows call a `Reporter` and never print. The CLI passes `RichReporter`
when stderr is a terminal and the silent `Reporter` otherwise.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter:
    """Reporter that shows nothing; subclasses draw progress."""

    def start(self, label: str, total: int | None = None) -> None:
        """Begin a task such as one namespace of a backup."""

    def advance(self, items: int = 1) -> None:
        """Count items (keys, records) done since the last call."""

    def finish(self) -> None:
        """End the current task."""

    def close(self) -> None:
        """Remove any drawing from the terminal."""


class RichReporter(Reporter):
    """A live progress bar on stderr, one line per task."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("keys"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task: TaskID | None = None

    def start(self, label: str, total: int | None = None) -> None:
        self._task = self._progress.add_task(label, total=total)

    def advance(self, items: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, items)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def close(self) -> None:
        self._progress.stop()
