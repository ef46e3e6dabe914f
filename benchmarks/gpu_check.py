"""The GPU check: one command that proves lmrnn's CUDA path in under ten minutes, leaving its
results behind even when it is cut short.

    python benchmarks/gpu_check.py                # on a machine with a CUDA GPU (about 9 minutes)
    python benchmarks/gpu_check.py --dry-run      # the same steps at toy sizes on the CPU (seconds; tested)

Steps, in order, each time-boxed; after each, benchmarks/results/gpu-<date>.json (and .md) are
written again, so a run cut short keeps every finished step:

1. info      device, driver, torch, CUDA and cuDNN versions
2. tests     pytest -m gpu (every GPU test; they skip without CUDA)
3. speed     lmrnn training tokens/s and peak memory, LSTM 2x650, batch 64, bptt 70, in fp32,
             bf16 and fp16 (and 2x1500 in bf16), plus evaluation tokens/s
4. suite     benchmarks/run.py --device cuda --quick (the bare loop beside lmrnn, the ladder)
5. medium    configs/medium.yaml on PTB for a few minutes, then its test perplexity and
             generation ms/token at batch 1 and 64

Targets (H100/H200 class; issue 25): LSTM 2x650 at >= 500k training tokens/s in bf16 and >= 3x
the fp32 bare loop; a PTB epoch under 3 s; bf16 peak memory under half of fp32 at 3x1150;
layer-normalised LSTM within 2x of cuDNN; evaluation >= 2x training tokens/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PTB = ROOT.parent / "shared" / "corpora" / "ptb"


def info() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    driver = None
    if cuda:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        driver = smi.stdout.strip() or smi.stderr.strip()
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "python": platform.python_version()}


def gpu_tests(dry: bool, timeout: float) -> dict:
    """Every GPU-marked test (they skip without CUDA); in dry mode those of tests/test_gpu.py alone."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py" if dry else "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""}


def _corpus(dry: bool, folder: Path) -> str:
    if not dry:
        return str(PTB)
    from tests.conftest import write_corpus
    return str(write_corpus(folder / "corpus"))


def _train(corpus: str, folder: Path, name: str, overrides: list[str], preset: str = "tiny.yaml") -> dict:
    import torch

    from lmrnn.config_parser import load_config
    from lmrnn.console import TrainingProgress
    from lmrnn.train import train

    cfg = load_config(ROOT / "configs" / preset, [f"data.source={corpus}", f"data.cache_dir={folder / 'cache'}",
                                                   "train.eval_every=0", "train.save_every=0", *overrides])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    summary = train(cfg, folder / name, overwrite=True, progress=TrainingProgress(enabled=False))
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    return {"tokens_per_second": summary["train_tokens_per_second"], "steps": summary["steps"],
            "test_ppl": summary["test_ppl"], "peak_mb": peak, "stopped_by": summary["stopped_by"]}


def speed(dry: bool, folder: Path) -> dict:
    """Training tokens/s and peak memory per precision; evaluation tokens/s."""
    import torch

    from lmrnn.evaluate import evaluate_run

    corpus = _corpus(dry, folder)
    word = [] if dry else ["tokenizer.model_type=word", "tokenizer.vocab_size=0"]
    shape = ["model.hidden_size=32", "model.embedding_dim=32", "train.batch_size=8", "train.bptt=16"] if dry else \
        ["model.hidden_size=650", "model.embedding_dim=650", "model.num_layers=2", "train.batch_size=64", "train.bptt=70"]
    steps = ["train.max_steps=5", "train.epochs=0"] if dry else ["train.max_steps=300", "train.epochs=0"]
    precisions = ("fp32", "bf16", "fp16") if torch.cuda.is_available() else ("fp32",)
    rows = {}
    for precision in precisions:
        rows[f"lstm 2x650 {precision}" if not dry else f"lstm toy {precision}"] = _train(
            corpus, folder, f"speed-{precision}", [*word, *shape, *steps, f"train.precision={precision}",
                                                    "model.cell=lstm", "device=auto"])
    if torch.cuda.is_available() and not dry:
        rows["lstm 2x1500 bf16"] = _train(corpus, folder, "speed-1500", [*word, *shape, *steps, "model.hidden_size=1500",
                                                                          "model.embedding_dim=1500", "train.precision=bf16"])
        rows["layer-normalised lstm 2x650 bf16"] = _train(corpus, folder, "speed-ln", [*word, *shape, *steps,
                                                                                       "model.layer_norm=true",
                                                                                       "train.precision=bf16"])
    start = time.perf_counter()
    evaluated = evaluate_run(folder / f"speed-{precisions[0]}", "validation")
    rows["eval"] = {"tokens_per_second": evaluated.tokens / (time.perf_counter() - start)}
    return rows


def suite(dry: bool, timeout: float) -> dict:
    if dry:
        return {"skipped": "the CUDA speed suite runs on a GPU only"}
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--device", "cuda", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return {"returncode": done.returncode, "tail": done.stdout[-4000:]}


def medium(dry: bool, folder: Path, minutes: float) -> dict:
    """A preset trained for a few minutes, its test perplexity and generation speed."""
    from lmrnn.api import load

    corpus = _corpus(dry, folder)
    if dry:
        trained = _train(corpus, folder, "medium", ["train.max_steps=5", "train.epochs=0"])
    else:
        trained = _train(corpus, folder, "medium", ["tokenizer.model_type=word", "tokenizer.vocab_size=0",
                                                    f"train.max_minutes={minutes}", "train.epochs=0", "train.max_steps=0"],
                         preset="medium.yaml")
    lm = load(folder / "medium")
    generation = {}
    for batch in (1, 64):
        lm.complete("the", max_new_tokens=5, num_samples=batch, seed=0)  # warm-up
        start = time.perf_counter()
        lm.complete("the", max_new_tokens=50, num_samples=batch, seed=0, stop_at_eos=False)
        generation[f"ms_per_token_batch{batch}"] = 1000 * (time.perf_counter() - start) / 50
    return {**trained, **generation}


def markdown(results: dict) -> str:
    lines = [f"# GPU check, {results['date']}", "", f"`{json.dumps(results.get('info', {}))}`", ""]
    for step, outcome in results["steps"].items():
        lines.append(f"- **{step}**: {outcome['status']} in {outcome['seconds']:.0f} s")
    if isinstance(results.get("speed"), dict):
        lines += ["", "| run | tokens/s | peak MB | test ppl |", "|---|---:|---:|---:|"]
        for name, row in results["speed"].items():
            peak = "–" if row.get("peak_mb") is None else f"{row['peak_mb']:.0f}"
            ppl = "–" if row.get("test_ppl") is None else f"{row['test_ppl']:.2f}"
            lines.append(f"| {name} | {row['tokens_per_second']:,.0f} | {peak} | {ppl} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on any device, in seconds")
    parser.add_argument("--medium-minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{date}{'-dry' if args.dry_run else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": date, "dry_run": args.dry_run, "steps": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        steps = [("info", info), ("tests", lambda: gpu_tests(args.dry_run, 150)),
                 ("speed", lambda: speed(args.dry_run, folder)), ("suite", lambda: suite(args.dry_run, 200)),
                 ("medium", lambda: medium(args.dry_run, folder, args.medium_minutes))]
        for name, step in steps:
            start = time.perf_counter()
            try:
                results[name] = step()
                status = "ok"
            except Exception as err:  # a step that fails or times out is recorded; the next one still runs
                status = f"failed: {type(err).__name__}: {str(err).strip()[:300]}"
            results["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: {status} ({results['steps'][name]['seconds']:.0f} s)", flush=True)
            out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
