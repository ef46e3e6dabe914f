"""Peak memory of tokenizing and of one training epoch, on PTB and on a corpus 20x its size.

    python benchmarks/bench_memory.py                     # PTB from ../shared/corpora/ptb
    python benchmarks/bench_memory.py --times 20 --out benchmarks/results/memory.json

The large corpus is built in a temporary folder: each split is PTB's repeated --times times, every
copy after the first perturbed (per line, a seeded 10% of the words replaced by other PTB words
and one pair of neighbours swapped), so that no copy is a byte-for-byte repeat. Each phase runs
in a fresh process that reports its own peak resident set size (ru_maxrss):
  tokenizer  train the SentencePiece tokenizer (BPE, 1000 pieces) on the train split
  encode     encode all three splits into the id cache (the tokenizer from the cache)
  train      one epoch of a small GRU (1 x 64) over the memory-mapped ids, validation and test
             included (tokenizer and ids from the cache)
The claim checked: the encode and train peaks grow by at most 25% from PTB to the 20x corpus,
and encoding throughput (MB of text per second) does not fall. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PTB = ROOT.parent / "shared" / "corpora" / "ptb"
FILES = ("train.txt", "valid.txt", "test.txt")
SETTINGS = ["device=cpu", "tokenizer.vocab_size=1000", "model.cell=gru", "model.embedding_dim=64", "model.hidden_size=64",
            "model.num_layers=1", "model.dropout=0", "train.batch_size=128", "train.eval_batch_size=128",
            "train.bptt=64", "train.epochs=1", "train.eval_every=0", "train.save_every=0", "train.save_minutes=0",
            "train.log_every=1000"]


def build_corpus(source: Path, out: Path, times: int) -> None:
    """Every split of `source` written `times` times to `out`, copies after the first perturbed."""
    out.mkdir(parents=True)
    vocabulary = sorted({w for line in (source / "train.txt").open() for w in line.split()})
    for name in FILES:
        lines = (source / name).read_text().splitlines()
        with open(out / name, "w") as handle:
            for copy in range(times):
                rng = random.Random(copy)
                for line in lines:
                    words = line.split()
                    if copy and words:
                        words = [rng.choice(vocabulary) if rng.random() < 0.1 else w for w in words]
                        i = rng.randrange(len(words))
                        words[i:i + 2] = words[i:i + 2][::-1]
                    handle.write(" " + " ".join(words) + " \n" if words else "\n")


def phase(name: str, corpus: Path, cache: Path, run: Path) -> dict:
    """Run one phase in this process and return its figures (called in a fresh child)."""
    from lmrnn.config_parser import load_config
    from lmrnn.console import TrainingProgress
    from lmrnn.corpus import SPLITS, Corpus
    from lmrnn.data import load_or_train_tokenizer, load_split
    from lmrnn.train import train

    cfg = load_config(None, [f"data.source={corpus}", f"data.cache_dir={cache}", *SETTINGS])
    corpus_ = Corpus(cfg.data)
    start = time.perf_counter()
    figures: dict = {}
    if name == "tokenizer":
        load_or_train_tokenizer(corpus_, cfg.tokenizer)
    elif name == "encode":
        tokenizer = load_or_train_tokenizer(corpus_, cfg.tokenizer)
        start = time.perf_counter()
        splits = [load_split(corpus_, split, tokenizer) for split in SPLITS]
        figures = {"tokens": sum(s.tokens for s in splits), "text_mb": sum(s.bytes for s in splits) / 1e6}
    else:
        summary = train(cfg, run, progress=TrainingProgress(enabled=False))
        figures = {"train_tokens": summary["train_tokens"], "tokens_per_second": summary["train_tokens_per_second"],
                   "test_ppl": summary["test_ppl"]}
    seconds = time.perf_counter() - start
    if "text_mb" in figures:
        figures["mb_per_second"] = figures["text_mb"] / seconds
    return {"phase": name, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **figures}


def measure(name: str, corpus: Path, cache: Path, run: Path) -> dict:
    child = subprocess.run([sys.executable, __file__, "--phase", name, "--corpus", str(corpus), "--cache", str(cache),
                            "--run", str(run)], capture_output=True, text=True, check=False)
    if child.returncode:
        sys.exit(f"phase {name} on {corpus} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptb", type=Path, default=PTB)
    parser.add_argument("--times", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    parser.add_argument("--phase", choices=("tokenizer", "encode", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child: one phase, its figures as the last line of stdout
        print(json.dumps(phase(args.phase, args.corpus, args.cache, args.run)))
        return
    if not (args.ptb / "train.txt").is_file():
        sys.exit(f"PTB not found at {args.ptb}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="lmrnn-memory-") as tmp:
        corpora = {"ptb": Path(tmp) / "ptb", f"ptb x{args.times}": Path(tmp) / f"ptb{args.times}"}
        shutil.copytree(args.ptb, corpora["ptb"], ignore=shutil.ignore_patterns("README*"))
        build_corpus(args.ptb, corpora[f"ptb x{args.times}"], args.times)
        for label, corpus in corpora.items():
            size = sum((corpus / name).stat().st_size for name in FILES) / 1e6
            for name in ("tokenizer", "encode", "train"):
                result = measure(name, corpus, Path(tmp) / "cache", Path(tmp) / f"run-{corpus.name}")
                rows.append({"corpus": label, "corpus_mb": round(size, 1), **result})
                print(f"{label:>8} {name:>9}: {result['peak_rss_mb']:7.0f} MB peak RSS, {result['seconds']:6.1f} s",
                      file=sys.stderr, flush=True)

    def peak(label: str, name: str) -> dict:
        return next(r for r in rows if r["corpus"] == label and r["phase"] == name)

    big = f"ptb x{args.times}"
    checks = {name: peak(big, name)["peak_rss_mb"] / peak("ptb", name)["peak_rss_mb"] for name in ("encode", "train")}
    speed = peak(big, "encode")["mb_per_second"] / peak("ptb", "encode")["mb_per_second"]
    print(f"\n{'corpus':>8} | {'MB text':>7} | {'phase':>9} | {'peak RSS MB':>11} | {'seconds':>7} | notes")
    for r in rows:
        notes = (f"{r['mb_per_second']:.1f} MB/s, {r['tokens']:,} tokens" if r["phase"] == "encode" else
                 f"{r['tokens_per_second']:,.0f} tok/s, {r['train_tokens']:,} tokens" if r["phase"] == "train" else "")
        print(f"{r['corpus']:>8} | {r['corpus_mb']:7.1f} | {r['phase']:>9} | {r['peak_rss_mb']:11.0f} | "
              f"{r['seconds']:7.1f} | {notes}")
    print(f"\npeak RSS {big} / ptb: encode {checks['encode']:.3f}, train {checks['train']:.3f} (claim: <= 1.25); "
          f"encode MB/s {big} / ptb: {speed:.2f} (claim: >= 1, within noise)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]), "settings": SETTINGS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows,
        "rss_ratio": checks, "encode_speed_ratio": speed}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
