"""Terminal output: the stderr console, logging, the training progress display and tables.

Library modules report through `logging` and a `TrainingProgress`; only this module and the
CLI touch rich. Data (generated text, tables, JSON) goes to stdout; everything else to stderr.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

stderr = Console(stderr=True)
log = logging.getLogger("lmrnn")


def setup_logging(verbose: bool = False) -> None:
    """Send lmrnn's log records to stderr: rich on a terminal, plain lines otherwise."""
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


class TrainingProgress:
    """A rich bar on a terminal (fraction of the budget, step, loss, ppl, |g|, tok/s, ETA);
    plain log lines when stderr is not a terminal (CI, files)."""

    def __init__(self, enabled: bool | None = None):
        self.live = stderr.is_terminal if enabled is None else enabled
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=stderr, transient=False)
            self._task = self._bar.add_task("train", total=1.0, status="starting")

    def __enter__(self) -> "TrainingProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, fraction: float, status: str | None = None) -> None:
        """Move the bar to `fraction` of the training budget; cheap enough for every step."""
        if self._bar is not None:
            fields = {"status": status} if status is not None else {}
            self._bar.update(self._task, completed=min(fraction, 1.0), **fields)

    def line(self, text: str) -> None:
        """A log line: printed above the bar on a terminal, as a plain line otherwise."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A results table on stdout, numeric columns right-aligned."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=False, width=max(160, Console().width)).print(table)
