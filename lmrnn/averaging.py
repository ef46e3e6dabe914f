"""Iterate averaging for NT-ASGD (Merity, Keskar & Socher 2017, section 3): SGD runs as usual,
and once validation stops improving, the arithmetic mean of the weights after every later step
is kept beside them. The mean is what gets evaluated and saved; training continues from the
raw weights. (torch.optim.ASGD with t0=0, lambd=0 keeps the same mean, inside the optimizer.)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def should_start(val_losses: list[float], loss: float, patience: int) -> bool:
    """The non-monotone trigger: `loss` is worse than the best validation loss from before the
    last `patience` evaluations (`val_losses`, oldest first, not yet holding `loss`)."""
    return len(val_losses) > patience and loss > min(val_losses[:-patience])


class WeightAverage:
    """The running mean of a module's parameters over the steps since `start`: after k updates
    average = (w_1 + ... + w_k) / k, kept as average += (w_k - average) / k."""

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())
        self.average: list[torch.Tensor] | None = None
        self.count = 0

    @property
    def active(self) -> bool:
        return self.average is not None

    def start(self) -> None:
        self.average, self.count = [p.detach().clone() for p in self.params], 0

    def update(self) -> None:
        """Fold in the current weights (call after each optimizer step once started)."""
        self.count += 1
        with torch.no_grad():
            for average, param in zip(self.average, self.params):
                average.lerp_(param, 1.0 / self.count)

    @contextlib.contextmanager
    def applied(self):
        """The module holds the averaged weights inside the block, its own ones again after."""
        if not self.active:
            yield
            return
        raw = [p.detach().clone() for p in self.params]
        self._copy_into_params(self.average)
        try:
            yield
        finally:
            self._copy_into_params(raw)

    def _copy_into_params(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, values):
                param.copy_(value)

    def state_dict(self) -> dict:
        return {"average": None if self.average is None else [t.cpu() for t in self.average], "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        average = state["average"]
        if average is not None and [t.shape for t in average] != [p.shape for p in self.params]:
            raise ValueError("the saved weight average does not match the model's parameters")
        self.average = None if average is None else [t.to(p.device) for t, p in zip(average, self.params)]
        self.count = state["count"]
