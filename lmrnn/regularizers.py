"""The regularisers of AWD-LSTM (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM
Language Models"), as plain functions of tensors and modules. Each dropout is the identity
outside training and keeps the expected activation at training time by scaling what it keeps by
1 / (1 - p); the activation penalties only ever enter the training loss.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016): x (B, T, D) times one mask per sequence and
    feature, (B, 1, D), the same at every time step, so a dropped unit stays dropped for the
    whole window instead of flickering from step to step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p)
        return x * (mask / (1 - self.p))


def embedding_dropout(embedding: nn.Embedding, ids: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embeddings of ids (B, T) -> (B, T, E) with whole word types dropped: one keep/drop draw per
    vocabulary row, so every occurrence of a dropped word in the batch reads a zero vector, and
    the kept rows are scaled by 1 / (1 - p). Equals Merity's `embedded_dropout`, which masks the
    (V, E) matrix, at the cost of a (V, 1) mask and a gather instead of a V x E product."""
    vectors = embedding(ids)
    if not training or p == 0:
        return vectors
    keep = vectors.new_empty(embedding.num_embeddings, 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
    return vectors * keep[ids]  # (B, T, E) * (B, T, 1)


def weight_dropped_call(module: nn.Module, p: float, *args):
    """module(*args) with DropConnect (Wan et al. 2013) on its hidden-to-hidden matrices (every
    parameter named weight_hh*): one elementwise mask per call, shared by the batch and all time
    steps. The dropped matrices are passed in with torch.func.functional_call, so the parameters
    themselves are never replaced (no flatten_parameters hacks) and their gradients, DDP's hooks
    and autocast work as for a plain call. cuDNN copies the weights into its flat buffer for the
    call, which it announces with a warning that is expected here, and only here."""
    dropped = {name: F.dropout(weight, p) for name, weight in module.named_parameters() if name.startswith("weight_hh")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        return functional_call(module, dropped, args)


def activation_penalty(raw: torch.Tensor, dropped: torch.Tensor, ar: float, tar: float) -> torch.Tensor:
    """AR + TAR (Merity et al. 2017, section 4.6) for the top layer's outputs (B, T, H):
    ar * mean(dropped^2) keeps activations small; tar * mean((raw_t - raw_{t-1})^2) keeps the
    undropped state from jumping between steps."""
    penalty = raw.new_zeros(())
    if ar:
        penalty = penalty + ar * dropped.float().pow(2).mean()
    if tar and raw.size(1) > 1:
        penalty = penalty + tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return penalty
