"""train(cfg): set up data, tokenizer, model and optimizer, then one flat truncated-BPTT loop.

    train stream (B rows)   row b: ... | window k (T tokens) | window k+1 | ...
    each step: loss, h = model(x_k, h, y_k)   h carried from window k-1, detached
                                              y_k = x_k shifted by one token; loss = mean NLL
               backward of loss + AR/TAR -> clip global grad norm -> optimizer step
               (nt_asgd, once triggered: fold the new weights into their running average)

T is train.bptt, or drawn per step around it with train.variable_bptt (window_length).

The device is never waited on in mid-stream (a GPU stays busy while Python queues the next
step): on a GPU the token stream sits on the device once, and each window is a view of it;
a step whose loss or gradient is not finite is skipped on the device (the fused optimizers'
skip flag), and its loss and grad norm reach the host one step late, for the logs and the
bad-step count, which may stop the run a step after the step that ends it.

Under torchrun, rank r of R trains rows [r B/R, (r+1) B/R) with its own carried hidden state,
DistributedDataParallel averages the gradients (each rank's loss is a mean over the same number
of tokens, so the average is the gradient of the mean over all B rows), and every rank then
clips the same global norm. Rank 0 alone writes the run directory and prints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from lmrnn import __version__, checkpoint
from lmrnn.config import RunConfig, resolve_defaults
from lmrnn.console import SilentProgress, TrainingProgress
from lmrnn.averaging import WeightAverage, should_start
from lmrnn.data import SPLITS, Corpus, as_long, batchify, load_or_train_tokenizer, load_split
from lmrnn.errors import Diverged, UserError
from lmrnn.evaluate import figures, score_split
from lmrnn.models import RNNLM, NgramLM, build_model, detach_hidden, map_hidden
from lmrnn.ngram import KneserNey
from lmrnn.optimizer import build_optimizer, guarded_step, load_optimizer_state
from lmrnn.regularizers import activation_penalty
from lmrnn.runtime import (Ranks, autocast, autocast_dtype, cpu_seconds, rng_state, seed_everything, set_rng_state,
                           start_ranks, stop_ranks)
from lmrnn.schedule import budget_progress, learning_rate, window_length
from lmrnn.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("checkpoints") / f"{Corpus(cfg.data).name}-{cfg.model.cell}"


# a stop signal -> the summary's stopped_by (the CLI exits 130 / 143, the shell's 128 + signal)
STOP_SIGNALS = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminate"}


class _DeferredStop:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step (state then saves
    cleanly and --resume continues exactly); a second signal aborts at once. Every file is
    written atomically, so even an abort mid-save leaves the previous checkpoint whole."""

    def __init__(self, report: TrainingProgress):
        self.report, self.asked, self.previous = report, None, {}

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = STOP_SIGNALS[signum]
        self.report.line(f"{signal.Signals(signum).name}: stopping after this step and saving (again to abort)")

    def __enter__(self) -> "_DeferredStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def loss_jumped(recent: list[float], loss: float) -> bool:
    """An exploding loss: perplexity above 10x the median of the recent logged intervals
    (loss > median + ln 10). Needs a few intervals of history first."""
    return len(recent) >= 5 and loss > statistics.median(recent) + math.log(10)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, overwrite: bool = False,
          progress: TrainingProgress | None = None, pause_at: float = 1.0) -> dict:
    """Train a run into `run_dir` (or continue it with `resume`) and return its summary. Started
    by torchrun, this process trains its rank's share of a distributed run. With `pause_at` < 1
    it stops once that fraction of the budget is used, saved but not tested (stopped_by
    "paused"), on the schedule of the whole budget: a later --resume continues it exactly, as
    successive halving needs (lmrnn.tuning)."""
    ranks, device = start_ranks(cfg.device)
    try:
        with contextlib.ExitStack() as held:  # the run's lock, taken once the slow set-up is done
            return _train(cfg, run_dir, resume, overwrite, progress, held, ranks, device, pause_at)
    finally:
        stop_ranks(ranks)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, progress: TrainingProgress | None,
           held: contextlib.ExitStack, ranks: Ranks, device: torch.device, pause_at: float) -> dict:
    wall_start = time.perf_counter()
    resolve_defaults(cfg)
    seed_everything(cfg.seed)
    amp_dtype = autocast_dtype(device, cfg.train.precision)
    main = ranks.main  # rank 0: the only writer of the run directory
    if not resume:
        checkpoint.refuse_existing_run(run_dir, overwrite)  # before any slow work
    if cfg.model.cell == "ngram" and ranks.joined:
        raise UserError("cell ngram is counted by one process; run it without torchrun")

    # ---- data and tokenizer: cached token ids skip all text processing on a second run
    corpus = Corpus(cfg.data)
    if resume:
        tokenizer = Tokenizer.load(run_dir / checkpoint.TOKENIZER)
    else:  # trained (or found in the cache) by rank 0, sent to the others
        tokenizer = load_or_train_tokenizer(corpus, cfg.tokenizer) if main else None
        model_bytes = ranks.broadcast_objects(tokenizer.model_bytes if main else None)
        tokenizer = tokenizer or Tokenizer(model_bytes)
    tokenize_start = time.perf_counter()
    if ranks.local_rank:
        ranks.barrier()  # the first rank on each machine fills its id cache; the others then read it
    splits = {name: load_split(corpus, name, tokenizer) for name in SPLITS}
    if not ranks.local_rank:
        ranks.barrier()
    log.info("data: %s | tokens train %s, validation %s, test %s | vocab %d (%.1fs)", corpus.name,
             *(f"{splits[n].tokens:,}" for n in SPLITS), tokenizer.vocab_size, time.perf_counter() - tokenize_start)
    for name in ("validation", "test"):
        if splits[name].tokens < 1:
            raise UserError(f"the {name} split is empty")
    if cfg.model.cell == "ngram":
        return _count_ngram(cfg, run_dir, tokenizer, splits, held, wall_start)
    tc = cfg.train
    x_train, y_train = batchify(splits["train"].ids, tc.batch_size)  # (B, L) each, views of the id file
    if x_train.shape[1] < tc.bptt:
        raise UserError(f"the train split has {splits['train'].tokens:,} tokens: too few for "
                        f"train.batch_size={tc.batch_size} rows of train.bptt={tc.bptt}; lower one of them")
    columns = x_train.shape[1]  # positions per row in an epoch
    rows = ranks.rows(tc.batch_size)
    x_train, y_train = x_train[rows], y_train[rows]  # this rank's streams: (B / ranks, L)
    if device.type != "cpu":  # on the device once (int32): each window is then a view, not a host copy
        x_train, y_train = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device) for a in (x_train, y_train))

    # ---- model and optimizer
    if resume and tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(f"{run_dir}: tokenizer.model has {tokenizer.vocab_size} pieces but config.yaml says "
                        f"model.vocab_size={cfg.model.vocab_size}")
    cfg.model.vocab_size = tokenizer.vocab_size
    model = build_model(cfg.model).to(device)
    if isinstance(model, RNNLM):
        model.flatten_parameters()
    if cfg.model.output == "adaptive" and not resume:  # its clusters follow the training counts
        model.decoder.set_frequencies(torch.from_numpy(np.bincount(splits["train"].ids, minlength=cfg.model.vocab_size)))
    optimizer = build_optimizer(model, tc)
    # fp16 needs its loss scaled (its exponent range is small); bf16 does not
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    average = WeightAverage(model)  # nt_asgd: started once validation stalls
    if ranks.rank:
        torch.manual_seed(cfg.seed + ranks.rank)  # same initial weights, but dropout masks of its own
    # interval = the log interval's running sums (loss, grad norm, good steps), kept so that a resumed
    # run logs the same figures; recent = the last logged losses, for the exploding-loss warning
    # position = the next window's first column; val_losses = every validation loss (nt_asgd's trigger)
    state = {"step": 0, "epoch": 0, "position": 0, "tokens": 0, "train_seconds": 0.0, "elapsed_seconds": 0.0,
             "best_val_loss": math.inf, "plateau_scale": 1.0, "hidden": [], "bad_steps": 0,
             "interval": [0.0, 0.0, 0], "recent": [], "saved_at": 0.0, "val_losses": [],
             "cpu_seconds": 0.0, "machine_cpu_seconds": 0.0}
    if main:
        held.enter_context(checkpoint.run_lock(run_dir))  # from here on, this process owns the folder
    if resume:  # every rank reads the state (a run on several machines needs --out on shared storage)
        saved = checkpoint.load_train_state(run_dir)
        try:
            model.load_state_dict(saved.pop("model"))
            load_optimizer_state(optimizer, saved.pop("optimizer"))
            if scaler is not None and "scaler" in saved:
                scaler.load_state_dict(saved.pop("scaler"))
            average.load_state_dict(saved.pop("average", {"average": None, "count": 0}))
            if "window" in saved:  # saved before run format 5: a window index, of a fixed bptt
                saved["position"] = saved.pop("window") * tc.bptt
            rngs = saved.pop("rng_ranks", None)
            set_rng_state(saved.pop("rng") if not rngs or len(rngs) != ranks.size else rngs[ranks.rank])
            if ranks.rank and (not rngs or len(rngs) != ranks.size):  # resumed on another number of ranks
                torch.manual_seed(cfg.seed + ranks.rank + saved["step"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{run_dir / checkpoint.TRAIN_STATE} does not match config.yaml "
                            f"({str(err).strip().splitlines()[0][:160]})") from None
        state.update(saved)
        if budget_progress(tc, state["step"], state["epoch"] + state["position"] / columns,
                           state["elapsed_seconds"]) >= 1.0:  # refused before anything is written
            raise UserError("this run already reached its stop limit; raise train.epochs, train.max_steps "
                            "or train.max_minutes to train further")
        if main:
            checkpoint.truncate_metrics(run_dir, state["step"])
        log.info("resuming %s at step %d (epoch %d, position %d)", run_dir, state["step"], state["epoch"], state["position"])
    elif main:
        checkpoint.clear_run(run_dir)  # only now that data, tokenizer and model are all sound
        checkpoint.save_tokenizer(run_dir, tokenizer)
    if main:
        checkpoint.save_config(run_dir, cfg)
    # gradients averaged over the ranks in backward; rank 0's weights copied to the others here
    trained = model if not ranks.joined else DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)
    log.info("model: %s %d x %d, %s parameters | device %s%s%s | run %s", cfg.model.cell, cfg.model.num_layers,
             cfg.model.hidden_size, f"{model.num_parameters():,}", device.type,
             f" ({str(amp_dtype).removeprefix('torch.')} autocast)" if amp_dtype else
             f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "",
             f" | {ranks.size} processes" if ranks.joined else "", run_dir)

    def hidden_state():
        h = [t[:, rows].to(device) for t in state["hidden"]]  # saved whole (L, B, H): this rank's rows
        return None if not h else (tuple(h) if len(h) == 2 else h[0])

    def record(entry: dict) -> None:
        if main:
            checkpoint.append_metrics(run_dir, entry)

    def clock() -> dict:
        """Budget seconds (all of them) and training seconds (less validation and saving), this
        session's included."""
        now = time.perf_counter() - loop_start
        return {"elapsed_seconds": state["elapsed_seconds"] + now, "train_seconds": state["train_seconds"] + now - paused}

    def cpu_totals() -> dict:
        """CPU seconds of this process and busy CPU seconds of the whole machine, earlier sessions included."""
        own, machine = (base + now - start for base, now, start in zip(cpu_base, cpu_seconds(), cpu_start))
        return {"cpu_seconds": own, "machine_cpu_seconds": machine}

    def save_state(hidden, totals: dict) -> None:
        """Every rank takes part (the hidden rows and RNG states are gathered); rank 0 writes."""
        h = [] if hidden is None else [ranks.gather_rows(t.detach()).cpu()
                                       for t in (hidden if isinstance(hidden, tuple) else (hidden,))]
        rngs = ranks.gather_objects(rng_state())
        state["interval"] = [loss_sum, norm_sum, interval_steps]
        state["saved_at"] = totals.get("elapsed_seconds", state["elapsed_seconds"])
        if main:
            checkpoint.save_train_state(run_dir, {**state, **totals, **cpu_totals(), "hidden": h, "model": model.state_dict(),
                                                  "optimizer": optimizer.state_dict(), "rng": rngs[0],
                                                  "average": average.state_dict(),
                                                  **({"scaler": scaler.state_dict()} if scaler else {}),
                                                  **({"rng_ranks": rngs} if ranks.joined else {})})

    def validate(hidden, totals: dict) -> None:
        """Exact validation NLL (of the averaged weights once nt_asgd averages); keep the best
        weights; plateau schedule; nt_asgd's trigger; save resumable state."""
        averaged = average.active
        with average.applied():
            nll, count = score_split(model, splits["validation"], tc.eval_batch_size, tc.bptt, amp_dtype, ranks,
                                    tc.eval_burn_in)
            loss = nll / count
            improved = loss < state["best_val_loss"]
            if improved:
                state["best_val_loss"] = loss
                if main:
                    checkpoint.save_weights(run_dir, model, state["step"])
        if not improved and tc.lr_schedule == "plateau":
            state["plateau_scale"] /= tc.plateau_factor  # wlm's anneal: lr / 4 when val stalls
        if tc.optimizer == "nt_asgd" and not averaged and should_start(state["val_losses"], loss, tc.asgd_patience):
            average.start()
            record({"event": "averaging", "step": state["step"]})
            report.line(f"step {state['step']:>7} | validation stalled for {tc.asgd_patience} evaluations: "
                        f"averaging the weights from here on (NT-ASGD)")
        state["val_losses"].append(loss)
        record({"event": "eval", "split": "validation", "step": state["step"], "loss": loss, "ppl": math.exp(loss),
                "best": improved, "seconds": round(totals["train_seconds"], 3), **({"averaged": True} if averaged else {})})
        report.line(f"step {state['step']:>7} | epoch {epochs_done():5.2f} | val loss {loss:.3f} | "
                    f"val ppl {math.exp(loss):8.2f}{' (averaged)' if averaged else ''}{' *' if improved else ''}")
        save_state(hidden, totals)

    def epochs_done() -> float:
        return state["epoch"] + state["position"] / columns

    # ---- the loop
    report = (progress or TrainingProgress()) if main else SilentProgress()
    loop_start, cpu_start = time.perf_counter(), cpu_seconds()
    cpu_base = (state["cpu_seconds"], state["machine_cpu_seconds"])
    paused = 0.0  # seconds spent validating and saving: not training time
    totals = {"elapsed_seconds": state["elapsed_seconds"]}  # the clock as of the last step (rank 0's)

    def used(elapsed: float) -> float:
        return budget_progress(tc, state["step"], epochs_done(), elapsed)

    def synced(loss: torch.Tensor) -> tuple[torch.Tensor, dict, bool]:
        """The step's mean loss over all rows, the clock, and whether any rank was asked to stop:
        one all-reduce carries the loss, rank 0's clock and every rank's stop request, so that all
        ranks take the same decisions (lr, skip, save, stop) at the same step. One process reads
        its own stop request later, at the end of the step."""
        now = clock()
        if not ranks.joined:
            return loss.detach(), now, False
        local = torch.tensor([now["elapsed_seconds"] if main else 0.0, float(stop.asked is not None)], device=device)
        shared = ranks.sum(torch.cat([loss.detach().float().view(1), local]))
        elapsed, stops = shared[1:].tolist()
        return shared[0] / ranks.size, {**now, "elapsed_seconds": elapsed}, stops > 0

    trained.train()
    hidden = hidden_state()
    # the log interval's sums over its updated steps, as host numbers (settle adds each step)
    loss_sum, norm_sum, interval_steps = state["interval"]
    interval_tokens, interval_start = 0, time.perf_counter()
    bad_in_a_row = 0
    penalised = bool(tc.ar or tc.tar)
    pending = None  # (step, [loss, grad norm], CUDA event): the last step's figures, on their way to the host
    done = stop_asked = False

    def settle() -> None:
        """Account for the pending step from its loss and grad norm: the interval's sums, the
        weight average (nt_asgd), or a skipped step's record, and the stop after max_bad_steps
        of them in a row. Called a step late, before the next update, or at once before a log
        line, a validation or a save."""
        nonlocal pending, loss_sum, norm_sum, interval_steps, bad_in_a_row
        if pending is None:
            return
        step, reading, event = pending
        pending = None
        if event is not None:
            event.synchronize()
        loss, grad_norm = reading.tolist()
        if math.isfinite(loss) and math.isfinite(grad_norm):  # the step updated the weights
            if average.active:
                average.update()
            loss_sum += loss
            norm_sum += grad_norm
            interval_steps += 1
            bad_in_a_row = 0
            return
        if scaler is not None and math.isfinite(loss):
            return  # fp16 overflowed in backward: the scaler skipped the step and lowered its scale
        state["bad_steps"] += 1
        bad_in_a_row += 1
        record({"event": "skipped", "step": step, "loss": loss, "grad_norm": grad_norm})
        report.line(f"step {step:>7} | non-finite loss or gradient: update skipped "
                    f"({bad_in_a_row} in a row, {state['bad_steps']} in all)")
        if bad_in_a_row >= tc.max_bad_steps:
            raise Diverged(
                f"training diverged: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(up to step {step}); the last good checkpoint is kept; continue it with a "
                f"lower rate, e.g. lmrnn train --resume --out {run_dir} -s train.lr={tc.lr / 4:g}")

    with report, _DeferredStop(report) as stop:
        while not done:
            length = min(window_length(tc, cfg.seed, state["step"]), columns - state["position"])
            window = slice(state["position"], state["position"] + length)
            x = as_long(x_train[:, window]).to(device, non_blocking=True)  # (B, T)
            y = as_long(y_train[:, window]).to(device, non_blocking=True)
            lr = learning_rate(tc, state["step"], used(totals["elapsed_seconds"]), state["plateau_scale"])
            lr *= length / tc.bptt if tc.variable_bptt else 1.0  # the same rate per token for any window length
            hidden = detach_hidden(hidden)
            with autocast(device, amp_dtype):
                if penalised:  # AR/TAR need the top layer's outputs, before and after dropout
                    loss, hidden, (raw, dropped) = trained(x, hidden, targets=y, activations=True)
                else:
                    loss, hidden = trained(x, hidden, targets=y)  # mean NLL over the B x T targets
            optimizer.zero_grad(set_to_none=True)
            total = loss + activation_penalty(raw, dropped, tc.ar, tc.tar) if penalised else loss
            (scaler.scale(total) if scaler else total).backward()
            if scaler:
                scaler.unscale_(optimizer)  # clip (and log) the true gradient
            # global L2 norm over all parameters, before clipping; inf = measure only
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm or math.inf)
            loss, totals, stop_asked = synced(loss)
            settle()  # the previous step, now that this one is queued
            for group in optimizer.param_groups:
                group["lr"] = lr
            finite = torch.isfinite(loss)
            if scaler:  # skips the step itself when the scaled gradient overflowed (or the loss is not finite)
                scaler.step(optimizer)
                scaler.update()
            else:
                guarded_step(optimizer, finite & torch.isfinite(grad_norm))
            # a non-finite state would poison every later window: such a step's rows restart from zeros
            hidden = map_hidden(hidden, lambda h: torch.where(finite, h, 0.0) if h.is_floating_point() else h)
            reading = torch.stack([loss.float(), grad_norm.float()])
            event = None
            if device.type == "cuda":  # copied while the GPU works on; read in the next step's settle
                reading = reading.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            state["step"] += 1
            pending = (state["step"], reading, event)
            state["position"] += length
            state["tokens"] += y.numel() * ranks.size
            interval_tokens += y.numel() * ranks.size

            text = None
            if state["step"] % tc.log_every == 0:
                settle()
            if state["step"] % tc.log_every == 0 and interval_steps:
                mean_loss, mean_norm = loss_sum / interval_steps, norm_sum / interval_steps
                speed = interval_tokens / (time.perf_counter() - interval_start)
                ppl = math.exp(min(mean_loss, 700))
                record({"event": "train", "step": state["step"], "epoch": round(epochs_done(), 4), "lr": lr,
                        "loss": mean_loss, "ppl": ppl, "grad_norm": mean_norm, "tokens_per_second": speed,
                        "tokens": state["tokens"], "seconds": round(totals["train_seconds"], 3)})
                text = (f"step {state['step']:>7} | epoch {epochs_done():5.2f} | lr {lr:.1e} | loss {mean_loss:.3f}"
                        f" | ppl {ppl:8.2f} | |g| {mean_norm:.2f} | {speed / 1000:.1f}k tok/s")
                if not report.live:
                    report.line(text)
                if loss_jumped(state["recent"], mean_loss):
                    record({"event": "warning", "step": state["step"], "loss": mean_loss, "message": "exploding loss"})
                    report.line(f"warning: the loss jumped to {mean_loss:.2f} (perplexity over 10x its recent "
                                f"median); if it keeps rising, stop and resume with a lower train.lr or "
                                f"train.clip_grad_norm (-s train.lr=...)")
                state["recent"] = (state["recent"] + [mean_loss])[-20:]
                loss_sum, norm_sum, interval_steps, interval_tokens, interval_start = 0.0, 0.0, 0, 0, time.perf_counter()

            at_epoch_end = state["position"] == columns
            if at_epoch_end:
                state["epoch"] += 1
                state["position"] = 0
                hidden = None  # each epoch starts from the zero state (wlm)
            progress = used(totals["elapsed_seconds"])
            report.update(progress, text)
            # one process stops at once; ranks stop together, at the all-reduce after the request
            stop_asked = stop_asked or (not ranks.joined and stop.asked is not None)
            done = progress >= min(1.0, pause_at - 1e-9) or stop_asked
            pause_start = time.perf_counter()
            save_due = ((tc.save_every and state["step"] % tc.save_every == 0) or
                        (tc.save_minutes and totals["elapsed_seconds"] - state["saved_at"] >= 60 * tc.save_minutes))
            if (tc.eval_every and state["step"] % tc.eval_every == 0) or at_epoch_end or done:
                settle()
                validate(hidden, totals)
            elif save_due:
                settle()
                save_state(hidden, totals)
            pause = time.perf_counter() - pause_start
            paused += pause
            interval_start += pause

    state.update({**clock(), **cpu_totals()})  # final totals, taken before the (slow) last save
    save_state(hidden, {})  # with the carried state, for a later extension

    # ---- final figures with the best weights (read by rank 0, sent to the others); a run
    # paused short of its budget (or stopped before its pause) is not scored on test
    budget_used = used(state["elapsed_seconds"])
    untested = pause_at < 1.0 and budget_used < 1.0
    test = dict.fromkeys(("ppl", "word_ppl", "bits_per_byte"))
    if not untested:
        if main:
            checkpoint.load_weights(run_dir, model, device)
        ranks.broadcast_module(model)
        nll, _ = score_split(model, splits["test"], tc.eval_batch_size, tc.bptt, amp_dtype, ranks, tc.eval_burn_in)
        test = figures(nll, splits["test"])
        record({"event": "eval", "split": "test", "step": state["step"], "loss": nll / splits["test"].tokens, **test})
    # other work's share of the machine's CPU time while this run trained (0 = it had the cores to itself)
    others = (state["machine_cpu_seconds"] - state["cpu_seconds"]) / max(state["elapsed_seconds"] * (os.cpu_count() or 1), 1e-9)
    summary = {
        "run": str(run_dir), "cell": cfg.model.cell, "params": model.num_parameters(), "lr": tc.lr, "steps": state["step"],
        "epochs": round(epochs_done(), 4), "train_tokens": state["tokens"], "train_seconds": round(state["train_seconds"], 2),
        "train_tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "best_val_ppl": math.exp(state["best_val_loss"]),
        "test_ppl": test["ppl"], "test_word_ppl": test["word_ppl"], "test_bits_per_byte": test["bits_per_byte"],
        "skipped_steps": state["bad_steps"], "budget_used": round(budget_used, 6),
        "stopped_by": stop.asked or ("terminate" if stop_asked else "paused" if untested else "budget"),
        "cpu_seconds": round(state["cpu_seconds"], 2), "others_cpu_share": round(max(0.0, others), 4) if math.isfinite(others) else None,
        "threads": torch.get_num_threads(), "device": device.type, "processes": ranks.size, "lmrnn_version": __version__, "torch_version": torch.__version__,
    }
    if main:
        checkpoint.write_summary(run_dir, summary)
    return summary



def _count_ngram(cfg: RunConfig, run_dir: Path, tokenizer: Tokenizer, splits: dict, held: contextlib.ExitStack,
                 wall_start: float) -> dict:
    """cell ngram: count the train split into a Kneser-Ney model (no steps, no optimizer), then
    score validation and test exactly; the run directory has the same files and summary keys."""
    cfg.model.vocab_size = tokenizer.vocab_size
    count_start = time.perf_counter()
    kn = KneserNey.fit(splits["train"].ids, cfg.model.order, tokenizer.vocab_size, tokenizer.eos_id)
    count_seconds = time.perf_counter() - count_start
    held.enter_context(checkpoint.run_lock(run_dir))
    checkpoint.clear_run(run_dir)
    checkpoint.save_tokenizer(run_dir, tokenizer)
    checkpoint.save_config(run_dir, cfg)
    checkpoint.save_ngram(run_dir, kn)
    model = NgramLM(kn)
    log.info("model: Kneser-Ney %d-gram, %s n-grams counted in %.1fs | run %s", cfg.model.order,
             f"{model.num_parameters():,}", count_seconds, run_dir)
    results = {}
    for name in ("validation", "test"):
        nll, _ = score_split(model, splits[name], 1, 1)
        results[name] = figures(nll, splits[name])
        checkpoint.append_metrics(run_dir, {"event": "eval", "split": name, "step": 0,
                                            "loss": nll / splits[name].tokens, **results[name]})
    test, tokens = results["test"], splits["train"].tokens
    summary = {
        "run": str(run_dir), "cell": "ngram", "params": model.num_parameters(), "steps": 0, "epochs": 1.0,
        "train_tokens": tokens, "train_seconds": round(count_seconds, 2),
        "train_tokens_per_second": round(tokens / max(count_seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "best_val_ppl": results["validation"]["ppl"],
        "test_ppl": test["ppl"], "test_word_ppl": test["word_ppl"], "test_bits_per_byte": test["bits_per_byte"],
        "skipped_steps": 0, "stopped_by": "budget", "device": "cpu", "lmrnn_version": __version__,
        "torch_version": torch.__version__,
    }
    checkpoint.write_summary(run_dir, summary)
    return summary
