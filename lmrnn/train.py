"""train(cfg): set up data, tokenizer, model and optimizer (or resume them), run the loop
(lmrnn.loop.Trainer), then score test with the best weights and write the summary.

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
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from lmrnn import __version__, checkpoint
from lmrnn.averaging import WeightAverage
from lmrnn.config import RunConfig, resolve_defaults
from lmrnn.console import SilentProgress, TrainingProgress
from lmrnn.corpus import SPLITS, Corpus
from lmrnn.data import batchify, load_or_train_tokenizer, load_split
from lmrnn.errors import UserError
from lmrnn.evaluate import figures, perplexity, score_split
from lmrnn.loop import Trainer
from lmrnn.train_state import Parts, TrainState
from lmrnn.models import RNNLM, NgramLM, build_model
from lmrnn.ngram import KneserNey
from lmrnn.optimizer import build_optimizer, load_optimizer_state
from lmrnn.runtime import Ranks, autocast_dtype, seed_everything, set_rng_state, start_ranks, stop_ranks
from lmrnn.schedule import budget_progress
from lmrnn.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("checkpoints") / f"{Corpus(cfg.data).name}-{cfg.model.cell}"


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
    if resume:
        checkpoint.check_vocabulary(run_dir, tokenizer, cfg)
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
    state = TrainState()
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
        state = TrainState.from_saved(saved)
        if budget_progress(tc, state.step, state.epoch + state.position / columns,
                           state.elapsed_seconds) >= 1.0:  # refused before anything is written
            raise UserError("this run already reached its stop limit; raise train.epochs, train.max_steps "
                            "or train.max_minutes to train further")
        if main:
            checkpoint.truncate_metrics(run_dir, state.step)
        log.info("resuming %s at step %d (epoch %d, position %d)", run_dir, state.step, state.epoch, state.position)
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

    # ---- the loop (lmrnn.loop)
    report = (progress or TrainingProgress()) if main else SilentProgress()
    # wall_seconds counts every session: this process's, plus the budget clock of earlier ones
    # (their start-up and final scoring are not in it)
    wall_start -= state.elapsed_seconds
    trainer = Trainer(cfg, run_dir, Parts(model, trained, optimizer, scaler, average), state, x_train, y_train,
                      splits["validation"], rows, ranks, device, amp_dtype, report, pause_at)
    trainer.fit()

    # ---- final figures with the best weights (read by rank 0, sent to the others); a run
    # paused short of its budget (or stopped before its pause), or never validated, is not scored on test
    budget_used = trainer.used(state.elapsed_seconds)
    validated = math.isfinite(state.best_val_loss)  # not so when stopped by a signal before the first validation
    untested = (pause_at < 1.0 and budget_used < 1.0) or not validated
    test = dict.fromkeys(("ppl", "word_ppl", "bits_per_byte"))
    if not untested:
        if main:
            checkpoint.load_weights(run_dir, model, device)
        ranks.broadcast_module(model)
        nll, _ = score_split(model, splits["test"], tc.eval_batch_size, tc.bptt, amp_dtype, ranks, tc.eval_burn_in)
        test = figures(nll, splits["test"])
        trainer.record({"event": "eval", "split": "test", "step": state.step, "loss": nll / splits["test"].tokens, **test})
    # other work's share of the machine's CPU time while this run trained (0 = it had the cores to itself)
    others = (state.machine_cpu_seconds - state.cpu_seconds) / max(state.elapsed_seconds * (os.cpu_count() or 1), 1e-9)
    result = summary(run_dir, cfg, model, steps=state.step, epochs=trainer.epochs_done(), tokens=state.tokens,
                     seconds=state.train_seconds, wall_start=wall_start,
                     best_val_ppl=perplexity(state.best_val_loss) if validated else None,
                     test=test, lr=tc.lr, skipped_steps=state.bad_steps, budget_used=round(budget_used, 6),
                     stopped_by=trainer.stopped_by or ("paused" if untested else "budget"),
                     cpu_seconds=round(state.cpu_seconds, 2),
                     others_cpu_share=round(max(0.0, others), 4) if math.isfinite(others) else None,
                     threads=torch.get_num_threads(), device=device.type, processes=ranks.size)
    if main:
        checkpoint.write_summary(run_dir, result)
    return result


def summary(run_dir: Path, cfg: RunConfig, model: torch.nn.Module, steps: int, epochs: float, tokens: int,
            seconds: float, wall_start: float, best_val_ppl: float, test: dict, **extra) -> dict:
    """summary.json: what was trained, for how long, and its figures (docs/reliability.md lists the keys)."""
    return {"run": str(run_dir), "cell": cfg.model.cell, "params": model.num_parameters(), **extra, "steps": steps,
            "epochs": round(epochs, 4), "train_tokens": tokens, "train_seconds": round(seconds, 2),
            "train_tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "wall_seconds": round(time.perf_counter() - wall_start, 2), "best_val_ppl": best_val_ppl,
            "test_ppl": test["ppl"], "test_word_ppl": test["word_ppl"], "test_bits_per_byte": test["bits_per_byte"],
            "lmrnn_version": __version__, "torch_version": torch.__version__}


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
    result = summary(run_dir, cfg, model, steps=0, epochs=1.0, tokens=splits["train"].tokens, seconds=count_seconds,
                     wall_start=wall_start, best_val_ppl=results["validation"]["ppl"], test=results["test"],
                     skipped_steps=0, stopped_by="budget", device="cpu")
    checkpoint.write_summary(run_dir, result)
    return result
