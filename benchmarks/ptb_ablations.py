"""The CPU preset against the unregularised baseline and each technique switched off once, on
Penn Treebank, at an equal budget of 6 epochs each: what the preset's 60 minutes held on one
core. (An epoch budget rather than a time budget gives the same result however busy the machine
is, so the runs can share it with other work, and a stopped run resumes bit for bit.)

    python benchmarks/ptb_ablations.py                        # every variant, 2 at a time
    python benchmarks/ptb_ablations.py --report               # the table from what has finished

Each run is `lmrnn train ../shared/corpora/ptb --config configs/ptb-cpu.yaml` plus BUDGET and
the variant's overrides, into checkpoints/ptb-ablations-6-epochs/<variant>. Runs go --parallel
at a time, each pinned to its own core (taskset) with one thread. A run that finished is kept
and one that was stopped is resumed, so the script can be stopped and started again at any time.
Prints the table and writes benchmarks/results/ptb-ablations/{results.json,report.md,curves.png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lmrnn.checkpoint import read_metrics
from lmrnn.report import plot_learning_curves

ROOT = Path(__file__).resolve().parent.parent
PTB = ROOT.parent / "shared" / "corpora" / "ptb"
RUNS = ROOT / "checkpoints" / "ptb-ablations-6-epochs"
RESULTS = ROOT / "benchmarks" / "results" / "ptb-ablations"

# variant -> overrides of configs/ptb-cpu.yaml: the preset, everything off, each technique
# switched off once, layer norm (which the preset leaves out) switched on, and lighter rates.
# NT-ASGD is not among them: SGD at lr 30 with averaging needs far more epochs than this budget
# holds; it is the GPU preset's optimizer.
VARIANTS = {
    "preset": [],
    "unregularised": ["model.dropout=0", "model.locked_dropout=false", "model.embedding_dropout=0",
                      "model.weight_drop=0", "train.ar=0", "train.tar=0", "train.variable_bptt=false"],
    "- weight drop": ["model.weight_drop=0"],
    "- AR/TAR": ["train.ar=0", "train.tar=0"],
    "- embedding dropout": ["model.embedding_dropout=0"],
    "- variable BPTT": ["train.variable_bptt=false"],
    "- locked dropout": ["model.locked_dropout=false"],  # the same rate, a new mask at every step
    "+ layer norm": ["model.layer_norm=true"],
    # not an ablation: the same techniques at lighter rates, a candidate for the preset's short budget
    "lighter rates": ["model.dropout=0.25", "model.embedding_dropout=0.05", "model.weight_drop=0.15"],
}


BUDGET = ["train.max_minutes=0", "train.epochs=6"]


def folder(variant: str) -> Path:
    return RUNS / variant.replace("- ", "no-").replace("+ ", "with-").replace(" ", "-").replace("/", "-")


def command(variant: str, core: int) -> list[str]:
    run = folder(variant)
    if (run / "train_state.pt").exists():
        args = ["train", "--resume", "--out", str(run)]
    else:
        args = ["train", str(PTB), "--config", str(ROOT / "configs" / "ptb-cpu.yaml"), "--out", str(run), "--overwrite",
                *[item for key in BUDGET + VARIANTS[variant] for item in ("-s", key)]]
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    return [*pin, sys.executable, "-m", "lmrnn", *args]


def finished(variant: str) -> dict | None:
    path = folder(variant) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary["stopped_by"] == "budget" else None


def run_all(variants: list[str], parallel: int) -> None:
    waiting = [v for v in variants if not finished(v)]
    running: dict[int, tuple[str, subprocess.Popen]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    RUNS.mkdir(parents=True, exist_ok=True)
    while waiting or running:
        for core in range(parallel):
            if core not in running and waiting:
                variant = waiting.pop(0)
                log = open(RUNS / f"{folder(variant).name}.log", "a")
                print(f"core {core}: {variant}", flush=True)
                running[core] = (variant, subprocess.Popen(command(variant, core), stdout=log, stderr=log, env=env))
        time.sleep(5)
        for core, (variant, process) in list(running.items()):
            if process.poll() is not None:
                print(f"core {core}: {variant} ended ({process.returncode})", flush=True)
                del running[core]


def report(variants: list[str]) -> None:
    rows = []
    for variant in variants:
        summary = finished(variant)
        if summary:
            rows.append({"variant": variant, "overrides": VARIANTS[variant], **{k: summary[k] for k in (
                "params", "steps", "epochs", "train_tokens", "train_seconds", "best_val_ppl", "test_ppl")}})
    if not rows:
        print("no variant has finished yet")
        return
    preset = next((r for r in rows if r["variant"] == "preset"), None)
    lines = ["| variant | params | minutes | best val ppl | test ppl | test vs preset |", "|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['test_ppl'] - preset['test_ppl']:+.2f}" if preset else ""
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['train_seconds'] / 60:.0f} | {r['best_val_ppl']:.2f} | "
                     f"{r['test_ppl']:.2f} | {delta} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.md").write_text(table + "\n")
    plot_learning_curves([(r["variant"], r["variant"], read_metrics(folder(r["variant"]))) for r in rows],
                         RESULTS / "curves.png")
    (RESULTS / "results.json").write_text(json.dumps({
        "rows": rows, "config": "configs/ptb-cpu.yaml", "budget": BUDGET, "threads_per_run": 1, "date": datetime.date.today().isoformat(),
        "machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args()
    unknown = [v for v in args.only if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if not args.report:
        run_all(args.only, args.parallel)
    report(args.only)


if __name__ == "__main__":
    main()
