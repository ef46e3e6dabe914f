"""Generation speed: ms per generated token and tokens/s, against the raw model step.

    python benchmarks/bench_generate.py                      # PTB word vocabulary, 2x256 and 2x650, CPU
    python benchmarks/bench_generate.py --device cuda --tokens 400

For each LSTM (2 layers, hidden 256 and 650, tied 10k word vocabulary trained on
../shared/corpora/ptb; random weights: speed does not depend on their values), in one process,
after a warm-up of each, interleaved A B C ... A B C ... so that machine noise hits all alike:
  raw step   `logits, hidden = model(token, hidden)` for one token per row with a carried
             state, and nothing else: the floor any generation loop stands on
  greedy, sample, top-p, penalties, beams
             `TextGenerator.generate()` producing --tokens tokens (end-of-sequence does not stop
             it), streamed into a no-op sink at batch 1: sampling, filtering, incremental
             detokenisation, stop-string and limit checks included. ms/token = time / tokens.
at batch 1 and batch 64 (`--num-samples 64`). overhead = loop ms/token / raw ms/step - 1, at the
same batch; beam search (4 beams, one text) against the raw step at batch 4. Prints a table and
writes JSON (--out).
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

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.corpus import Corpus
from lmrnn.data import load_or_train_tokenizer
from lmrnn.generate import TextGenerator
from lmrnn.models import RNNLM
from lmrnn.sampling import Decoding

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = {  # name -> Decoding options besides batch and length
    "greedy": {"temperature": 0.0},
    "sample": {},
    "top-k 50 + top-p 0.9": {"top_k": 50, "top_p": 0.9},
    "rep. penalty 1.2 + no-repeat 3": {"repetition_penalty": 1.2, "no_repeat_ngram": 3},
}


def make_run(folder: Path, corpus: Path, size: int, cache: Path) -> Path:
    cfg = load_config(None, [f"data.source={corpus}", f"data.cache_dir={cache}", "tokenizer.model_type=word",
                             "tokenizer.vocab_size=10000", "model.cell=lstm", f"model.embedding_dim={size}",
                             f"model.hidden_size={size}", "model.num_layers=2", "model.dropout=0"])
    tokenizer = load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer)
    cfg.model.vocab_size = tokenizer.vocab_size
    run = folder / f"lstm-{size}"
    run.mkdir(parents=True)
    checkpoint.save_config(run, cfg)
    checkpoint.save_tokenizer(run, tokenizer)
    torch.manual_seed(0)
    checkpoint.save_weights(run, RNNLM(cfg.model), step=0)
    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_step(generator: TextGenerator, batch: int, tokens: int) -> float:
    """Seconds per forward of one token per row, the state carried."""
    model, device = generator.model, generator.device
    token = torch.full((batch, 1), 5, device=device)
    with torch.inference_mode():
        _, hidden = model(token)
        sync(device)
        start = time.perf_counter()
        for _ in range(tokens):
            logits, hidden = model(token, hidden)
        sync(device)
    return (time.perf_counter() - start) / tokens


def loop_step(generator: TextGenerator, batch: int, tokens: int, options: dict) -> float:
    """Seconds per generated token (per step of the batch) through TextGenerator.generate()."""
    if "beams" in options:
        decoding = Decoding(max_new_tokens=tokens, **options)
    else:
        decoding = Decoding(max_new_tokens=tokens, num_samples=batch, **options)
    sink = (lambda text: None) if decoding.batch_size == 1 else None
    rng = generator.random_generator(0)
    sync(generator.device)
    start = time.perf_counter()
    generation = generator.generate("the", decoding, rng, stop_at_eos=decoding.beams > 1, on_text=sink)
    sync(generator.device)
    elapsed = time.perf_counter() - start
    steps = max(c.tokens for c in generation.continuations)
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "ptb")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 650])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generate-speed.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(os.environ.get("LMRNN_CACHE", Path(tmp) / "cache"))
        for size in args.sizes:
            generator = TextGenerator(make_run(Path(tmp), args.corpus, size, cache), args.device)
            for batch in args.batches:
                cases = {"raw step": lambda b=batch: raw_step(generator, b, args.tokens)}
                for name, options in STRATEGIES.items():
                    if batch == 1 or name != "greedy":  # greedy samples would all be the same text
                        cases[name] = lambda b=batch, o=options: loop_step(generator, b, args.tokens, o)
                if batch == 1:  # beam search steps 4 rows: its floor is the raw step at batch 4
                    cases["raw step, batch 4"] = lambda: raw_step(generator, 4, args.tokens)
                    cases["beam search, 4 beams"] = lambda: loop_step(generator, 1, args.tokens, {"beams": 4})
                for case in cases.values():  # warm-up
                    case()
                times = {name: [] for name in cases}
                for _ in range(args.repeats):
                    for name, case in cases.items():
                        times[name].append(case())
                for name, values in times.items():
                    seconds = statistics.median(values)
                    raw = statistics.median(times["raw step, batch 4" if name.startswith("beam") else "raw step"])
                    rows_per_step = 4 if name == "raw step, batch 4" else 1 if name.startswith("beam") else batch
                    rows.append({"model": f"2x{size}", "batch": batch, "case": name, "ms_per_token": seconds * 1e3,
                                 "tokens_per_second": rows_per_step / seconds,
                                 "overhead_vs_raw": None if name.startswith("raw") else seconds / raw - 1})
                    print(f"2x{size:<4} batch {batch:>3}  {name:<32} {seconds * 1e3:8.3f} ms/token  "
                          f"{rows[-1]['tokens_per_second']:10,.0f} tok/s  "
                          + ("" if rows[-1]["overhead_vs_raw"] is None else f"overhead {rows[-1]['overhead_vs_raw']:+.0%}"),
                          flush=True)
    result = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
              "date": time.strftime("%Y-%m-%d"), "tokens": args.tokens, "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
