"""What a training run is made of and where it stands: the pieces the loop updates, and the
position and history that train_state.pt saves besides the weights, the optimizer and the RNG
states, so that --resume continues exactly."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from lmrnn.averaging import WeightAverage


@dataclass
class TrainState:
    """Where a run is: everything train_state.pt holds besides the weights, the optimizer and the
    RNG states, so that --resume continues exactly."""
    step: int = 0
    epoch: int = 0
    position: int = 0  # the next window's first column of the (B, L) stream
    tokens: int = 0  # targets trained on, all ranks
    train_seconds: float = 0.0  # training time, less validation and saving; all sessions
    elapsed_seconds: float = 0.0  # the budget's clock; all sessions
    best_val_loss: float = math.inf
    plateau_scale: float = 1.0  # train.lr_schedule plateau: divided on each stalled validation
    hidden: list = field(default_factory=list)  # the carried state, whole (L, B, H) tensors on the host
    bad_steps: int = 0
    interval: list = field(default_factory=lambda: [0.0, 0.0, 0])  # the log interval's loss sum, norm sum, steps
    recent: list = field(default_factory=list)  # the last logged losses, for the exploding-loss warning
    saved_at: float = 0.0  # elapsed_seconds at the last save (train.save_minutes)
    val_losses: list = field(default_factory=list)  # every validation loss (nt_asgd's trigger)
    cpu_seconds: float = 0.0  # this process's CPU time; all sessions
    machine_cpu_seconds: float = 0.0  # the machine's busy CPU time meanwhile

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainState":
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy of tensors


@dataclass
class Parts:
    """What the loop trains: the model (and its DDP wrapper), the optimizer, the fp16 gradient
    scaler (or None), NT-ASGD's weight average."""
    model: torch.nn.Module
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    average: WeightAverage
