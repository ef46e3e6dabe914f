"""Greedy generation through onnxruntime against PyTorch, on the CPU, side by side.

    python benchmarks/onnx_speed.py RUN [--tokens 200] [--repeats 5] [--threads 2]

Exports RUN (lmrnn export) to a scratch folder, checks that both give the same greedy ids, then
times `--tokens` greedy tokens at batch 1 from the same prompt, alternating PyTorch and
onnxruntime `--repeats` times after a warm-up of each, both at `--threads` intra-op threads.
Prints ms per token (median) and the ratio, and writes benchmarks/results/onnx-speed.json.
Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    import lmrnn
    from lmrnn.export import OnnxStep, export_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="the company said")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx-speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = lmrnn.load(args.run, device="cpu")
    prompt = lm._generator.prompt_ids(args.prompt)
    with tempfile.TemporaryDirectory() as scratch:
        export_onnx(args.run, Path(scratch) / "onnx")
        onnx = OnnxStep(Path(scratch) / "onnx", threads=args.threads)

        def with_torch() -> list[int]:
            return lm.complete(args.prompt, temperature=0, max_new_tokens=args.tokens, stop_at_eos=False).continuations[0].ids

        def with_onnx() -> list[int]:
            return onnx.greedy(prompt, args.tokens, stop_at_eos=False)

        same = with_torch() == with_onnx()  # also the warm-up of each
        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.repeats):
            for name, run in (("pytorch", with_torch), ("onnxruntime", with_onnx)):
                start = time.perf_counter()
                run()
                times[name].append(1000 * (time.perf_counter() - start) / args.tokens)
    ms = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'':12} ms/token (median of {args.repeats})")
    for name, value in ms.items():
        print(f"{name:12} {value:8.3f}")
    print(f"onnxruntime / pytorch time: {ms['onnxruntime'] / ms['pytorch']:.2f}; same greedy ids: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "run": str(args.run), "cell": lm.config.model.cell, "params": lm.model.num_parameters(), "tokens": args.tokens,
        "threads": args.threads, "ms_per_token": ms, "all": times, "same_greedy_ids": same,
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/onnx_speed.py " + " ".join(sys.argv[1:])}, indent=2) + "\n")


if __name__ == "__main__":
    main()
