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


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send lmrnn's log records to stderr: rich on a terminal, plain lines otherwise; `quiet`
    (a distributed run's ranks but 0) keeps only warnings and errors."""
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


BAR_WIDTH = 8
# what the bar's other columns take: description (up to "all runs"), bar, percentage, elapsed,
# "ETA", remaining, and the spaces between them
BAR_COLUMNS = 8 + BAR_WIDTH + 4 + 7 + 3 + 7 + 6
# a log line's fields, in the order they are given up when the terminal is narrow
DROPPED_FIRST = ("|g|", "lr", "epoch", "ppl")


def _progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=BAR_WIDTH),
                    TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=stderr, transient=False)


def fit_status(text: str, width: int) -> str:
    """A "step 12 | epoch 0.10 | lr ... | loss ... | ppl ... | |g| ... | 3.9k tok/s" line in at
    most `width` characters: padding squeezed out, then fields given up in DROPPED_FIRST's
    order (step, loss and tokens/s stay), then cut."""
    fields = [" ".join(field.split()) for field in text.split(" | ")]
    for name in DROPPED_FIRST:
        if len(" | ".join(fields)) <= width:
            break
        fields = [field for field in fields if not field.startswith(name + " ")]
    fitted = " | ".join(fields)
    return fitted if len(fitted) <= width else (fitted[:width - 1] + "…" if width > 0 else "")


class TrainingProgress:
    """A rich bar on a terminal (fraction of the budget, step, loss, ppl, |g|, tok/s, ETA);
    plain log lines when stderr is not a terminal (CI, files). Inside a comparison it is the
    second bar of the comparison's display and also moves the overall bar."""

    def __init__(self, enabled: bool | None = None, parent: "ComparisonProgress | None" = None):
        self.live = (stderr.is_terminal if enabled is None else enabled) if parent is None else parent.live
        self.parent = parent
        self._bar: Progress | None = None
        if self.live:
            self._bar = parent._bar if parent is not None else _progress_bar()
            self._task = self._bar.add_task("train", total=1.0, status="starting")

    def __enter__(self) -> "TrainingProgress":
        if self._bar is not None and self.parent is None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            if self.parent is None:
                self._bar.stop()
            else:
                self._bar.remove_task(self._task)

    def update(self, fraction: float, status: str | None = None) -> None:
        """Move the bar to `fraction` of the training budget; cheap enough for every step."""
        if self._bar is not None:
            fields = {"status": fit_status(status, self._bar.console.width - BAR_COLUMNS)} if status is not None else {}
            self._bar.update(self._task, completed=min(fraction, 1.0), **fields)
        if self.parent is not None:
            self.parent.update(min(fraction, 1.0))

    def line(self, text: str) -> None:
        """A log line: printed above the bar on a terminal, as a plain line otherwise."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)


class SilentProgress(TrainingProgress):
    """The progress of a distributed run's other ranks: rank 0 alone prints."""

    def __init__(self):
        self.live, self.parent, self._bar = False, None, None

    def line(self, text: str) -> None:
        pass


class ComparisonProgress(TrainingProgress):
    """One overall bar over all runs of a comparison, above the current run's TrainingProgress."""

    def __init__(self, total_runs: int, enabled: bool | None = None):
        self.live = stderr.is_terminal if enabled is None else enabled
        self.parent, self.total, self.done = None, total_runs, 0
        self._bar = _progress_bar() if self.live else None
        if self._bar is not None:
            self._task = self._bar.add_task("all runs", total=float(total_runs), status=f"0/{total_runs} runs")

    def run(self, name: str) -> TrainingProgress:
        """The bar of the next run; call `finished()` when it is done."""
        self.line(f"run {self.done + 1}/{self.total}: {name}")
        return TrainingProgress(parent=self)

    def update(self, fraction: float, status: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done + fraction, status=f"{self.done}/{self.total} runs")

    def finished(self) -> None:
        self.done += 1
        self.update(0.0)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A results table on stdout, numeric columns right-aligned."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=False, width=max(160, Console().width)).print(table)
