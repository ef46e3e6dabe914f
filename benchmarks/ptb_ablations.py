"""The CPU preset against the unregularised baseline and each technique switched off once, on
Penn Treebank, at an equal budget of --epochs epochs each. (An epoch budget rather than a time
budget gives the same result however busy the machine is, so the runs can share it with other
work, and a stopped run resumes bit for bit.)

    python benchmarks/ptb_ablations.py --epochs 1               # every variant, 2 at a time
    python benchmarks/ptb_ablations.py --epochs 6 --only preset,unregularised,"heavier rates"
    python benchmarks/ptb_ablations.py --epochs 1 --report      # the table from what has finished

docs/results.md's tables come from the second line and from --epochs 1 with every variant but
"heavier rates".

Each run is `lmrnn train ../shared/corpora/ptb --config configs/ptb-cpu.yaml -s train.epochs=N`
plus the variant's overrides, into checkpoints/ptb-ablations-N-epochs/<variant>. Runs go
--parallel at a time, each pinned to its own core (taskset) with one thread. A run that finished
is kept and one that was stopped is resumed, so the script can be stopped and started again at
any time. Prints the table and writes benchmarks/results/ptb-ablations-N-epochs/{results.json,
report.md,curves.png}.
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

# variant -> overrides of configs/ptb-cpu.yaml: the preset, everything off, each technique
# switched off once, and the heavier, AWD-LSTM-like rates the preset started from. NT-ASGD is not
# among them: SGD at lr 30 with averaging needs far more epochs than a CPU budget holds; it is the
# GPU preset's optimizer. Layer norm is not either: the preset leaves it out (it halves an LSTM's
# speed on the CPU, benchmarks/bench_layer_norm.py).
VARIANTS = {
    "preset": [],
    "unregularised": ["model.dropout=0", "model.locked_dropout=false", "model.embedding_dropout=0",
                      "model.weight_drop=0", "train.ar=0", "train.tar=0", "train.variable_bptt=false"],
    "- weight drop": ["model.weight_drop=0"],
    "- AR/TAR": ["train.ar=0", "train.tar=0"],
    "- embedding dropout": ["model.embedding_dropout=0"],
    "- variable BPTT": ["train.variable_bptt=false"],
    "- locked dropout": ["model.locked_dropout=false"],  # the same rate, a new mask at every step
    "- weight tying": ["model.tie_weights=false"],
    "heavier rates": ["model.dropout=0.4", "model.embedding_dropout=0.1", "model.weight_drop=0.3"],
}


def budget_name(epochs: int) -> str:
    return f"ptb-ablations-{epochs}-epoch" + ("s" if epochs > 1 else "")


def runs_folder(epochs: int) -> Path:
    return ROOT / "checkpoints" / budget_name(epochs)


def folder(variant: str, epochs: int) -> Path:
    name = variant.replace("- ", "no-").replace(" ", "-").replace("/", "-")
    return runs_folder(epochs) / name


def command(variant: str, epochs: int, core: int) -> list[str]:
    run = folder(variant, epochs)
    if (run / "train_state.pt").exists():
        args = ["train", "--resume", "--out", str(run)]
    else:
        overrides = ["train.max_minutes=0", f"train.epochs={epochs}", *VARIANTS[variant]]
        args = ["train", str(PTB), "--config", str(ROOT / "configs" / "ptb-cpu.yaml"), "--out", str(run), "--overwrite",
                *[item for key in overrides for item in ("-s", key)]]
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    return [*pin, sys.executable, "-m", "lmrnn", *args]


def finished(variant: str, epochs: int) -> dict | None:
    path = folder(variant, epochs) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary["stopped_by"] == "budget" else None


def run_all(variants: list[str], epochs: int, parallel: int) -> None:
    waiting = [v for v in variants if not finished(v, epochs)]
    running: dict[int, tuple[str, subprocess.Popen]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs_folder(epochs).mkdir(parents=True, exist_ok=True)
    while waiting or running:
        for core in range(parallel):
            if core not in running and waiting:
                variant = waiting.pop(0)
                log = open(runs_folder(epochs) / f"{folder(variant, epochs).name}.log", "a")
                print(f"core {core}: {variant}", flush=True)
                running[core] = (variant, subprocess.Popen(command(variant, epochs, core), stdout=log, stderr=log, env=env))
        time.sleep(5)
        for core, (variant, process) in list(running.items()):
            if process.poll() is not None:
                print(f"core {core}: {variant} ended ({process.returncode})", flush=True)
                del running[core]


def report(variants: list[str], epochs: int) -> None:
    rows = []
    for variant in variants:
        summary = finished(variant, epochs)
        if summary:
            rows.append({"variant": variant, "overrides": VARIANTS[variant], **{k: summary[k] for k in (
                "params", "steps", "epochs", "train_tokens", "train_seconds", "best_val_ppl", "test_ppl")}})
    if not rows:
        print("no variant has finished yet")
        return
    preset = next((r for r in rows if r["variant"] == "preset"), None)
    # no minutes column: the runs share the cores with each other and with other work
    lines = ["| variant | params | steps | best val ppl | test ppl | test vs preset |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = f"{r['test_ppl'] - preset['test_ppl']:+.2f}" if preset else ""
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['steps']:,} | {r['best_val_ppl']:.2f} | "
                     f"{r['test_ppl']:.2f} | {delta} |")
    table = "\n".join(lines)
    print(table)
    results = ROOT / "benchmarks" / "results" / budget_name(epochs)
    results.mkdir(parents=True, exist_ok=True)
    (results / "report.md").write_text(table + "\n")
    plot_learning_curves([(r["variant"], r["variant"], read_metrics(folder(r["variant"], epochs))) for r in rows],
                         results / "curves.png")
    (results / "results.json").write_text(json.dumps({
        "rows": rows, "config": "configs/ptb-cpu.yaml", "epochs": epochs, "threads_per_run": 1, "date": datetime.date.today().isoformat(),
        "machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, required=True, help="the budget of every run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args()
    unknown = [v for v in args.only if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if not args.report:
        run_all(args.only, args.epochs, args.parallel)
    report(args.only, args.epochs)


if __name__ == "__main__":
    main()
