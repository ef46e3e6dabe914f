"""The embedding initialisation per cell at a comparison's own budget, not after 300 steps.

    python benchmarks/init_at_budget.py --tuned comparisons/ptb-tuned [--ranges 0.3,0.1,1] [--cells gru,lstm,ffnn,rnn]
        [--seeds 1] [-s key=value ...] [--reuse RUN ...]
    python benchmarks/init_at_budget.py --tuned comparisons/ptb-tuned --report

Each cell trains from the configuration a `compare --tune` chose for it (DIR/<cell>-seed1/config.yaml:
its size, rate and budget in minutes) with `model.init_range` set to each value, and is scored on
the test split twice: as one stream (batch 1, which no batch effect touches) and as the run's
own summary has it (eval_batch_size rows after the burn-in), so that a setting whose figure
depends on the batch shows. The 300-step ablation (init_ablation.py) chose U(+-1) for every cell;
at 8 minutes the tuned comparison found it suits the LSTM only (docs/results.md).

Runs go one at a time, in the order of --ranges then --cells, so the most wanted ones finish
first; each finished run is kept and skipped when the command runs again, and a stopped one
(Ctrl-C, SIGTERM) resumes where it stopped. A run the comparison itself made (its own init_range
and seed), or one given by --reuse DIR, is read instead of trained again when its config.yaml is
the wanted run's, key for key. Writes benchmarks/results/init-at-budget.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.evaluate import evaluate_run
from lmrnn.train import train

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "checkpoints" / "init-at-budget"
OUT = ROOT / "benchmarks" / "results" / "init-at-budget.json"


def run_one(tuned: Path, cell: str, init_range: float, seed: int, overrides: list[str], reuse: list[Path]) -> dict | None:
    """Train (or resume, or skip) one run; None when it was stopped before its budget."""
    cfg = load_config(tuned / f"{cell}-seed1" / checkpoint.CONFIG,
                      [f"model.init_range={init_range}", f"seed={seed}", *overrides])
    run_dir = RUNS / f"{cell}-init{init_range:g}-seed{seed}"
    for made in (tuned / f"{cell}-seed{seed}", *reuse):  # this very run, trained already: read, not trained again
        summary = checkpoint.read_summary(made)
        if summary and summary.get("stopped_by") == "budget" and checkpoint.read_config(made) == cfg:
            run_dir = made
            break
    summary = checkpoint.read_summary(run_dir)
    if summary is None or summary.get("stopped_by") != "budget":
        resume = (run_dir / checkpoint.TRAIN_STATE).is_file()
        summary = train(cfg, run_dir, resume=resume, overwrite=not resume)
        if summary["stopped_by"] != "budget":
            return None
    return {"cell": cell, "init_range": init_range, "seed": seed, "run": os.path.relpath(run_dir, ROOT),
            "lr": cfg.train.lr, "steps": summary["steps"],
            "minutes": cfg.train.max_minutes, "others_cpu_share": summary["others_cpu_share"],
            "test_word_ppl_one_stream": evaluate_run(run_dir, "test", device="cpu", batch_size=1).word_ppl,
            "test_word_ppl_own_batch": summary["test_word_ppl"], "eval_batch_size": cfg.train.eval_batch_size,
            "eval_burn_in": cfg.train.eval_burn_in}


def print_table(rows: list[dict]) -> None:
    print(f"{'cell':<5} {'init':>5} {'seed':>4} {'lr':>8} {'steps':>6} {'one stream':>11} {'own batch':>10} {'batch effect':>13}")
    for r in sorted(rows, key=lambda r: (r["cell"], r["init_range"], r["seed"])):
        effect = r["test_word_ppl_own_batch"] / r["test_word_ppl_one_stream"] - 1
        print(f"{r['cell']:<5} {r['init_range']:>5g} {r['seed']:>4} {r['lr']:>8.3g} {r['steps']:>6,} "
              f"{r['test_word_ppl_one_stream']:>11.2f} {r['test_word_ppl_own_batch']:>10.2f} {effect:>+12.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tuned", type=Path, required=True, help="a finished `lmrnn compare --tune` folder")
    parser.add_argument("--ranges", type=lambda s: [float(x) for x in s.split(",")], default=[0.3, 0.1, 1.0])
    parser.add_argument("--cells", type=lambda s: s.split(","), default=["gru", "lstm", "ffnn", "rnn"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--reuse", type=Path, action="append", default=[],
                        help="a finished run to read instead of training one with the same config (repeatable)")
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args()
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() else []
    wanted = [(cell, init_range, seed) for seed in args.seeds for init_range in args.ranges for cell in args.cells]
    done = {(r["cell"], r["init_range"], r["seed"]) for r in rows}
    for cell, init_range, seed in ([] if args.report else [w for w in wanted if w not in done]):
        row = run_one(args.tuned, cell, init_range, seed, args.overrides, args.reuse)
        if row is None:
            print("stopped: run the same command again to continue", file=sys.stderr)
            break
        rows.append(row)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({"rows": rows, "tuned": str(args.tuned), "overrides": args.overrides,
                                   "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                                   "command": "python benchmarks/init_at_budget.py " + " ".join(sys.argv[1:])},
                                  indent=2) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
