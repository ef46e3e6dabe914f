"""The truncated-BPTT loop, read top to bottom: Trainer.fit.

    while not done:
        x, y = the next window of every row          (B, T) each; T = bptt, or drawn around it
        step(x, y)       loss, h = model(x, h, y); backward (+ AR/TAR); clip; optimizer step;
                         queued on the device, never waited on
        settle()         the previous step's loss and grad norm reach the host: the log
                         interval's sums, the weight average, or a skipped step's record
        log()            every train.log_every steps
        validate()       every train.eval_every steps, at each epoch end and at the end: keeps the
                         best weights and saves the resumable state
        save()           every train.save_every steps or train.save_minutes, between validations

Under torchrun, one all-reduce per step (synced) carries the loss, rank 0's clock and every
rank's stop request, so that all ranks take the same decisions at the same step.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from lmrnn import checkpoint
from lmrnn.averaging import should_start
from lmrnn.config import RunConfig
from lmrnn.console import TrainingProgress
from lmrnn.data import Split, as_long
from lmrnn.errors import Diverged
from lmrnn.evaluate import perplexity, score_split
from lmrnn.models import detach_hidden, map_hidden
from lmrnn.optimizer import guarded_step
from lmrnn.regularizers import activation_penalty
from lmrnn.runtime import DeferredStop, Ranks, autocast, cpu_seconds, rng_state
from lmrnn.schedule import budget_progress, learning_rate, window_length
from lmrnn.train_state import Parts, TrainState


def loss_jumped(recent: list[float], loss: float) -> bool:
    """An exploding loss: perplexity above 10x the median of the recent logged intervals
    (loss > median + ln 10). Needs a few intervals of history first."""
    return len(recent) >= 5 and loss > statistics.median(recent) + math.log(10)


class Trainer:
    """One run's loop. x_train, y_train: this rank's rows of the train stream, (B / ranks, L)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, parts: Parts, state: TrainState, x_train, y_train,
                 validation: Split, rows: slice, ranks: Ranks, device: torch.device, amp_dtype: torch.dtype | None,
                 report: TrainingProgress, pause_at: float):
        self.cfg, self.tc, self.run_dir, self.parts, self.state = cfg, cfg.train, run_dir, parts, state
        self.x_train, self.y_train, self.validation, self.rows = x_train, y_train, validation, rows
        self.columns = x_train.shape[1]  # positions per row in an epoch
        self.ranks, self.main, self.device, self.amp_dtype = ranks, ranks.main, device, amp_dtype
        self.report, self.pause_at = report, pause_at
        self.penalised = bool(self.tc.ar or self.tc.tar)
        # the log interval's sums over its updated steps, as host numbers (settle adds each step)
        self.loss_sum, self.norm_sum, self.interval_steps = state.interval
        self.interval_tokens, self.interval_start = 0, time.perf_counter()
        self.bad_in_a_row = 0
        self.pending = None  # (step, [loss, grad norm], CUDA event): the last step's figures, on their way to the host
        self.loop_start, self.cpu_start = time.perf_counter(), cpu_seconds()
        self.cpu_base = (state.cpu_seconds, state.machine_cpu_seconds)
        self.paused = 0.0  # seconds spent validating and saving: not training time
        self.totals = {"elapsed_seconds": state.elapsed_seconds}  # the clock as of the last step (rank 0's)
        self.stop: DeferredStop | None = None
        self.stop_asked = False  # by any rank (under torchrun, learnt at the all-reduce)

    # ---- the loop
    def fit(self) -> None:
        """Train until the budget (or pause_at of it) is used or a stop signal comes, validating
        and saving on the way; then save the final state, the carried hidden state with it."""
        tc, state = self.tc, self.state
        self.parts.trained.train()
        hidden = self.carried_state()
        done = False
        with self.report, DeferredStop(self.report) as self.stop:
            while not done:
                length = min(window_length(tc, self.cfg.seed, state.step), self.columns - state.position)
                window = slice(state.position, state.position + length)
                x = as_long(self.x_train[:, window]).to(self.device, non_blocking=True)  # (B, T)
                y = as_long(self.y_train[:, window]).to(self.device, non_blocking=True)
                lr = learning_rate(tc, state.step, self.used(self.totals["elapsed_seconds"]), state.plateau_scale)
                lr *= length / tc.bptt if tc.variable_bptt else 1.0  # the same rate per token for any window length
                hidden = self.step(x, y, detach_hidden(hidden), lr)
                state.position += length
                state.tokens += y.numel() * self.ranks.size
                self.interval_tokens += y.numel() * self.ranks.size
                text = self.log(lr) if state.step % tc.log_every == 0 else None

                at_epoch_end = state.position == self.columns
                if at_epoch_end:
                    state.epoch += 1
                    state.position = 0
                    hidden = None  # each epoch starts from the zero state (wlm)
                progress = self.used(self.totals["elapsed_seconds"])
                self.report.update(progress, text)
                # one process stops at once; ranks stop together, at the all-reduce after the request
                self.stop_asked = self.stop_asked or (not self.ranks.joined and self.stop.asked is not None)
                reached = progress >= min(1.0, self.pause_at - 1e-9)
                done = reached or self.stop_asked
                pause_start = time.perf_counter()
                save_due = ((tc.save_every and state.step % tc.save_every == 0) or
                            (tc.save_minutes and self.totals["elapsed_seconds"] - state.saved_at >= 60 * tc.save_minutes))
                # a stop signal saves (below) without validating: an extra validation would cost the
                # budget time and could move the plateau schedule or NT-ASGD's trigger, and then the
                # resumed run would not be the run that was never stopped
                if (tc.eval_every and state.step % tc.eval_every == 0) or at_epoch_end or reached:
                    self.settle()
                    self.validate(hidden)
                elif save_due:
                    self.settle()
                    self.save(hidden)
                pause = time.perf_counter() - pause_start
                self.paused += pause
                self.interval_start += pause
        for key, value in {**self.clock(), **self.cpu_totals()}.items():  # final totals, before the (slow) last save
            setattr(state, key, value)
        self.save(hidden, totals={})  # with the carried state, for a later extension

    def step(self, x: torch.Tensor, y: torch.Tensor, hidden, lr: float):
        """One update from the window (x, y), queued on the device; returns the new hidden state."""
        tc, parts = self.tc, self.parts
        with autocast(self.device, self.amp_dtype):
            if self.penalised:  # AR/TAR need the top layer's outputs, before and after dropout
                loss, hidden, (raw, dropped) = parts.trained(x, hidden, targets=y, activations=True)
            else:
                loss, hidden = parts.trained(x, hidden, targets=y)  # mean NLL over the B x T targets
        parts.optimizer.zero_grad(set_to_none=True)
        total = loss + activation_penalty(raw, dropped, tc.ar, tc.tar) if self.penalised else loss
        (parts.scaler.scale(total) if parts.scaler else total).backward()
        if parts.scaler:
            parts.scaler.unscale_(parts.optimizer)  # clip (and log) the true gradient
        # global L2 norm over all parameters, before clipping; inf = measure only
        grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), tc.clip_grad_norm or math.inf)
        loss, self.totals, stop_asked = self.synced(loss)
        self.stop_asked = self.stop_asked or stop_asked
        self.settle()  # the previous step, now that this one is queued
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        finite = torch.isfinite(loss)
        if parts.scaler:  # skips the step itself when the scaled gradient overflowed (or the loss is not finite)
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            guarded_step(parts.optimizer, finite & torch.isfinite(grad_norm))
        # a non-finite state would poison every later window: such a step's rows restart from zeros
        hidden = map_hidden(hidden, lambda h: torch.where(finite, h, 0.0) if h.is_floating_point() else h)
        reading = torch.stack([loss.float(), grad_norm.float()])
        event = None
        if self.device.type == "cuda":  # copied while the GPU works on; read in the next step's settle
            reading = reading.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.state.step += 1
        self.pending = (self.state.step, reading, event)
        return hidden

    def settle(self) -> None:
        """Account for the pending step from its loss and grad norm: the interval's sums, the
        weight average (nt_asgd), or a skipped step's record, and the stop after max_bad_steps
        of them in a row. Called a step late, before the next update, or at once before a log
        line, a validation or a save."""
        if self.pending is None:
            return
        step, reading, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        loss, grad_norm = reading.tolist()
        if math.isfinite(loss) and math.isfinite(grad_norm):  # the step updated the weights
            if self.parts.average.active:
                self.parts.average.update()
            self.loss_sum += loss
            self.norm_sum += grad_norm
            self.interval_steps += 1
            self.bad_in_a_row = 0
            return
        if self.parts.scaler is not None and math.isfinite(loss):
            return  # fp16 overflowed in backward: the scaler skipped the step and lowered its scale
        self.state.bad_steps += 1
        self.bad_in_a_row += 1
        self.record({"event": "skipped", "step": step, "loss": loss, "grad_norm": grad_norm})
        self.report.line(f"step {step:>7} | non-finite loss or gradient: update skipped "
                         f"({self.bad_in_a_row} in a row, {self.state.bad_steps} in all)")
        if self.bad_in_a_row >= self.tc.max_bad_steps:
            raise Diverged(
                f"training diverged: {self.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(up to step {step}); the last good checkpoint is kept; continue it with a "
                f"lower rate, e.g. lmrnn train --resume --out {self.run_dir} -s train.lr={self.tc.lr / 4:g}")

    def log(self, lr: float) -> str | None:
        """The log interval's line and record (mean loss and grad norm over its updated steps),
        and the exploding-loss warning; None when no step of the interval updated."""
        self.settle()
        if not self.interval_steps:
            return None
        state = self.state
        mean_loss, mean_norm = self.loss_sum / self.interval_steps, self.norm_sum / self.interval_steps
        speed = self.interval_tokens / (time.perf_counter() - self.interval_start)
        ppl = perplexity(mean_loss)
        self.record({"event": "train", "step": state.step, "epoch": round(self.epochs_done(), 4), "lr": lr,
                     "loss": mean_loss, "ppl": ppl, "grad_norm": mean_norm, "tokens_per_second": speed,
                     "tokens": state.tokens, "seconds": round(self.totals["train_seconds"], 3)})
        text = (f"step {state.step:>7} | epoch {self.epochs_done():5.2f} | lr {lr:.1e} | loss {mean_loss:.3f}"
                f" | ppl {ppl:8.2f} | |g| {mean_norm:.2f} | {speed / 1000:.1f}k tok/s")
        if not self.report.live:
            self.report.line(text)
        if loss_jumped(state.recent, mean_loss):
            self.record({"event": "warning", "step": state.step, "loss": mean_loss, "message": "exploding loss"})
            self.report.line(f"warning: the loss jumped to {mean_loss:.2f} (perplexity over 10x its recent "
                             f"median); if it keeps rising, stop and resume with a lower train.lr or "
                             f"train.clip_grad_norm (-s train.lr=...)")
        state.recent = (state.recent + [mean_loss])[-20:]
        self.loss_sum, self.norm_sum, self.interval_steps = 0.0, 0.0, 0
        self.interval_tokens, self.interval_start = 0, time.perf_counter()
        return text

    def validate(self, hidden) -> None:
        """Exact validation NLL (of the averaged weights once nt_asgd averages); keep the best
        weights; plateau schedule; nt_asgd's trigger; save resumable state."""
        tc, state, average = self.tc, self.state, self.parts.average
        averaged = average.active
        with average.applied():
            nll, count = score_split(self.parts.model, self.validation, tc.eval_batch_size, tc.bptt, self.amp_dtype,
                                     self.ranks, tc.eval_burn_in)
            loss = nll / count
            improved = loss < state.best_val_loss
            if improved:
                state.best_val_loss = loss
                if self.main:
                    checkpoint.save_weights(self.run_dir, self.parts.model, state.step)
        if not improved and tc.lr_schedule == "plateau":
            state.plateau_scale /= tc.plateau_factor  # wlm's anneal: lr / 4 when val stalls
        if tc.optimizer == "nt_asgd" and not averaged and should_start(state.val_losses, loss, tc.asgd_patience):
            average.start()
            self.record({"event": "averaging", "step": state.step})
            self.report.line(f"step {state.step:>7} | validation stalled for {tc.asgd_patience} evaluations: "
                             f"averaging the weights from here on (NT-ASGD)")
        state.val_losses.append(loss)
        self.record({"event": "eval", "split": "validation", "step": state.step, "loss": loss, "ppl": perplexity(loss),
                     "best": improved, "seconds": round(self.totals["train_seconds"], 3),
                     **({"averaged": True} if averaged else {})})
        self.report.line(f"step {state.step:>7} | epoch {self.epochs_done():5.2f} | val loss {loss:.3f} | "
                         f"val ppl {perplexity(loss):8.2f}{' (averaged)' if averaged else ''}{' *' if improved else ''}")
        self.save(hidden)

    def save(self, hidden, totals: dict | None = None) -> None:
        """The resumable state, with the carried hidden rows and every rank's RNG state (all ranks
        take part in gathering them; rank 0 writes)."""
        state, parts = self.state, self.parts
        totals = self.totals if totals is None else totals
        h = [] if hidden is None else [self.ranks.gather_rows(t.detach()).cpu()
                                       for t in (hidden if isinstance(hidden, tuple) else (hidden,))]
        rngs = self.ranks.gather_objects(rng_state())
        state.interval = [self.loss_sum, self.norm_sum, self.interval_steps]
        state.saved_at = totals.get("elapsed_seconds", state.elapsed_seconds)
        if self.main:
            checkpoint.save_train_state(self.run_dir, {
                **state.as_dict(), **totals, **self.cpu_totals(), "hidden": h, "model": parts.model.state_dict(),
                "optimizer": parts.optimizer.state_dict(), "rng": rngs[0], "average": parts.average.state_dict(),
                **({"scaler": parts.scaler.state_dict()} if parts.scaler else {}),
                **({"rng_ranks": rngs} if self.ranks.joined else {})})

    # ---- the clocks, the budget and the ranks
    def clock(self) -> dict:
        """Budget seconds (all of them) and training seconds (less validation and saving), this
        session's included."""
        now = time.perf_counter() - self.loop_start
        return {"elapsed_seconds": self.state.elapsed_seconds + now,
                "train_seconds": self.state.train_seconds + now - self.paused}

    def cpu_totals(self) -> dict:
        """CPU seconds of this process and busy CPU seconds of the whole machine, earlier sessions included."""
        own, machine = (base + now - start for base, now, start in zip(self.cpu_base, cpu_seconds(), self.cpu_start))
        return {"cpu_seconds": own, "machine_cpu_seconds": machine}

    def epochs_done(self) -> float:
        return self.state.epoch + self.state.position / self.columns

    def used(self, elapsed: float) -> float:
        """The share of the budget used: the largest of steps, epochs and minutes."""
        return budget_progress(self.tc, self.state.step, self.epochs_done(), elapsed)

    def synced(self, loss: torch.Tensor) -> tuple[torch.Tensor, dict, bool]:
        """The step's mean loss over all rows, the clock, and whether any rank was asked to stop:
        one all-reduce carries the loss, rank 0's clock and every rank's stop request, so that all
        ranks take the same decisions (lr, skip, save, stop) at the same step. One process reads
        its own stop request later, at the end of the step."""
        now = self.clock()
        if not self.ranks.joined:
            return loss.detach(), now, False
        local = torch.tensor([now["elapsed_seconds"] if self.main else 0.0, float(self.stop.asked is not None)],
                             device=self.device)
        shared = self.ranks.sum(torch.cat([loss.detach().float().view(1), local]))
        elapsed, stops = shared[1:].tolist()
        return shared[0] / self.ranks.size, {**now, "elapsed_seconds": elapsed}, stops > 0

    def carried_state(self):
        """The saved hidden state's rows of this rank, on the device (None: the zero state)."""
        h = [t[:, self.rows].to(self.device) for t in self.state.hidden]  # saved whole (L, B, H)
        return None if not h else (tuple(h) if len(h) == 2 else h[0])

    def record(self, entry: dict) -> None:
        if self.main:
            checkpoint.append_metrics(self.run_dir, entry)

    @property
    def stopped_by(self) -> str | None:
        """interrupt / terminate when a stop signal ended the loop early, else None."""
        return self.stop.asked or ("terminate" if self.stop_asked else None)
