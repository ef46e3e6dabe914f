"""lmrnn probe gradients, context, recall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from lmrnn.cli import probe_app, user_errors
from lmrnn.cli.options import DeviceOpt, JsonOpt, RunsArg
from lmrnn.console import print_table, stderr

PlotOpt = Annotated[Path, typer.Option(help="Where to draw the plot (PNG).")]
DataOpt = Annotated[Optional[str], typer.Option(help="Probe this corpus's validation split instead of each run's own.")]


def _probe_output(rows: list[dict], json_: bool, plot: Path, *tables: tuple[str, list[str], Callable]) -> None:
    """The rows as JSON, or one table per (title, columns, row -> cells); then where the plot is."""
    if json_:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for title, columns, cells in tables:
            print_table(title, columns, [cells(row) for row in rows])
    stderr.print(f"plot: {plot}", highlight=False, soft_wrap=True)


def _distance(value: Optional[int], limit: int) -> str:
    return f"> {limit}" if value is None else str(value)


@probe_app.command("gradients")
def probe_gradients(
    run_dirs: RunsArg,
    length: Annotated[int, typer.Option(help="Steps from the first probed state to the loss (T).")] = 200,
    windows: Annotated[int, typer.Option(help="Validation windows averaged over.")] = 64,
    burn_in: Annotated[int, typer.Option(help="Tokens run first (no gradient) so the state is a real one.")] = 100,
    init: Annotated[bool, typer.Option("--init/--no-init", help="Also probe each run's architecture freshly initialised.")] = True,
    data: DataOpt = None,
    plot: PlotOpt = Path("probe-gradients.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """||dL_T/ds_t||: how far back the loss's gradient reaches, against distance (log scale)."""
    from lmrnn.probes import VANISHED, probe_gradients as run_probe

    with user_errors():
        rows = run_probe(run_dirs, length, windows, burn_in, init, data, device, plot)
    marks = [d for d in (1, 10, 50, 100) if d < length]
    _probe_output(rows, json_, plot, (f"gradient norm by distance, relative to distance 1 (vanished: < {VANISHED:g})",
                  ["run", "cell", "model", "|g| at 1", *[f"at {d}" for d in marks[1:]], f"at {length - 1}", "vanished at"],
                  lambda r: [r["run"], r["cell"], r["model"], f"{r['norms'][1]:.3g}",
                             *[f"{r['norms'][d] / r['norms'][1]:.2g}" for d in marks[1:]],
                             f"{r['norms'][-1] / r['norms'][1]:.2g}", _distance(r["vanishing_distance"], length - 1)]))


@probe_app.command("context")
def probe_context(
    run_dirs: RunsArg,
    max_context: Annotated[int, typer.Option(help="Longest context k tried (k = 1, 2, 4, ... and this).")] = 400,
    targets: Annotated[int, typer.Option(help="Validation tokens scored for each k.")] = 1000,
    data: DataOpt = None,
    plot: PlotOpt = Path("probe-context.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Loss when the model sees only the last k tokens, and its effective context."""
    from lmrnn.probes import probe_context as run_probe

    with user_errors():
        rows = run_probe(run_dirs, max_context, targets, data, device, plot)
    ks = rows[0]["ks"]
    _probe_output(rows, json_, plot, ("mean NLL (nats) with the last k tokens of context; effective = within 1% of full",
                  ["run", "cell", *[f"k={k}" for k in ks], "full", "effective k"],
                  lambda r: [r["run"], r["cell"], *[f"{v:.3f}" for v in r["losses"]], f"{r['full_context_loss']:.3f}",
                             _distance(r["effective_context"], ks[-1])]))


@probe_app.command("recall")
def probe_recall(
    run_dirs: RunsArg,
    max_fillers: Annotated[int, typer.Option(help="Stories with 0 to this many middle sentences between cue and recall.")] = 8,
    stories: Annotated[int, typer.Option(help="Fresh stories per distance.")] = 200,
    plot: PlotOpt = Path("probe-recall.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """On the stories corpus's grammar, against the words since the hero was named: accuracy at
    naming the hero where the story recalls them, and at their pronoun after sentences without a
    person (distances in words: any tokenizers compare)."""
    from lmrnn.probes import probe_recall as run_probe

    with user_errors():
        rows = run_probe(run_dirs, max_fillers, stories, device, plot)
    titles = {"name": "top-1 accuracy at the recalled hero name (chance 1/24; 1/12 knowing the gender)",
              "gender": "accuracy at the hero's pronoun, he or she, after sentences with no person (chance 1/2)"}
    _probe_output(rows, json_, plot, *[
        (title, ["run", "cell", *[f"{b['distance']:.0f} words" for b in rows[0][task]]],
         lambda r, task=task: [r["run"], r["cell"], *[f"{b['accuracy']:.3f}" for b in r[task]]])
        for task, title in titles.items()])


@probe_app.command("gates")
def probe_gates(
    run_dirs: RunsArg,
    tokens: Annotated[int, typer.Option(help="Validation tokens read, from the start of the split.")] = 2000,
    data: DataOpt = None,
    plot: PlotOpt = Path("probe-gates.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """For LSTM and GRU runs: each gate's values at every position, recomputed from the weights;
    per unit the share of positions it is shut (< 0.1) and open (> 0.9), as Karpathy et al.
    (2015) plot them, and the keep gate's memory time constant -1 / ln(mean forget or update)."""
    from lmrnn.gates import probe_gates as run_probe

    with user_errors():
        rows = run_probe(run_dirs, tokens, data, device, plot)
    if not json_:
        print_table("gates: mean value; units mostly shut (< 0.1 at over half the positions) or mostly open (> 0.9)",
                    ["run", "layer", "gate", "mean", "units mostly shut", "units mostly open", "memory (steps)"],
                    [[r["run"], str(r["layer"]), name, f"{g['mean']:.3f}", f"{_mostly(g['shut']):.2f}",
                      f"{_mostly(g['open']):.2f}", _memory(r) if name == r["keep_gate"] else ""]
                     for r in rows for name, g in r["gates"].items()])
    _probe_output(rows, json_, plot)


def _memory(row: dict) -> str:
    return "for ever" if row["time_constant"] is None else f"{row['time_constant']:.1f}"


def _mostly(shares: list[float]) -> float:
    """The fraction of units whose share exceeds one half."""
    return sum(share > 0.5 for share in shares) / len(shares)
