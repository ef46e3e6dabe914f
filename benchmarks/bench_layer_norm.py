"""Speed of the layer-normalised recurrent layers against PyTorch's own (cuDNN on a GPU).

    python benchmarks/bench_layer_norm.py                   # CPU, or the GPU when there is one
    python benchmarks/bench_layer_norm.py --device cuda --batch 64 --bptt 70

One training step of a 2-layer recurrent stack (no embedding or decoder, so that the
recurrence is all that is timed): forward over a (B, T, H) window from a carried state, a
sum-of-squares loss, backward. Per cell (LSTM, GRU), side by side in one process, after an
untimed warm-up of each, interleaved A B C A B C so that machine noise hits all alike:
  torch      nn.LSTM / nn.GRU with 2 layers (cuDNN on CUDA)
  ln         lmrnn.cells.LayerNormRNN x 2, as `model.layer_norm: true` runs it on this device
             (the plain step loop on the CPU, the torch.compile'd step on CUDA)
  ln-other   the other step of the two (compiled on the CPU, plain on CUDA), for the record
             of why the device uses the one it does
Prints tokens/s and the ratio to `torch`; writes JSON with the machine, torch and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lmrnn import cells

ROOT = Path(__file__).resolve().parent.parent


def stack(kind: str, cell: str, size: int, device: torch.device) -> nn.Module:
    if kind == "torch":
        return {"lstm": nn.LSTM, "gru": nn.GRU}[cell](size, size, 2, batch_first=True).to(device)
    return nn.ModuleList([cells.LayerNormRNN(cell, size, size) for _ in range(2)]).to(device)


def run_layers(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, nn.RNNBase):
        return model(x)[0]
    for layer in model:
        x = layer(x)[0]
    return x


def step_time(model: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Seconds per training step (forward, backward), synchronised on CUDA."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run_layers(model, x).pow(2).mean().backward()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=650)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "layer-norm-speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.bptt, args.size, device=device)
    here_compiled = device.type == "cuda"  # what LayerNormRNN does by itself on this device
    tokens = args.batch * args.bptt
    rows = []
    for cell in ("lstm", "gru"):
        ln, other = stack("ln", cell, args.size, device), stack("ln", cell, args.size, device)
        for layer in other:
            layer.compile_steps = not here_compiled
        variants = {"torch": stack("torch", cell, args.size, device), "ln": ln, "ln-other": other}
        warm = {}
        for name, model in variants.items():  # warm-up untimed; compiling happens here
            start = time.perf_counter()
            step_time(model, x, 2)
            warm[name] = time.perf_counter() - start
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, model in variants.items():
                times[name].append(step_time(model, x, args.steps))
        row = {"cell": cell, **{f"{name}_tokens_per_second": tokens / statistics.median(t) for name, t in times.items()},
               "ln_compiled": here_compiled, "warmup_seconds": warm}
        row["ln_over_torch"] = row["ln_tokens_per_second"] / row["torch_tokens_per_second"]
        row["ln_other_over_ln"] = row["ln-other_tokens_per_second"] / row["ln_tokens_per_second"]
        rows.append(row)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\n{device.type.upper()}: {name}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; 2 x {args.size}, batch {args.batch}, bptt {args.bptt}; "
          f"{args.steps} steps x {args.repeats} interleaved repeats, medians\n")
    other_label = "ln, plain step" if here_compiled else "ln, compiled step"
    print(f"{'cell':<6}{'torch tok/s':>13}{'ln tok/s':>11}{'ln/torch':>10}{other_label + ' tok/s':>26}{'vs ln':>8}")
    for r in rows:
        print(f"{r['cell']:<6}{r['torch_tokens_per_second']:>13,.0f}{r['ln_tokens_per_second']:>11,.0f}"
              f"{r['ln_over_torch']:>10.2f}{r['ln-other_tokens_per_second']:>26,.0f}{r['ln_other_over_ln']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "device": device.type, "device_name": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch, "bptt": args.bptt,
        "steps": args.steps, "repeats": args.repeats, "date": datetime.date.today().isoformat(),
        "machine": platform.machine(), "cores": os.cpu_count()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
