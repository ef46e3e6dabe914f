"""train(cfg): set up data, tokenizer, model and optimizer, then one flat truncated-BPTT loop.

    train stream (B rows)   row b: ... | window k (T tokens) | window k+1 | ...
    each step: logits, h = model(x_k, h)      h carried from window k-1, detached
               loss = CE(logits, y_k)         y_k = x_k shifted by one token
               backward -> clip global grad norm -> optimizer step
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmrnn import __version__, checkpoint
from lmrnn.config import RunConfig, TrainConfig
from lmrnn.console import TrainingProgress
from lmrnn.data import SPLITS, Corpus, batchify, load_or_train_tokenizer, load_split, num_windows, windows
from lmrnn.errors import UserError
from lmrnn.evaluate import figures, score_split
from lmrnn.models import RNNLM, detach_hidden
from lmrnn.runtime import autocast, autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state
from lmrnn.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("checkpoints") / f"{Corpus(cfg.data).name}-{cfg.model.cell}"


def learning_rate(cfg: TrainConfig, step: int, progress: float, plateau_scale: float) -> float:
    """Linear warm-up, then constant or cosine decay over the training budget (`progress` in
    [0, 1], whichever stop limit is nearest), times the plateau scale (1/factor per miss)."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    shape = 1.0
    if cfg.lr_schedule == "cosine":
        shape = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warmup * shape * plateau_scale


def budget_progress(cfg: TrainConfig, step: int, epochs_done: float, seconds: float) -> float:
    """Fraction of the budget used: the largest over the limits that are set (1.0 = stop)."""
    used = [step / cfg.max_steps if cfg.max_steps else 0.0,
            epochs_done / cfg.epochs if cfg.epochs else 0.0,
            seconds / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0]
    return max(used)


class _DeferredInterrupt:
    """Ctrl-C asks the loop to stop after the current step (state then saves cleanly and
    --resume continues exactly); a second Ctrl-C aborts at once."""

    def __init__(self, report: TrainingProgress):
        self.report, self.asked, self.previous = report, False, None

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.report.line("interrupt: stopping after this step and saving (Ctrl-C again to abort)")

    def __enter__(self) -> "_DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def build_optimizer(model: RNNLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, overwrite: bool = False,
          progress: TrainingProgress | None = None) -> dict:
    """Train a run into `run_dir` (or continue it with `resume`) and return its summary."""
    wall_start = time.perf_counter()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.train.precision)
    if not resume:
        checkpoint.refuse_existing_run(run_dir, overwrite)  # before any slow work

    # ---- data and tokenizer: cached token ids skip all text processing on a second run
    corpus = Corpus(cfg.data)
    tokenizer = (Tokenizer.load(run_dir / checkpoint.TOKENIZER) if resume
                 else load_or_train_tokenizer(corpus, cfg.tokenizer))
    tokenize_start = time.perf_counter()
    splits = {name: load_split(corpus, name, tokenizer) for name in SPLITS}
    log.info("data: %s | tokens train %s, validation %s, test %s | vocab %d (%.1fs)", corpus.name,
             *(f"{splits[n].tokens:,}" for n in SPLITS), tokenizer.vocab_size, time.perf_counter() - tokenize_start)
    tc = cfg.train
    x_train, y_train = batchify(splits["train"].ids, tc.batch_size)  # (B, L) each
    if x_train.size(1) < tc.bptt:
        raise UserError(f"the train split has {splits['train'].tokens:,} tokens: too few for "
                        f"train.batch_size={tc.batch_size} rows of train.bptt={tc.bptt}; lower one of them")
    for name in ("validation", "test"):
        if splits[name].tokens < 1:
            raise UserError(f"the {name} split is empty")
    windows_per_epoch = num_windows(x_train, tc.bptt)

    # ---- model and optimizer
    cfg.model.vocab_size = tokenizer.vocab_size
    model = RNNLM(cfg.model).to(device)
    model.rnn.flatten_parameters()  # cuDNN wants one contiguous weight buffer after the move
    optimizer = build_optimizer(model, tc)
    state = {"step": 0, "epoch": 0, "window": 0, "tokens": 0, "train_seconds": 0.0, "elapsed_seconds": 0.0,
             "best_val_loss": math.inf, "plateau_scale": 1.0, "hidden": []}
    if resume:
        saved = checkpoint.load_train_state(run_dir)
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        set_rng_state(saved.pop("rng"))
        state.update(saved)
        log.info("resuming %s at step %d (epoch %d, window %d)", run_dir, state["step"], state["epoch"], state["window"])
    else:
        checkpoint.clear_run(run_dir)  # only now that data, tokenizer and model are all sound
        checkpoint.save_tokenizer(run_dir, tokenizer)
    checkpoint.save_config(run_dir, cfg)
    log.info("model: %s %d x %d, %s parameters | device %s%s | run %s", cfg.model.cell, cfg.model.num_layers,
             cfg.model.hidden_size, f"{model.num_parameters():,}", device.type,
             " (bf16 autocast)" if amp_dtype else "", run_dir)

    def hidden_state():
        h = [t.to(device) for t in state["hidden"]]
        return None if not h else (tuple(h) if len(h) == 2 else h[0])

    def clock() -> dict:
        """Budget seconds (all of them) and training seconds (less validation and saving), this
        session's included."""
        now = time.perf_counter() - loop_start
        return {"elapsed_seconds": state["elapsed_seconds"] + now, "train_seconds": state["train_seconds"] + now - paused}

    def save_state(hidden, totals: dict) -> None:
        h = [] if hidden is None else [t.detach().cpu() for t in (hidden if isinstance(hidden, tuple) else (hidden,))]
        checkpoint.save_train_state(run_dir, {**state, **totals, "hidden": h, "model": model.state_dict(),
                                              "optimizer": optimizer.state_dict(), "rng": rng_state()})

    def validate(hidden, totals: dict) -> None:
        """Exact validation NLL; keep the best weights; plateau schedule; save resumable state."""
        nll, count = score_split(model, splits["validation"], tc.eval_batch_size, tc.bptt, amp_dtype)
        loss = nll / count
        improved = loss < state["best_val_loss"]
        if improved:
            state["best_val_loss"] = loss
            checkpoint.save_weights(run_dir, model, state["step"])
        elif tc.lr_schedule == "plateau":
            state["plateau_scale"] /= tc.plateau_factor  # wlm's anneal: lr / 4 when val stalls
        record = {"event": "eval", "split": "validation", "step": state["step"], "loss": loss,
                  "ppl": math.exp(loss), "best": improved, "seconds": round(totals["train_seconds"], 3)}
        checkpoint.append_metrics(run_dir, record)
        report.line(f"step {state['step']:>7} | epoch {epochs_done():5.2f} | val loss {loss:.3f} | "
                    f"val ppl {math.exp(loss):8.2f}{' *' if improved else ''}")
        save_state(hidden, totals)

    def epochs_done() -> float:
        return state["epoch"] + state["window"] / windows_per_epoch

    # ---- the loop
    report = progress or TrainingProgress()
    loop_start = time.perf_counter()
    paused = 0.0  # seconds spent validating and saving: not training time

    def used() -> float:
        return budget_progress(tc, state["step"], epochs_done(), clock()["elapsed_seconds"])

    if used() >= 1.0:
        raise UserError("this run already reached its stop limit; raise train.epochs, train.max_steps "
                        "or train.max_minutes to train further")
    model.train()
    hidden = hidden_state()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
    norm_sum = torch.zeros((), device=device)
    interval_steps, interval_tokens, interval_start = 0, 0, time.perf_counter()
    done = False
    with report, _DeferredInterrupt(report) as interrupt:
        while not done:
            for x, y in windows(x_train, y_train, tc.bptt, start=state["window"]):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                lr = learning_rate(tc, state["step"], used(), state["plateau_scale"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                hidden = detach_hidden(hidden)
                with autocast(device, amp_dtype):
                    logits, hidden = model(x, hidden)  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # global L2 norm over all parameters, before clipping; inf = measure only
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm or math.inf)
                optimizer.step()
                state["step"] += 1
                state["window"] += 1
                state["tokens"] += y.numel()
                loss_sum += loss.detach()
                norm_sum += grad_norm.detach()
                interval_steps += 1
                interval_tokens += y.numel()

                if state["step"] % tc.log_every == 0:
                    mean_loss, mean_norm = loss_sum.item() / interval_steps, norm_sum.item() / interval_steps
                    speed = interval_tokens / (time.perf_counter() - interval_start)
                    record = {"event": "train", "step": state["step"], "epoch": round(epochs_done(), 4), "lr": lr,
                              "loss": mean_loss, "ppl": math.exp(min(mean_loss, 700)), "grad_norm": mean_norm,
                              "tokens_per_second": speed, "tokens": state["tokens"],
                              "seconds": round(clock()["train_seconds"], 3)}
                    checkpoint.append_metrics(run_dir, record)
                    text = (f"step {state['step']:>7} | epoch {epochs_done():5.2f} | lr {lr:.1e} | loss {mean_loss:.3f}"
                            f" | ppl {record['ppl']:8.2f} | |g| {mean_norm:.2f} | {speed / 1000:.1f}k tok/s")
                    if not report.live:
                        report.line(text)
                    loss_sum.zero_()
                    norm_sum.zero_()
                    interval_steps, interval_tokens, interval_start = 0, 0, time.perf_counter()
                else:
                    text = None

                at_epoch_end = state["window"] == windows_per_epoch
                if at_epoch_end:
                    state["epoch"] += 1
                    state["window"] = 0
                    hidden = None  # each epoch starts from the zero state (wlm)
                progress = used()
                report.update(progress, text)
                done = progress >= 1.0 or interrupt.asked
                pause_start, totals = time.perf_counter(), clock()
                if (tc.eval_every and state["step"] % tc.eval_every == 0) or at_epoch_end or done:
                    validate(hidden, totals)
                elif tc.save_every and state["step"] % tc.save_every == 0:
                    save_state(hidden, totals)
                pause = time.perf_counter() - pause_start
                paused += pause
                interval_start += pause
                if at_epoch_end or done:
                    break

    state.update(clock())  # final totals, taken before the (slow) last save
    save_state(hidden, {})  # with the carried state, for a later extension

    # ---- final figures with the best weights
    checkpoint.load_weights(run_dir, model, device)
    nll, _ = score_split(model, splits["test"], tc.eval_batch_size, tc.bptt, amp_dtype)
    test = figures(nll, splits["test"])
    checkpoint.append_metrics(run_dir, {"event": "eval", "split": "test", "step": state["step"],
                                        "loss": nll / splits["test"].tokens, **test})
    summary = {
        "run": str(run_dir), "cell": cfg.model.cell, "params": model.num_parameters(), "steps": state["step"],
        "epochs": round(epochs_done(), 4), "train_tokens": state["tokens"], "train_seconds": round(state["train_seconds"], 2),
        "train_tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "best_val_ppl": math.exp(state["best_val_loss"]),
        "test_ppl": test["ppl"], "test_word_ppl": test["word_ppl"], "test_bits_per_byte": test["bits_per_byte"],
        "stopped_by": "interrupt" if interrupt.asked else "budget", "device": device.type, "lmrnn_version": __version__, "torch_version": torch.__version__,
    }
    checkpoint.write_summary(run_dir, summary)
    return summary

