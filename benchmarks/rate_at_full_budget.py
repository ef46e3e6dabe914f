"""Does a tuned comparison's chosen rate hold at the full budget? Train one compared cell at other
learning rates, each to the comparison's own full budget, and set them beside the chosen one.

    python benchmarks/rate_at_full_budget.py comparisons/ptb-tuned-d01 --cell lstm \
        --lr 0.0212,0.0121,0.00777 [--seeds 1,2,3]

Successive halving (lmrnn/tuning.py) ranks its trials at 1/9 and 1/3 of the budget, part-way
down the cosine schedule, so a rate that is slow at first but better when annealed can be cut
early: the short-horizon bias of Wu, Ren, Liao & Grosse (2018), "Understanding Short-Horizon Bias
in Stochastic Meta-Optimization". This measures it for one cell: each run is the comparison's
DIR/<cell>-seed<S>/config.yaml (its size, budget, seed and recipe) with only train.lr changed,
trained alone, and scored on test as one stream (batch 1). The comparison's own run at its chosen
rate is scored the same way, so every figure in a row is comparable. Finished runs are kept in
checkpoints/rate-<comparison>-<cell>-lr<rate>-seed<S> and each figure is written to the JSON at
once; the same command skips what is done. Prints a table and writes
benchmarks/results/rate-at-full-budget-<comparison>-<cell>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.evaluate import evaluate_run
from lmrnn.train import train

ROOT = Path(__file__).resolve().parent.parent


def scored(run_dir: Path) -> dict:
    """A finished run's figures, its test split read as one stream."""
    summary = checkpoint.read_summary(run_dir)
    if summary is None or summary.get("stopped_by") != "budget":
        raise SystemExit(f"{run_dir} is not a finished run")
    test = evaluate_run(run_dir, "test", device="cpu", batch_size=1)
    return {"lr": summary["lr"], "steps": summary["steps"], "best_val_ppl": summary["best_val_ppl"],
            "test_word_ppl": test.word_ppl, "tokens_per_second": summary["train_tokens_per_second"],
            "others_cpu_share": summary.get("others_cpu_share")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("comparison", type=Path, help="a finished `lmrnn compare --tune` folder")
    parser.add_argument("--cell", required=True)
    parser.add_argument("--lr", type=lambda s: [float(v) for v in s.split(",")], required=True)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[1])
    args = parser.parse_args()
    name = args.comparison.resolve().name
    out = ROOT / "benchmarks" / "results" / f"rate-at-full-budget-{name}-{args.cell}.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    for seed in args.seeds:
        compared = args.comparison / f"{args.cell}-seed{seed}"
        for lr in [None, *args.lr]:  # None: the comparison's own run at its chosen rate
            if any((r["seed"], r["asked_lr"]) == (seed, lr) for r in rows):
                continue
            if lr is None:
                figures = scored(compared)
            else:
                run_dir = ROOT / "checkpoints" / f"rate-{name}-{args.cell}-lr{lr:g}-seed{seed}"
                summary = checkpoint.read_summary(run_dir)
                if summary is None or summary.get("stopped_by") != "budget":
                    cfg = load_config(compared / checkpoint.CONFIG, [f"train.lr={lr}"])
                    train(cfg, run_dir, overwrite=True)
                figures = scored(run_dir)
            rows.append({"seed": seed, "asked_lr": lr, "chosen": lr is None, **figures})
            out.write_text(json.dumps({
                "comparison": str(args.comparison), "cell": args.cell, "rows": rows,
                "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "command": "python benchmarks/rate_at_full_budget.py " + " ".join(sys.argv[1:])}, indent=2) + "\n")
    print(f"{args.cell} in {args.comparison}: test word ppl (one stream) at the comparison's full budget")
    print(f"{'lr':>10} {'seed':>4} {'steps':>6} {'best val':>9} {'test':>8}  tok/s")
    for r in sorted(rows, key=lambda r: (r["lr"], r["seed"])):
        mark = "  (chosen by the search)" if r["chosen"] else ""
        print(f"{r['lr']:>10.4g} {r['seed']:>4} {r['steps']:>6} {r['best_val_ppl']:>9.2f} {r['test_word_ppl']:>8.2f}"
              f"  {r['tokens_per_second']:,.0f}{mark}")


if __name__ == "__main__":
    main()
