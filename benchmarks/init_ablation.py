"""Which initialisation trains every cell? RNN, LSTM and GRU under each candidate, on Penn
Treebank words and on the shipped stories corpus, a short fixed budget in steps.

    python benchmarks/init_ablation.py                  # every run (about 40 s each on 2 cores)
    python benchmarks/init_ablation.py --report         # the table from what has finished

Candidates: the embedding (and tied decoder) drawn from U(-a, a) with a = 0.1 (the
word_language_model value, tuned there for SGD at lr 20), 0.3 or 1, and the hidden-to-hidden
matrices PyTorch's U(+-1/sqrt(H)) or orthogonal per gate block (Saxe et al. 2014). Each at two
AdamW rates, 1e-2 (the old shared default) and 2e-3, so that a choice does not hold at one rate
only. Everything else is configs/small.yaml's optimizer (AdamW, cosine, clip 1) with the
issue's shapes: PTB word level, 2x200, batch 20 x bptt 35; stories: the default config. Steps,
not minutes, so the figures do not depend on how busy the machine is; runs are kept and skipped
when finished, so the script can be stopped and started again.

For the LSTM it also reports the share of top-layer cell values with |c| > 3 (tanh saturated,
benchmarks/lstm_cell_state.py) over the first 2,000 validation tokens. Writes
benchmarks/results/init-ablation/{results.json,report.md}.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
from pathlib import Path

import torch

from lmrnn.checkpoint import read_summary
from lmrnn.config_parser import load_config
from lmrnn.train import train
from lstm_cell_state import cell_statistics

ROOT = Path(__file__).resolve().parent.parent
PTB = ROOT.parent / "shared" / "corpora" / "ptb"
RUNS = ROOT / "checkpoints" / "init-ablation"
RESULTS = ROOT / "benchmarks" / "results" / "init-ablation"

CORPORA = {
    "ptb": (str(PTB), ["tokenizer.model_type=word", "tokenizer.vocab_size=0", "model.embedding_dim=200",
                       "model.hidden_size=200", "train.batch_size=20", "train.bptt=35", "train.warmup_steps=50"],
            PTB / "valid.txt"),
    "stories": ("", ["train.warmup_steps=50"], ROOT / "corpora" / "stories" / "valid.txt"),
}
INITS = {"U(0.1) uniform": ["model.init_range=0.1", "model.recurrent_init=uniform"],
         "U(0.3) uniform": ["model.init_range=0.3", "model.recurrent_init=uniform"],
         "U(1) uniform": ["model.init_range=1", "model.recurrent_init=uniform"],
         "U(0.1) orthogonal": ["model.init_range=0.1", "model.recurrent_init=orthogonal"],
         "U(1) orthogonal": ["model.init_range=1", "model.recurrent_init=orthogonal"]}
CELLS = ("rnn", "lstm", "gru")
LRS = (1e-2, 2e-3)


def run_dir(corpus: str, cell: str, init: str, lr: float, seed: int) -> Path:
    return RUNS / f"{corpus}-{cell}-{init.replace('(', '').replace(')', '').replace(' ', '-')}-lr{lr:g}-seed{seed}"


def train_one(corpus: str, cell: str, init: str, lr: float, seed: int, steps: int) -> None:
    source, overrides, _ = CORPORA[corpus]
    cfg = load_config(ROOT / "configs" / "small.yaml" if corpus == "ptb" else None, [
        *overrides, *INITS[init], f"train.lr={lr}", f"train.max_steps={steps}", "train.epochs=0",
        "train.max_minutes=0", f"train.eval_every={steps // 3}", "train.log_every=50", f"seed={seed}"],
        {"data.source": source, "model.cell": cell})
    train(cfg, run_dir(corpus, cell, init, lr, seed), overwrite=True)


def row(corpus: str, cell: str, init: str, lr: float, seed: int) -> dict | None:
    path = run_dir(corpus, cell, init, lr, seed)
    summary = read_summary(path)
    if summary is None or summary.get("stopped_by") != "budget":
        return None
    out = {"corpus": corpus, "cell": cell, "init": init, "lr": lr, "seed": seed,
           **{k: summary[k] for k in ("steps", "best_val_ppl", "test_ppl", "test_word_ppl")}}
    if cell == "lstm":
        text = " ".join(CORPORA[corpus][2].read_text(encoding="utf-8").split())
        out["saturated_share_top"] = cell_statistics(path, text, 2000)[-1]["saturated_share"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--corpora", type=lambda s: s.split(","), default=list(CORPORA))
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args()
    plan = list(itertools.product(args.corpora, CELLS, INITS, LRS, args.seeds))
    if not args.report:
        for corpus, cell, init, lr, seed in plan:
            if row(corpus, cell, init, lr, seed) is None:
                print(f"{corpus} {cell} {init} lr {lr:g} seed {seed}", flush=True)
                train_one(corpus, cell, init, lr, seed, args.steps)
    rows = [r for r in (row(*key) for key in plan) if r is not None]
    lines = ["| corpus | cell | init | lr | test ppl per seed | test word ppl (mean) | LSTM top-layer abs(c) > 3 |",
             "|---|---|---|---:|---|---:|---:|"]
    for (corpus, cell, init, lr), group in itertools.groupby(rows, key=lambda r: (r["corpus"], r["cell"], r["init"], r["lr"])):
        group = list(group)
        word = sum(r["test_word_ppl"] for r in group) / len(group)
        saturated = [r["saturated_share_top"] for r in group if "saturated_share_top" in r]
        per_seed = " / ".join(f"{r['test_ppl']:,.2f}" for r in group)
        share = f"{sum(saturated) / len(saturated):.2f}" if saturated else "–"
        lines.append(f"| {corpus} | {cell} | {init} | {lr:g} | {per_seed} | {word:,.2f} | {share} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.md").write_text(table + "\n")
    (RESULTS / "results.json").write_text(json.dumps({
        "rows": rows, "steps": args.steps, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "cores": os.cpu_count(),
        "command": "python benchmarks/init_ablation.py"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
