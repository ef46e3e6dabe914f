"""Figures and reports: learning curves from metrics.jsonl, probe plots, markdown tables.

Plots use matplotlib's object API (`Figure`, no pyplot): no global backend or figure state, so
the library is safe to call from anywhere, headless included. Every PNG is rendered in memory
and moved into place whole, like every other file lmrnn writes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lmrnn.files import atomic_write


@dataclass
class Series:
    """One line of a plot. Lines of the same `group` share a colour (one colour per cell in a
    comparison); `dashed` marks a variant of the group (an untrained model, a second seed)."""
    label: str
    x: list[float]
    y: list[float]
    group: str = ""
    dashed: bool = False
    extra: dict = field(default_factory=dict)


def curve_series(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """The four learning curves of one run's metrics records, as (x, y) lists:
    validation ppl by step and by training seconds, training loss and gradient norm by step.
    A step logged twice (a resumed run repeats the steps after its last save) keeps its last record."""
    evals = {r["step"]: r for r in records if r.get("event") == "eval" and r.get("split") == "validation"}
    trains = {r["step"]: r for r in records if r.get("event") == "train"}
    evals = dict(sorted(evals.items()))
    trains = dict(sorted(trains.items()))
    timed = [r for r in evals.values() if "seconds" in r]
    return {
        "val_ppl_by_step": (list(evals), [r["ppl"] for r in evals.values()]),
        "val_ppl_by_seconds": ([r["seconds"] for r in timed], [r["ppl"] for r in timed]),
        "train_loss": (list(trains), [r["loss"] for r in trains.values()]),
        "grad_norm": (list(trains), [r["grad_norm"] for r in trains.values()]),
    }


CURVE_PANELS = {  # key -> (title, x label, y label, log y)
    "val_ppl_by_step": ("validation perplexity", "step", "ppl", True),
    "val_ppl_by_seconds": ("validation perplexity against time", "training seconds", "ppl", True),
    "train_loss": ("training loss", "step", "loss (nats/token)", False),
    "grad_norm": ("gradient norm before clipping", "step", "global L2 norm", True),
}


def plot_learning_curves(runs: list[tuple[str, str, list[dict]]], path: Path) -> Figure:
    """A 2x2 figure of CURVE_PANELS, one line per run: `runs` holds (label, group, records)."""
    panels: dict[str, list[Series]] = {key: [] for key in CURVE_PANELS}
    for label, group, records in runs:
        for key, (x, y) in curve_series(records).items():
            panels[key].append(Series(label, x, y, group))
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    for axes, (key, (title, xlabel, ylabel, logy)) in zip(fig.subplots(2, 2).flat, CURVE_PANELS.items()):
        _draw(axes, panels[key], title, xlabel, ylabel, logx=False, logy=logy)
    save_png(fig, path)
    return fig


def plot_tuning(results: dict, path: Path) -> Figure:
    """A comparison's search (results["tuning"], lmrnn.tuning): one panel per tuned key,
    validation perplexity of every trial against its value, at the last budget fraction the
    trial reached (larger markers for larger fractions), one colour per cell, the chosen
    setting starred; trials above 20x the best figure drawn as triangles at that ceiling.
    Diverged trials are left out."""
    knobs = results["tuning_plan"]["knobs"]
    finite = [t["val_ppl"] for found in results["tuning"].values() for t in found["trials"]
              if t["val_ppl"] is not None and math.isfinite(t["val_ppl"])]
    ceiling = 20 * min(finite, default=1.0)  # a trial that blew up is drawn at the top edge (a triangle)
    fig = Figure(figsize=(6 * len(knobs), 4.8), layout="constrained")
    for axes, knob in zip(fig.subplots(1, len(knobs), squeeze=False)[0], knobs):
        for index, (cell, found) in enumerate(results["tuning"].items()):
            colour = f"C{index % 10}"
            trials = [t for t in found["trials"] if t["val_ppl"] is not None]
            for above, marker in ((False, "o"), (True, "^")):
                shown = [t for t in trials if (t["val_ppl"] > ceiling) == above]
                axes.scatter([t[knob["key"]] for t in shown], [min(t["val_ppl"], ceiling) for t in shown], color=colour,
                             alpha=0.7, marker=marker, s=[12 + 60 * t["budget"] for t in shown],
                             label=None if above else cell)
            best = next((t for t in trials if t["trial"] == found.get("best_trial")), None)
            if best is not None:
                axes.scatter([best[knob["key"]]], [best["val_ppl"]], color=colour, marker="*", s=260,
                             edgecolors="black", linewidths=0.8, zorder=3)
        axes.set_title(f"validation ppl against {knob['key']} (star: chosen)")
        axes.set_xlabel(knob["key"])
        axes.set_ylabel("validation ppl at the trial's last rung")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        if knob["log"]:
            axes.set_xscale("log")
            axes.xaxis.set_major_formatter(plain)
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize="small")
    save_png(fig, path)
    return fig


def plot_lines(series: list[Series], path: Path, title: str, xlabel: str, ylabel: str,
               logx: bool = False, logy: bool = False) -> Figure:
    """One panel of lines (the probes' plots)."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    _draw(fig.subplots(), series, title, xlabel, ylabel, logx, logy)
    save_png(fig, path)
    return fig


def _draw(axes, series: list[Series], title: str, xlabel: str, ylabel: str, logx: bool, logy: bool) -> None:
    colours: dict[str, str] = {}
    for line in series:
        colour = colours.setdefault(line.group or line.label, f"C{len(colours) % 10}")
        # on a log axis a value that underflowed to 0 is left out rather than drawn
        y = [v if v > 0 or not logy else math.nan for v in line.y]
        axes.plot(line.x, y, color=colour, linestyle="--" if line.dashed else "-", linewidth=1.6,
                  marker="o" if len(line.x) <= 20 else None, markersize=3, label=line.label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 40, not 4 x 10^1
    if logx:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(plain)
    if logy and any(v > 0 for line in series for v in line.y):
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain if _span(series) < 10 else FuncFormatter(lambda *_: ""))
    axes.grid(True, which="major", alpha=0.3)
    if series:
        axes.legend(fontsize="small")


def _span(series: list[Series]) -> float:
    values = [v for line in series for v in line.y if v > 0]
    return max(values) / min(values) if values else 1.0


def save_png(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
