"""Speed of the pipeline against a bare PyTorch loop, evaluation, and the token cache.

    python benchmarks/bench_speed.py                       # PTB from ../shared/corpora/ptb
    python benchmarks/bench_speed.py --sizes 200 --steps 20 --repeats 1

For each LSTM size (2 layers, Zaremba et al. 2014 "small" = 200 and "medium" = 650; batch 20,
bptt 35, word-level vocabulary of 10k, AdamW, clip 0.25, fp32), side by side in one process and
after one untimed warm-up of each, interleaved A B A B A B so that machine noise hits both alike:
  pipeline  lmrnn.train.train() for --steps steps; its train_tokens_per_second (the loop alone,
            validation and saving excluded)
  bare      embedding -> nn.LSTM -> linear -> cross-entropy -> backward -> clip -> step over the
            same batchified PTB ids, timed the same way (every step, the first included)
  eval      exact NLL of the validation split under torch.inference_mode (lmrnn.evaluate)
and once: the set-up time of a first run (train the tokenizer, tokenize 3 splits) against a
second run that finds both in the cache. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmrnn.config import load_config
from lmrnn.console import TrainingProgress
from lmrnn.data import SPLITS, Corpus, batchify, load_or_train_tokenizer, load_split, windows
from lmrnn.evaluate import score_split
from lmrnn.models import RNNLM
from lmrnn.train import train

ROOT = Path(__file__).resolve().parent.parent


def shapes(corpus: Path, size: int, steps: int, cache: Path) -> list[str]:
    return [f"data.source={corpus}", f"data.cache_dir={cache}", "device=cpu", "tokenizer.model_type=word",
            "tokenizer.vocab_size=10000", "model.cell=lstm", f"model.embedding_dim={size}", f"model.hidden_size={size}",
            "model.num_layers=2", "model.dropout=0", "model.tie_weights=false", "train.batch_size=20",
            "train.bptt=35", "train.optimizer=adamw", "train.lr=0.001", "train.clip_grad_norm=0.25",
            "train.lr_schedule=constant", "train.warmup_steps=0", "train.precision=fp32", f"train.max_steps={steps}",
            "train.epochs=0", "train.eval_every=0", "train.save_every=0", "train.log_every=100000"]


def bare_loop(x: torch.Tensor, y: torch.Tensor, vocab: int, size: int, steps: int) -> float:
    """The reference: what a hand-written PyTorch TBPTT loop does per step, nothing more."""
    torch.manual_seed(0)
    embedding, lstm, decoder = nn.Embedding(vocab, size), nn.LSTM(size, size, 2, batch_first=True), nn.Linear(size, vocab)
    params = [*embedding.parameters(), *lstm.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    hidden, tokens = None, 0
    start = time.perf_counter()
    for step, (xw, yw) in enumerate(windows(x, y, 35)):
        if step == steps:
            break
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)
        out, hidden = lstm(embedding(xw), hidden)
        loss = F.cross_entropy(decoder(out).flatten(0, 1), yw.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()
        tokens += yw.numel()
    return tokens / (time.perf_counter() - start)


def small_eval_corpus(ptb: Path, folder: Path) -> Path:
    """PTB train as is; validation and test cut to 300 lines so that the pipeline's closing
    evaluation does not dominate the benchmark's wall time (it is not timed either way)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").unlink(missing_ok=True)
    (folder / "train.txt").symlink_to(ptb / "train.txt")
    for name in ("valid", "test"):
        lines = (ptb / f"{name}.txt").read_text().splitlines(keepends=True)[:300]
        (folder / f"{name}.txt").write_text("".join(lines))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "ptb")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[200, 650])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmrnn-bench-"))
    corpus = small_eval_corpus(args.corpus, work / "ptb")
    cache = work / "cache"

    # ---- token cache: first run (tokenizer training + tokenizing) vs second run (cache hit)
    setup = {}
    for label in ("first run", "second run"):
        cfg = load_config(overrides=shapes(args.corpus, 200, 1, cache))
        start = time.perf_counter()
        tokenizer = load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer)
        for split in SPLITS:
            load_split(Corpus(cfg.data), split, tokenizer)
        setup[label] = time.perf_counter() - start

    rows = []
    for size in args.sizes:
        cfg = load_config(overrides=shapes(corpus, size, args.steps, cache))
        c = Corpus(cfg.data)
        tokenizer = load_or_train_tokenizer(c, cfg.tokenizer)
        x, y = batchify(load_split(c, "train", tokenizer).ids, 20)
        # untimed warm-up of both: first allocations and kernel choices are paid here
        train(load_config(overrides=shapes(corpus, size, 5, cache)), work / f"warmup-{size}", progress=TrainingProgress(enabled=False))
        bare_loop(x, y, tokenizer.vocab_size, size, 5)
        pipeline, bare = [], []
        for repeat in range(args.repeats):
            summary = train(cfg, work / f"run-{size}-{repeat}", progress=TrainingProgress(enabled=False))
            pipeline.append(summary["train_tokens_per_second"])
            bare.append(bare_loop(x, y, tokenizer.vocab_size, size, args.steps))
        cfg.model.vocab_size = tokenizer.vocab_size
        model = RNNLM(cfg.model)
        valid = load_split(Corpus(load_config(overrides=shapes(args.corpus, size, 1, cache)).data), "validation", tokenizer)
        start = time.perf_counter()
        _, tokens = score_split(model, valid, 20, 35)
        eval_speed = tokens / (time.perf_counter() - start)
        row = {"model": f"LSTM 2x{size}", "vocab": tokenizer.vocab_size, "pipeline_tokens_per_second": statistics.median(pipeline),
               "bare_tokens_per_second": statistics.median(bare), "eval_tokens_per_second": eval_speed,
               "pipeline_runs": pipeline, "bare_runs": bare}
        row["pipeline_over_bare"] = row["pipeline_tokens_per_second"] / row["bare_tokens_per_second"]
        row["eval_over_train"] = eval_speed / row["pipeline_tokens_per_second"]
        rows.append(row)

    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.steps} steps x {args.repeats} interleaved repeats, medians\n")
    print(f"{'model':<14}{'vocab':>7}{'pipeline tok/s':>16}{'bare tok/s':>12}{'ratio':>8}{'eval tok/s':>12}{'eval/train':>12}")
    for r in rows:
        print(f"{r['model']:<14}{r['vocab']:>7}{r['pipeline_tokens_per_second']:>16,.0f}{r['bare_tokens_per_second']:>12,.0f}"
              f"{r['pipeline_over_bare']:>8.3f}{r['eval_tokens_per_second']:>12,.0f}{r['eval_over_train']:>12.2f}")
    print(f"\nset-up before the first step: first run {setup['first run']:.2f}s (tokenizer + tokenizing), "
          f"second run {setup['second run']:.3f}s (cache): {setup['first run'] - setup['second run']:.2f}s saved")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "setup_seconds": setup, "steps": args.steps, "repeats": args.repeats,
                                    "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
