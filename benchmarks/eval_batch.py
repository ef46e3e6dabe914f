"""Does evaluation depend on the evaluation batch? Validation perplexity at eval batch 1 (one
stream, the reference) against batch B, for each burn-in K, and what the burn-in costs.

    python benchmarks/eval_batch.py RUN... [--batch 32] [--burn-in 0,35,70,140,256,512] [--split validation]

Each of the B rows first reads the K tokens before it in the stream, unscored (lmrnn.evaluate,
train.eval_burn_in); K = 0 is every row from the zero state, as lmrnn evaluated before. Batch 1
reads the split as one stream whatever K is. Tokens/s counts the split's scored tokens over the
scoring time (the model and ids loaded beforehand), the best of two timings. Prints a table
and writes benchmarks/results/eval-batch.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from lmrnn import checkpoint
from lmrnn.corpus import Corpus
from lmrnn.data import load_split
from lmrnn.evaluate import score_split

ROOT = Path(__file__).resolve().parent.parent


def timed_ppl(model, split, batch: int, bptt: int, burn_in: int) -> tuple[float, float]:
    """(perplexity, scored tokens per second: the faster of two runs)."""
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        nll, tokens = score_split(model, split, batch, bptt, burn_in=burn_in)
        seconds.append(time.perf_counter() - start)
    return float(torch.tensor(nll / tokens).exp()), tokens / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--burn-in", type=lambda s: [int(x) for x in s.split(",")], default=[0, 35, 70, 140, 256, 512])
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval-batch.json")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        model, tokenizer, cfg = checkpoint.load_run(run, torch.device("cpu"))
        split = load_split(Corpus(cfg.data), args.split, tokenizer)
        one, one_speed = timed_ppl(model, split, 1, cfg.train.bptt, 0)
        for burn_in in args.burn_in:
            ppl, speed = timed_ppl(model, split, args.batch, cfg.train.bptt, burn_in)
            rows.append({"run": str(run), "burn_in": burn_in, "ppl_batch_1": one, f"ppl_batch_{args.batch}": ppl,
                         "gap": ppl / one - 1, "tokens_per_second": speed, "tokens_per_second_batch_1": one_speed})
            print(f"{run.name:<44} K {burn_in:>4} | batch 1 {one:10.2f} | batch {args.batch} {ppl:10.2f} "
                  f"({100 * (ppl / one - 1):+7.2f}%) | {speed:8.0f} tok/s (batch 1: {one_speed:.0f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "split": args.split, "batch": args.batch, "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "cores": os.cpu_count(), "command": "python benchmarks/eval_batch.py " + " ".join(map(str, args.runs))},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
