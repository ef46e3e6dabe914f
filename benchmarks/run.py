"""The speed suite: one command, one table per part, one JSON file.

    python benchmarks/run.py --quick                 # CPU, a few minutes: LSTM/GRU/RNN 2x650 and LSTM 2x200
    python benchmarks/run.py                         # CPU, every shape (about 35 minutes on 2 cores)
    python benchmarks/run.py --device cuda           # GPU: adds precisions, the fast-path ladder, 3x1150 memory

On ../shared/corpora/ptb (a word tokenizer of 10,000 pieces), in one process:

1. peak     the device's dense matmul FLOP/s (fp32; on CUDA also TF32 and bf16), measured here at
            the start and the end (the higher of the two), best over sizes and tries
2. train    tokens/s and peak memory of `lmrnn.train.train()` for RNN, LSTM and GRU at 2x200,
            2x650 and 3x1150, batch 20/64, bptt 35/70, each beside a bare PyTorch loop of the same
            shapes (embedding -> nn.LSTM/GRU/RNN -> linear -> F.cross_entropy -> clip -> AdamW,
            `loss.item()` each step, the ids on the device: pytorch/examples' word_language_model),
            run alternately A B A B A B after an untimed warm-up of each; ratio = lmrnn / bare, the
            median of the repeats. MFU = tokens/s x training FLOPs per token / the measured peak,
            FLOPs per token = 6 x (recurrent matmul weights + decoder weights): forward 2 per
            weight, backward 4. Peak memory: on the CPU the peak resident set (VmHWM) of a fresh
            process that runs one step of the loop, Python and torch included; on CUDA
            torch.cuda.max_memory_allocated. Both loops are timed over all their steps.
3. ladder   the bare loop with one fast path added at a time (LSTM 2x650): no per-step host sync,
            fused AdamW, the fused chunked cross-entropy, then (CUDA) bf16 autocast and fp16 with a
            gradient scaler; and lmrnn's own loop in each precision
4. output   LSTM 2x650, batch 64, bptt 70 over a 33,278-token vocabulary (WikiText-2's; random
            ids, Zipf-distributed): the plain cross-entropy, lmrnn's fused one and the adaptive
            softmax (Grave et al. 2017);
            on CUDA also 3x1150, batch 80, bptt 70 in bf16 against the fp32 bare loop (peak memory)
5. eval     exact validation NLL under inference_mode, tokens/s, at eval batch 20 and 80
6. generate ms per token at batch 1 and 64 (sampling, through TextGenerator)
7. data     tokenization MB/s on first use (tokenizer training + encoding), then the cache's load time

Writes benchmarks/results/run-<device>[-quick].json with the machine, torch version, device,
threads and date. Timings need a quiet machine; ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmrnn.config_parser import load_config
from lmrnn.console import SilentProgress
from lmrnn.corpus import SPLITS, Corpus
from lmrnn.data import batchify, load_or_train_tokenizer, load_split
from lmrnn.evaluate import score_split
from lmrnn.generate import TextGenerator
from lmrnn.models import RNNLM
from lmrnn.softmax import FullSoftmax
from lmrnn.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import loop_step, make_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
WIKITEXT2_VOCAB = 33278


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """CUDA's allocator peak over a block (MB); None on the CPU, whose figure comes from
    `peak_rss_mb` instead: a process's resident set keeps what an earlier run freed."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20


def peak_rss_mb(function: str, **kwargs) -> float:
    """Peak resident set (MB) of a fresh process that runs `function(**kwargs)` (one training
    step) and nothing else: Python and torch included, the same for every row."""
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps({"function": function, "kwargs": kwargs})],
                           capture_output=True, text=True, check=False)
    if child.returncode:
        sys.exit(f"memory child {function} failed:\n{child.stderr[-3000:]}")
    return float(child.stdout.strip().splitlines()[-1])


def run_child(spec: str) -> None:
    request = json.loads(spec)
    globals()[request["function"]](**request["kwargs"])
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
    status = Path("/proc/self/status").read_text()
    print(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024)


# ---- 1. the hardware limit

def matmul_peak(device: torch.device, dtype: torch.dtype, tf32: bool = False) -> float:
    """Best FLOP/s of square matmuls (2 n^3 FLOPs each) over a few sizes and tries: a single
    2048^3 product, best of 5, read 174 GFLOP/s in a run where LSTM 3x1150's training step
    reached 176 (its GEMMs are larger)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
    best = math.inf, 1
    for n in ((1024, 2048, 4096) if device.type == "cpu" else (4096, 8192)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(5 if device.type == "cpu" else 20):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, (time.perf_counter() - start, n), key=lambda t: t[0] / t[1] ** 3)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * best[1] ** 3 / best[0]


def matmul_peaks(device: torch.device) -> dict[str, float]:
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if device.type == "cuda":
        peaks["tf32"] = matmul_peak(device, torch.float32, tf32=True)
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
    return peaks


# ---- 2. training: lmrnn against the bare loop

def train_flops_per_token(cell: str, layers: int, size: int, vocab: int) -> int:
    recurrent = sum(GATES[cell] * size * (size + size) for _ in range(layers))  # E = H = size
    return 6 * (recurrent + size * vocab)


def lmrnn_overrides(corpus: Path, cache: Path, device: str, cell: str, layers: int, size: int, batch: int, bptt: int,
                    steps: int, precision: str = "auto", vocab: int = 10000) -> list[str]:
    """lmrnn on the bare loop's shapes: untied, no dropout, AdamW at a constant rate, clip 0.25."""
    return [f"data.source={corpus}", f"data.cache_dir={cache}", f"device={device}", "tokenizer.model_type=word",
            f"tokenizer.vocab_size={vocab}", f"model.cell={cell}", f"model.embedding_dim={size}",
            f"model.hidden_size={size}", f"model.num_layers={layers}", "model.dropout=0", "model.tie_weights=false",
            f"train.batch_size={batch}", f"train.eval_batch_size={batch}", f"train.bptt={bptt}", "train.optimizer=adamw",
            "train.lr=0.001", "train.clip_grad_norm=0.25", "train.lr_schedule=constant", "train.warmup_steps=0",
            f"train.precision={precision}", f"train.max_steps={steps}", "train.epochs=0", "train.eval_every=0",
            "train.save_every=0", "train.save_minutes=0", "train.log_every=100000"]


def lmrnn_speed(overrides: list[str], run: Path, device: torch.device) -> tuple[float, float]:
    """tokens/s of train()'s loop (its own clock: validation and saving excluded) and peak MB."""
    shutil.rmtree(run, ignore_errors=True)
    with PeakMemory(device) as memory:
        summary = train(load_config(None, overrides), run, progress=SilentProgress())
    return summary["train_tokens_per_second"], memory.mb


def bare_loop(x: torch.Tensor, y: torch.Tensor, cell: str, layers: int, size: int, vocab: int, bptt: int,
              steps: int, device: torch.device, sync_each_step: bool = True, fused_adamw: bool = False,
              fused_loss: bool = False, amp: torch.dtype | None = None, host_batches: bool = False) -> tuple[float, float]:
    """The reference: what a hand-written PyTorch TBPTT loop does per step, nothing more (the
    defaults); each flag adds one fast path. x, y (B, L) int64 on the device (on the host with
    host_batches). Returns tokens/s over all `steps` steps and peak MB."""
    torch.manual_seed(0)
    embedding = nn.Embedding(vocab, size).to(device)
    rnn = CELLS[cell](size, size, layers, batch_first=True).to(device)
    decoder = (FullSoftmax if fused_loss else nn.Linear)(size, vocab).to(device)
    params = [*embedding.parameters(), *rnn.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, fused=fused_adamw or None)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    hidden, tokens, total_loss = None, 0, 0.0
    with PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        for step in range(steps):
            offset = (step * bptt) % (x.shape[1] - bptt)
            xw, yw = x[:, offset:offset + bptt], y[:, offset:offset + bptt]
            if host_batches:
                xw, yw = xw.to(device), yw.to(device)
            if hidden is not None:
                hidden = tuple(h.detach() for h in hidden) if cell == "lstm" else hidden.detach()
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out, hidden = rnn(embedding(xw), hidden)
                loss = (decoder.nll(out, yw) if fused_loss else
                        F.cross_entropy(decoder(out).float().flatten(0, 1), yw.flatten()))
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 0.25)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if sync_each_step:
                total_loss += loss.item()
            tokens += yw.numel()
        sync(device)
        seconds = time.perf_counter() - start
    return tokens / seconds, memory.mb


def ptb_streams(overrides: list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PTB's train ids (tokenizer and ids from the cache) as (batch, L) int64 x and y."""
    cfg = load_config(None, overrides)
    ids = load_split(Corpus(cfg.data), "train", load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer)).ids
    return tuple(torch.from_numpy(a.astype(np.int64)) for a in batchify(ids, batch))


def bare_step(overrides: list[str], batch: int, **shape) -> None:
    """One step of the bare loop on PTB (a memory child)."""
    bare_loop(*ptb_streams(overrides, batch), steps=1, device=torch.device("cpu"), **shape)


def lmrnn_step(overrides: list[str], run: str) -> None:
    """One step of lmrnn's loop (a memory child; its closing evaluation runs on 40 lines)."""
    lmrnn_speed(overrides, Path(run), torch.device("cpu"))


def steps_for(seconds_per_step: float, target: float) -> int:
    return max(2, round(target / max(seconds_per_step, 1e-6)))


def train_grid(args, corpus: Path, cache: Path, work: Path, vocab: int, device: torch.device) -> list[dict]:
    rows = []
    for cell, layers, size, batch, bptt in args.shapes:
        xb, yb = (t.to(device) for t in ptb_streams(lmrnn_overrides(corpus, cache, "cpu", cell, 1, 1, batch, bptt, 1), batch))
        shape = dict(cell=cell, layers=layers, size=size, vocab=vocab, bptt=bptt, device=device)
        # warm-up of each; the bare loop's warm-up step also sizes the measured runs
        start = time.perf_counter()
        bare_loop(xb, yb, steps=1, **shape)
        steps = steps_for(time.perf_counter() - start, args.seconds)
        run = work / f"{cell}-{layers}x{size}-{batch}-{bptt}"
        overrides = lmrnn_overrides(corpus, cache, device.type, cell, layers, size, batch, bptt, steps)
        lmrnn_speed(lmrnn_overrides(corpus, cache, device.type, cell, layers, size, batch, bptt, 1), run, device)
        ours, bare = [], []
        for _ in range(args.repeats):
            ours.append(lmrnn_speed(overrides, run, device))
            bare.append(bare_loop(xb, yb, steps=steps, **shape))
        speed, reference = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in bare)
        flops = train_flops_per_token(cell, layers, size, vocab)
        if device.type == "cuda":
            memory = (max(m for _, m in ours), max(m for _, m in bare))
        else:
            one_step = lmrnn_overrides(corpus, cache, "cpu", cell, layers, size, batch, bptt, 1)
            memory = (peak_rss_mb("lmrnn_step", overrides=one_step, run=str(run)),
                      peak_rss_mb("bare_step", overrides=one_step, batch=batch, cell=cell, layers=layers, size=size,
                                  vocab=vocab, bptt=bptt))
        row = {"model": f"{cell.upper()} {layers}x{size}", "batch": batch, "bptt": bptt, "steps": steps,
               "lmrnn_tokens_per_second": speed, "bare_tokens_per_second": reference, "ratio": speed / reference,
               "lmrnn_peak_mb": memory[0], "bare_peak_mb": memory[1],
               "flops_per_token": flops,
               "lmrnn_runs": [s for s, _ in ours], "bare_runs": [s for s, _ in bare]}
        rows.append(row)
        print(f"  {row['model']:<12} B{batch:<3} T{bptt:<3} lmrnn {speed:9,.0f} tok/s  bare {reference:9,.0f}  "
              f"ratio {row['ratio']:.3f}  {speed * flops / 1e9:,.0f} GFLOP/s", file=sys.stderr, flush=True)
    return rows


# ---- 3. the fast paths one at a time

def ladder(args, corpus: Path, cache: Path, work: Path, vocab: int, device: torch.device) -> list[dict]:
    cell, layers, size, batch, bptt = "lstm", 2, 650, *((64, 70) if device.type == "cuda" else (20, 35))
    xb, yb = ptb_streams(lmrnn_overrides(corpus, cache, "cpu", cell, 1, 1, batch, bptt, 1), batch)
    rungs = {"bare loop (fp32, loss.item() each step)": {}}
    if device.type == "cuda":
        rungs = {"bare loop, batches copied from the host": {"host_batches": True}, **rungs}
    rungs["+ no per-step host sync"] = {"sync_each_step": False}
    rungs["+ fused AdamW"] = {**rungs["+ no per-step host sync"], "fused_adamw": True}
    rungs["+ fused chunked cross-entropy"] = {**rungs["+ fused AdamW"], "fused_loss": True}
    if device.type == "cuda":
        rungs["+ bf16 autocast"] = {**rungs["+ fused chunked cross-entropy"], "amp": torch.bfloat16}
        rungs["+ fp16 autocast, grad scaler (instead)"] = {**rungs["+ fused chunked cross-entropy"], "amp": torch.float16}
    streams = {"host": (xb, yb), "device": (xb.to(device), yb.to(device))}

    def stream(flags: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return streams["host" if flags.get("host_batches") else "device"]

    shape = dict(cell=cell, layers=layers, size=size, vocab=vocab, bptt=bptt, device=device)
    start = time.perf_counter()
    bare_loop(*streams["device"], steps=1, **shape)
    steps = steps_for(time.perf_counter() - start, args.seconds)
    for flags in rungs.values():  # warm-up of each
        bare_loop(*stream(flags), steps=1, **shape, **flags)
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]
    runs = {name: [] for name in [*rungs, *(f"lmrnn {p}" for p in precisions)]}
    for _ in range(args.repeats):
        for name, flags in rungs.items():
            runs[name].append(bare_loop(*stream(flags), steps=steps, **shape, **flags))
        for precision in precisions:
            overrides = lmrnn_overrides(corpus, cache, device.type, cell, layers, size, batch, bptt, steps, precision)
            runs[f"lmrnn {precision}"].append(lmrnn_speed(overrides, work / f"ladder-{precision}", device))
    first = statistics.median(s for s, _ in next(iter(runs.values())))
    rows = [{"variant": name, "model": f"LSTM {layers}x{size}", "batch": batch, "bptt": bptt, "steps": steps,
             "tokens_per_second": statistics.median(s for s, _ in r),
             "peak_mb": max(m for _, m in r) if device.type == "cuda" else None, "runs": [s for s, _ in r]}
            for name, r in runs.items()]
    for row in rows:
        row["speedup"] = row["tokens_per_second"] / first
    return rows


# ---- 4. large vocabularies: the output layer

def zipf_ids(vocab: int, count: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy((rng.zipf(1.1, count) - 1) % vocab).long()


OUTPUTS = ("plain cross-entropy (bare loop)", "fused chunked cross-entropy", "adaptive softmax")


def output_run(variant: str, steps: int, device: str) -> tuple[float, float | None]:
    """LSTM 2x650, batch 64, bptt 70, V = 33,278: `steps` steps of the bare loop (plain
    cross-entropy; fused AdamW and no per-step sync, as lmrnn), or of lmrnn's model with its fused
    loss or the adaptive softmax, same optimizer. tokens/s and CUDA peak MB."""
    from lmrnn.config import ModelConfig

    batch, bptt, size, V, device = 64, 70, 650, WIKITEXT2_VOCAB, torch.device(device)
    ids = zipf_ids(V, batch * bptt * 4 + 1).to(device)
    x, y = ids[:-1].view(batch, -1), ids[1:].view(batch, -1)
    if variant == OUTPUTS[0]:
        return bare_loop(x, y, "lstm", 2, size, V, bptt, steps, device, sync_each_step=False, fused_adamw=True)
    torch.manual_seed(0)
    output = "adaptive" if variant == OUTPUTS[2] else "softmax"
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=V, embedding_dim=size, hidden_size=size, num_layers=2,
                              dropout=0.0, tie_weights=False, output=output)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    hidden = None
    with PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        for step in range(steps):
            offset = (step * bptt) % (x.shape[1] - bptt)
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            loss, hidden = model(x[:, offset:offset + bptt], hidden, targets=y[:, offset:offset + bptt])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - start
    return steps * batch * bptt / seconds, memory.mb


def output_step(variant: str) -> None:
    output_run(variant, 1, "cpu")  # a memory child


def output_rows(args, device: torch.device) -> list[dict]:
    start = time.perf_counter()
    output_run(OUTPUTS[0], 1, device.type)
    steps = steps_for(time.perf_counter() - start, args.seconds)
    for variant in OUTPUTS[1:]:
        output_run(variant, 1, device.type)
    runs = {variant: [] for variant in OUTPUTS}
    for _ in range(args.repeats):
        for variant in OUTPUTS:
            runs[variant].append(output_run(variant, steps, device.type))
    rows = [{"variant": variant, "model": "LSTM 2x650", "vocab": WIKITEXT2_VOCAB, "batch": 64, "bptt": 70, "steps": steps,
             "tokens_per_second": statistics.median(s for s, _ in r),
             "peak_mb": peak_rss_mb("output_step", variant=variant) if device.type == "cpu" else max(m for _, m in r)}
            for variant, r in runs.items()]
    if device.type == "cuda" and not args.quick:
        rows += big_memory_rows(device)
    return rows


def big_memory_rows(device: torch.device) -> list[dict]:
    """The issue's memory target: LSTM 3x1150, batch 80, bptt 70, V = 33,278 (random ids), lmrnn
    in bf16 against the fp32 bare loop; two steps each, peak allocated memory."""
    from lmrnn.config import ModelConfig

    batch, bptt, size, V = 80, 70, 1150, WIKITEXT2_VOCAB
    ids = zipf_ids(V, batch * bptt * 3 + 1).to(device)
    x, y = ids[:-1].view(batch, -1), ids[1:].view(batch, -1)
    fp32 = bare_loop(x, y, "lstm", 3, size, V, bptt, 2, device)
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=V, embedding_dim=size, hidden_size=size, num_layers=3,
                              dropout=0.0, tie_weights=False)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for step in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = model(x[:, step * bptt:(step + 1) * bptt], targets=y[:, step * bptt:(step + 1) * bptt])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - start
    return [{"variant": "bare loop fp32", "model": "LSTM 3x1150", "vocab": V, "batch": batch, "bptt": bptt, "steps": 2,
             "tokens_per_second": fp32[0], "peak_mb": fp32[1]},
            {"variant": "lmrnn bf16, fused loss", "model": "LSTM 3x1150", "vocab": V, "batch": batch, "bptt": bptt,
             "steps": 2, "tokens_per_second": 2 * batch * bptt / seconds, "peak_mb": memory.mb}]


# ---- 5-7. evaluation, generation, data

def eval_rows(args, corpus: Path, cache: Path, device: torch.device) -> list[dict]:
    cfg = load_config(None, lmrnn_overrides(corpus, cache, device.type, "lstm", 2, 650, 20, 35, 1))
    tokenizer = load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer)
    split = load_split(Corpus(cfg.data), "validation", tokenizer)
    if args.quick:  # the first 20k tokens
        split = type(split)(split.ids[:20_000], split.words, split.bytes)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = RNNLM(cfg.model).to(device)
    model.flatten_parameters()
    rows = []
    for batch in (20, 80):
        score_split(model, type(split)(split.ids[:2000], 0, 0), batch, 35)  # warm-up
        sync(device)
        start = time.perf_counter()
        _, tokens = score_split(model, split, batch, 35)
        sync(device)
        rows.append({"model": "LSTM 2x650", "eval_batch": batch, "tokens": tokens,
                     "tokens_per_second": tokens / (time.perf_counter() - start)})
    return rows


def generate_rows(args, corpus: Path, cache: Path, work: Path, device: torch.device) -> list[dict]:
    run = make_run(work / "generate", corpus, 650, cache)
    generator = TextGenerator(run, device.type)
    tokens = 50 if args.quick else 200
    rows = []
    for batch in (1, 64):
        loop_step(generator, batch, 5, {})  # warm-up
        seconds = statistics.median(loop_step(generator, batch, tokens, {}) for _ in range(3))
        rows.append({"model": "LSTM 2x650", "batch": batch, "ms_per_token": 1000 * seconds,
                     "tokens_per_second": batch / seconds})
    return rows


def data_rows(corpus: Path, work: Path) -> dict:
    cache = work / "fresh-cache"
    cfg = load_config(None, [f"data.source={corpus}", f"data.cache_dir={cache}", "tokenizer.model_type=word",
                             "tokenizer.vocab_size=10000"])
    figures = {}
    for label in ("first use", "from the cache"):
        start = time.perf_counter()
        tokenizer = load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer)
        splits = [load_split(Corpus(cfg.data), split, tokenizer) for split in SPLITS]
        figures[label] = time.perf_counter() - start
    megabytes = sum(s.bytes for s in splits) / 1e6
    return {"text_mb": megabytes, "tokens": sum(s.tokens for s in splits), "first_use_seconds": figures["first use"],
            "first_use_mb_per_second": megabytes / figures["first use"], "cache_load_seconds": figures["from the cache"]}


# ---- the command

def shapes(quick: bool) -> list[tuple]:
    if quick:
        return [("lstm", 2, 200, 20, 35), ("lstm", 2, 650, 20, 35), ("gru", 2, 650, 20, 35), ("rnn", 2, 650, 20, 35)]
    return [(cell, layers, size, batch, bptt) for layers, size in ((2, 200), (2, 650), (3, 1150))
            for cell in ("rnn", "lstm", "gru") for batch in (20, 64) for bptt in (35, 70)]


def small_eval_corpus(ptb: Path, folder: Path) -> Path:
    """PTB's train split as is; validation and test cut to 40 lines, so that the closing
    evaluation of each measured train() (not timed) does not dominate the suite's wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").symlink_to(ptb / "train.txt")
    for name in ("valid", "test"):
        (folder / f"{name}.txt").write_text("".join((ptb / f"{name}.txt").read_text().splitlines(keepends=True)[:40]))
    return folder


def table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (heading, key, format spec)."""
    print(f"\n{title}")
    print(" | ".join(h for h, _, _ in columns))
    print(" | ".join("---" if i == 0 else "---:" for i in range(len(columns))))
    for row in rows:
        print(" | ".join("-" if row[k] is None else format(row[k], f) for _, k, f in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 shapes, shorter timings (a few minutes on a CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "ptb")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 2)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # a memory child: one step of one row, then its peak RSS on stdout
        run_child(args.child)
        return
    if not (args.corpus / "train.txt").is_file():
        sys.exit(f"PTB not found at {args.corpus} (--corpus)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU here")
    device = torch.device(args.device)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.seconds = (2.0 if args.quick else 4.0) if device.type == "cpu" else 1.0  # per timed run
    args.shapes = shapes(args.quick)
    out = args.out or ROOT / "benchmarks" / "results" / f"run-{args.device}{'-quick' if args.quick else ''}.json"
    suite_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lmrnn-run-"))
    try:
        corpus, cache = small_eval_corpus(args.corpus, work / "ptb"), work / "cache"
        data = data_rows(args.corpus, work)  # (first: its cache must start empty)
        cfg = load_config(None, lmrnn_overrides(corpus, cache, "cpu", "lstm", 2, 200, 20, 35, 1))
        vocab = load_or_train_tokenizer(Corpus(cfg.data), cfg.tokenizer).vocab_size
        peaks = matmul_peaks(device)
        print(f"matmul peak: {', '.join(f'{k} {v / 1e9:,.0f} GFLOP/s' for k, v in peaks.items())}", file=sys.stderr)
        results = {
            "train": train_grid(args, corpus, cache, work, vocab, device),
            "ladder": ladder(args, corpus, cache, work, vocab, device),
            "output": output_rows(args, device),
            "eval": eval_rows(args, args.corpus, cache, device),
            "generate": generate_rows(args, args.corpus, cache, work, device),
            "data": data,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the peak once more, at the end, and the higher of the two: a busy moment reads low
    peaks = {k: max(v, peaks[k]) for k, v in matmul_peaks(device).items()}
    # MFU against the peak of the precision lmrnn trains in (fp32 on a CPU, bf16 on a GPU; the
    # bare loop is fp32, so on a GPU its MFU is against the same bf16 peak, a lower bound)
    peak = peaks["bf16" if device.type == "cuda" else "fp32"]
    for row in results["train"]:
        row["lmrnn_mfu"] = row["lmrnn_tokens_per_second"] * row["flops_per_token"] / peak
        row["bare_mfu"] = row["bare_tokens_per_second"] * row["flops_per_token"] / peak

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    print(f"\n{machine['processor']}, {machine['cpus']} cores, {machine['threads']} torch threads, torch {torch.__version__}"
          f"{', ' + machine['gpu'] if machine['gpu'] else ''}; device {device.type}; matmul peak "
          + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
          + f"; {args.repeats} alternating repeats, medians")
    table("training (tokens/s; ratio = lmrnn / bare; peak memory MB)", results["train"], [
        ("model", "model", "<12"), ("batch", "batch", ">3"), ("bptt", "bptt", ">3"),
        ("lmrnn tok/s", "lmrnn_tokens_per_second", ",.0f"), ("bare tok/s", "bare_tokens_per_second", ",.0f"),
        ("ratio", "ratio", ".3f"), ("lmrnn MFU", "lmrnn_mfu", ".1%"), ("bare MFU", "bare_mfu", ".1%"),
        ("lmrnn MB", "lmrnn_peak_mb", ",.0f"), ("bare MB", "bare_peak_mb", ",.0f")])
    table(f"fast paths one at a time ({results['ladder'][0]['model']}, batch {results['ladder'][0]['batch']}, "
          f"bptt {results['ladder'][0]['bptt']})", results["ladder"], [
        ("variant", "variant", "<40"), ("tok/s", "tokens_per_second", ",.0f"), ("x first row", "speedup", ".3f"),
        ("peak MB", "peak_mb", ",.0f")])
    table(f"the output layer at V = {WIKITEXT2_VOCAB:,}", results["output"], [
        ("variant", "variant", "<32"), ("model", "model", "<11"), ("batch", "batch", ">3"), ("bptt", "bptt", ">3"),
        ("tok/s", "tokens_per_second", ",.0f"), ("peak MB", "peak_mb", ",.0f")])
    table("evaluation (exact NLL of PTB validation, inference mode)", results["eval"], [
        ("model", "model", "<11"), ("eval batch", "eval_batch", ">3"), ("tokens", "tokens", ",d"),
        ("tok/s", "tokens_per_second", ",.0f")])
    table("generation (sampling at temperature 1, TextGenerator)", results["generate"], [
        ("model", "model", "<11"), ("batch", "batch", ">3"), ("ms/token", "ms_per_token", ".2f"),
        ("tokens/s", "tokens_per_second", ",.0f")])
    print(f"\ndata: {data['text_mb']:.1f} MB of PTB text, {data['tokens']:,} tokens: first use {data['first_use_seconds']:.2f} s "
          f"({data['first_use_mb_per_second']:.1f} MB/s, tokenizer training included), from the cache "
          f"{data['cache_load_seconds'] * 1000:.1f} ms")
    report = {"command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "date": datetime.datetime.now().isoformat(),
              "device": device.type, "machine": machine, "matmul_peak_flops": peaks, "repeats": args.repeats,
              "suite_seconds": time.perf_counter() - suite_start, **results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} ({report['suite_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
