"""Evaluation-time adaptation of a recurrent run: the continuous cache and dynamic evaluation.

Both read a split as one stream (batch 1, the state carried across windows), so their static
baseline is exactly `lmrnn eval --batch-size 1`, and both stay proper online predictions: the
probability of token t uses only tokens before t.

Continuous cache (Grave, Joulin & Usunier 2017): with h_t the decoder input at position t and
y_t the token that follows it,

    p_cache(w | t) = sum over i in [t - W, t) of softmax_i(theta * h_t . h_i) * [y_i = w]
    p(w | t)       = (1 - lambda) p_model(w | t) + lambda p_cache(w | t)

(at t = 0 the cache is empty and p = p_model). theta and lambda are picked on validation.

Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018), SGD form: after scoring each
window, one step on that window's mean loss, pulled back towards the trained weights:
theta <- theta - lr * grad + decay * (theta_trained - theta). lr and decay are picked on
validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmrnn import checkpoint
from lmrnn.corpus import WHOLE
from lmrnn.data import IGNORE_INDEX, Split, as_long, batchify, windows
from lmrnn.errors import UserError
from lmrnn.evaluate import figures, text_to_score
from lmrnn.models import RNNLM, detach_hidden
from lmrnn.runtime import resolve_device

CACHE_THETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
DYNAMIC_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
DYNAMIC_DECAYS = (0.0, 0.01)


@dataclass
class Stream:
    """One split read by the model as a single stream."""
    features: torch.Tensor  # (N, D) float32: the decoder input at each position
    targets: torch.Tensor  # (N,) the token after each position
    logprobs: torch.Tensor  # (N,) float64: log p_model(target)


def read_stream(model: RNNLM, ids: np.ndarray, bptt: int) -> Stream:
    x, y = batchify(ids, 1)  # (1, N): one row, nothing dropped
    device = model.device
    features, logprobs, hidden = [], [], None
    with torch.inference_mode():
        for xw, yw in windows(x, y, bptt):
            out, hidden = model.encode(xw.to(device), hidden)  # (1, T, D)
            logits = model.decoder(out)  # (1, T, V)
            features.append(out[0].float().cpu())
            logprobs.append(-F.cross_entropy(logits[0].float(), yw[0].to(device), reduction="none").double().cpu())
    return Stream(torch.cat(features), as_long(y[0]), torch.cat(logprobs))


def cache_logprobs(stream: Stream, window: int, theta: float, block: int = 1024) -> torch.Tensor:
    """log p_cache(target | t) for every position (N,), float64: -inf where the target is not
    in the cache, NaN where the cache is empty (t = 0). Computed in blocks of positions, each
    against its band of the W positions before it."""
    F_, y = stream.features, stream.targets
    N = len(y)
    out = torch.full((N,), -math.inf, dtype=torch.float64)
    for start in range(0, N, block):
        end = min(N, start + block)
        lo = max(0, start - window)
        scores = theta * (F_[start:end] @ F_[lo:end].T).double()  # (rows, candidates)
        t = torch.arange(start, end)[:, None]
        i = torch.arange(lo, end)[None, :]
        scores = scores.masked_fill(~((i < t) & (i >= t - window)), -math.inf)
        same = y[lo:end][None, :] == y[start:end][:, None]
        normaliser = torch.logsumexp(scores, dim=1)
        hit = torch.logsumexp(scores.masked_fill(~same, -math.inf), dim=1)
        out[start:end] = torch.where(torch.isfinite(normaliser), hit - normaliser, torch.full_like(hit, math.nan))
    return out


def mix(model_logprobs: torch.Tensor, cache: torch.Tensor, weight: float) -> float:
    """Total NLL of (1 - weight) p_model + weight p_cache; where the cache is empty, p_model."""
    if weight == 0:
        return float(-model_logprobs.sum())
    mixed = torch.logaddexp(model_logprobs + math.log(1 - weight), cache + math.log(weight))
    return float(-torch.where(torch.isnan(cache), model_logprobs, mixed).sum())


def dynamic_nll(model: RNNLM, ids: np.ndarray, bptt: int, lr: float, decay: float) -> float:
    """Total NLL of a stream scored window by window, each window adapted to after it is scored."""
    # cuDNN runs an RNN's backward only in training mode, so train mode on a copy of the model
    # (the run's stays as trained) built with every dropout and weight drop at 0
    plain = dataclasses.replace(model.cfg, dropout=0.0, embedding_dropout=0.0, weight_drop=0.0)
    weights, model = model.state_dict(), RNNLM(plain).to(model.device)
    model.load_state_dict(weights)
    model.flatten_parameters()
    model.train()
    trained = [p.detach().clone() for p in model.parameters()]
    x, y = batchify(ids, 1)
    device, total, hidden = model.device, 0.0, None
    for xw, yw in windows(x, y, bptt):
        xw, yw = xw.to(device), yw.to(device)
        with torch.set_grad_enabled(lr > 0):
            logits, hidden = model(xw, hidden)
            losses = F.cross_entropy(logits[0].float(), yw[0], ignore_index=IGNORE_INDEX, reduction="none")
        total += losses.double().sum().item()  # scored before the update
        if lr > 0:
            model.zero_grad(set_to_none=True)
            losses.mean().backward()
            with torch.no_grad():
                for p, p0 in zip(model.parameters(), trained):
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
                    if decay:
                        p.add_(p0 - p, alpha=decay)
        hidden = detach_hidden(hidden)
    return total


@dataclass
class AdaptedResult:
    method: str  # static | cache | dynamic
    settings: dict
    validation_nll: float
    test_nll: float


def adapt_run(run_dir: Path, cache: bool, dynamic: bool, window: int = 500, device: str = "auto",
              data: str | None = None) -> tuple[dict, list[AdaptedResult]]:
    """Static, cache and/or dynamic figures of a recurrent run on validation and test: each
    method's settings are the best on validation, then applied to test. `data` replaces the
    run's corpus; one without splits of its own is the test text whole, and the settings are
    then picked on the run's own validation split."""
    if window < 1:
        raise UserError(f"--cache-window must be >= 1, got {window}")
    model, tokenizer, cfg = checkpoint.load_run(run_dir, resolve_device(device))
    if not isinstance(model, RNNLM):
        raise UserError(f"{run_dir} is a {cfg.model.cell} model: --cache and --dynamic adapt recurrent runs")
    test, test_split = text_to_score(cfg, tokenizer, data)  # data's test split, or all of it
    validation, _ = text_to_score(cfg, tokenizer, data if test_split != WHOLE else None, default="validation")
    splits: dict[str, Split] = {"validation": validation, "test": test}
    bptt = cfg.train.bptt
    streams = {name: read_stream(model, split.ids, bptt) for name, split in splits.items()}
    results = [AdaptedResult("static", {}, float(-streams["validation"].logprobs.sum()),
                             float(-streams["test"].logprobs.sum()))]
    if cache:
        best = None
        for theta in CACHE_THETAS:
            valid_cache = cache_logprobs(streams["validation"], window, theta)
            for weight in CACHE_LAMBDAS:
                nll = mix(streams["validation"].logprobs, valid_cache, weight)
                if best is None or nll < best[0]:
                    best = (nll, theta, weight)
        nll, theta, weight = best
        test_nll = mix(streams["test"].logprobs, cache_logprobs(streams["test"], window, theta), weight)
        results.append(AdaptedResult("cache", {"window": window, "theta": theta, "lambda": weight}, nll, test_nll))
    if dynamic:
        tried = {(lr, decay): dynamic_nll(model, splits["validation"].ids, bptt, lr, decay)
                 for lr, decay in itertools.product(DYNAMIC_LRS, DYNAMIC_DECAYS)}
        (lr, decay), nll = min(tried.items(), key=lambda item: item[1])
        results.append(AdaptedResult("dynamic", {"lr": lr, "decay": decay}, nll,
                                     dynamic_nll(model, splits["test"].ids, bptt, lr, decay)))
    return {"run": str(run_dir), "cell": cfg.model.cell, "splits": splits, "test_split": test_split}, results


def adapted_rows(run_dir: Path, cache: bool, dynamic: bool, window: int = 500, device: str = "auto",
                 data: str | None = None) -> list[dict]:
    """adapt_run's results as table rows: each method's figures and its test ppl gain over static."""
    info, results = adapt_run(run_dir, cache, dynamic, window, device, data)
    validation, test = info["splits"]["validation"], info["splits"]["test"]
    static = results[0].test_nll
    return [{"run": info["run"], "cell": info["cell"], "test_split": info["test_split"], "method": r.method, "settings": r.settings,
             "validation_ppl": figures(r.validation_nll, validation)["ppl"],
             **{f"test_{k}": v for k, v in figures(r.test_nll, test).items()},
             "test_nll": r.test_nll, "gain": 1 - math.exp((r.test_nll - static) / test.tokens)} for r in results]
