"""The training schedule, as pure functions of the config and the loop's counters: the
learning rate at a step, the BPTT window length of a step, and how much of the budget is used.
"""

from __future__ import annotations

import math

import numpy as np

from lmrnn.config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, progress: float, plateau_scale: float) -> float:
    """Linear warm-up, then constant or cosine decay over the training budget (`progress` in
    [0, 1], whichever stop limit is nearest), times the plateau scale (1/factor per miss)."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    shape = 1.0
    if cfg.lr_schedule == "cosine":
        shape = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warmup * shape * plateau_scale


def window_length(cfg: TrainConfig, seed: int, step: int) -> int:
    """The step's BPTT window length. Fixed: bptt. Variable (Merity et al. 2017, section 4.1):
    a base of bptt (bptt / 2 with probability 0.05), the length drawn from N(base, 5), at
    least 5 and at most bptt + 40. Drawn from (seed, step) alone, so that every rank of a
    distributed run and every resumed run cuts the same windows."""
    if not cfg.variable_bptt:
        return cfg.bptt
    rng = np.random.default_rng((seed, step))
    base = cfg.bptt if rng.random() < 0.95 else cfg.bptt / 2
    return int(min(max(5, int(rng.normal(base, 5))), cfg.bptt + 40))


def budget_progress(cfg: TrainConfig, step: int, epochs_done: float, seconds: float) -> float:
    """Fraction of the budget used: the largest over the limits that are set (1.0 = stop)."""
    used = [step / cfg.max_steps if cfg.max_steps else 0.0,
            epochs_done / cfg.epochs if cfg.epochs else 0.0,
            seconds / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0]
    return max(used)
