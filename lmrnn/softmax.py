"""The output layer: decoder inputs (..., D) -> a distribution over the V tokens, and the NLL of
targets under it without keeping (N, V) logits around.

    FullSoftmax      logits = h W^T + b, as nn.Linear (its state dict keys too); its NLL is
                     computed in chunks of rows, and in training the gradient of each chunk is
                     taken at once, so that no (N, V) tensor outlives its chunk
    AdaptiveSoftmax  Grave et al. 2017, "Efficient softmax approximation for GPUs": the frequent
                     tokens and one entry per rarer cluster in a head softmax, each cluster in a
                     smaller softmax of its own. Still a normalised distribution over all V
                     tokens, so its perplexity is exact.

Why the chunks: the plain path, F.cross_entropy(h @ W.T + b), keeps the logits and their
log-softmax for backward, two (N, V) float32 tensors (three under autocast, with the bf16
logits), and builds a third in backward. For N = 80 x 70 rows and V = 33,278 that is 745 MB each.
"""

from __future__ import annotations

import torch
from torch import nn

from lmrnn.errors import UserError

IGNORE_INDEX = -100  # = data.IGNORE_INDEX, F.cross_entropy's default: padded targets count for nothing
# rows x V per chunk: 64 MB of float32 log-probabilities. Smaller chunks cost matmul efficiency on
# a CPU (D = 650, V = 10k, 700 rows, 2 cores: 0.24 s a loss step in 8 MB chunks, 0.19 s whole).
# At 64 MB the fused loss and its backward take 0.18 s against the plain path's 0.19 s at 700
# rows, and 1.19 s against 1.39 s at 4,480 rows (3 chunks).
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


def compute_dtype(features: torch.Tensor) -> torch.dtype:
    """The matmul dtype nn.Linear would use here: autocast's, else the features' own."""
    device = features.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else features.dtype


def _chunk_log_probs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """log softmax(h W^T + b), (n, V) float32."""
    if bias is not None and h.dtype == bias.dtype:
        logits = torch.addmm(bias, h, weight.t())  # the bias added inside the matmul
    else:
        logits = torch.mm(h, weight.t()).float()  # float32 for the softmax
        logits = logits if bias is None else logits.add_(bias)
    return torch.log_softmax(logits, dim=1)


def _chunk_nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (n,) of targets (n,) under log_probs (n, V), 0 where ignored."""
    picked = log_probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(targets != IGNORE_INDEX, -picked, 0.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(h_i W^T + b)[t_i] with its gradient computed in the forward pass, chunk
    by chunk: d/dlogits = softmax - onehot(t), so dh = dlogits W, dW = dlogits^T h, db = sum of
    dlogits. The same three matmuls as the plain path, and nothing of size (N, V) is kept."""

    @staticmethod
    def forward(ctx, features, weight, bias, targets, dtype):
        # features (N, D), weight (V, D), bias (V,) or None, targets (N,) -> float32 scalar
        w, h_all = weight.to(dtype), features.to(dtype)
        grad_h = torch.empty_like(features)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        total = torch.zeros((), dtype=torch.float32, device=features.device)
        rows = chunk_rows(weight.shape[0])
        with torch.autocast(features.device.type, enabled=False):
            for start in range(0, features.shape[0], rows):
                h, t = h_all[start:start + rows], targets[start:start + rows]
                log_probs = _chunk_log_probs(h, w, bias)
                total += _chunk_nll(log_probs, t).sum()
                dlogits = log_probs.exp_()  # the softmax, in place
                dlogits.scatter_add_(1, t.clamp(min=0)[:, None], -torch.ones_like(dlogits[:, :1]))
                # an ignored target's row of dlogits is left as is, and masked where it is used:
                # in h (n x D) and a matrix-vector product, not in another pass over n x V
                valid = (t != IGNORE_INDEX).to(dtype)
                if grad_b is not None:
                    grad_b += valid.float() @ dlogits
                dlogits = dlogits.to(dtype)
                grad_h[start:start + rows] = torch.mm(dlogits, w) * valid[:, None]
                if dtype == torch.float32:
                    grad_w.addmm_(dlogits.t(), h * valid[:, None])
                else:  # a bf16/fp16 product, summed in float32
                    grad_w += torch.mm(dlogits.t(), h * valid[:, None]).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype), grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # scaled in place: no second copy of the (V, D) gradient (a second backward through the
        # same graph is refused by autograd's check of the saved tensors' versions)
        grads = [None if g is None else g.mul_(grad_total.to(g.dtype)) for g in ctx.saved_tensors]
        return *grads, None, None


class FullSoftmax(nn.Linear):
    """The decoder of a plain softmax: called, logits (..., V); `nll`, the targets' NLL."""

    def nll(self, features: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """NLL (nats) of targets (...) given features (..., D): their mean over the counted targets
        (reduction "mean", differentiable) or each one (reduction "none", float32, shape of
        targets). Padding (IGNORE_INDEX) counts for nothing."""
        dtype = compute_dtype(features)
        h, t = features.reshape(-1, features.shape[-1]), targets.reshape(-1)
        if reduction == "mean":
            counted = (t != IGNORE_INDEX).sum().clamp(min=1)
            if torch.is_grad_enabled() and (h.requires_grad or self.weight.requires_grad):
                return _LinearCrossEntropy.apply(h, self.weight, self.bias, t, dtype) / counted
            return self.nll(features, targets, "none").sum() / counted
        w, rows = self.weight.to(dtype), chunk_rows(self.out_features)
        with torch.autocast(features.device.type, enabled=False):
            return torch.cat([_chunk_nll(_chunk_log_probs(h[s:s + rows].to(dtype), w, self.bias), t[s:s + rows])
                              for s in range(0, h.shape[0], rows)]).view(targets.shape)


def adaptive_cutoffs(vocab_size: int) -> list[int]:
    """Head: the V/16 most frequent tokens; cluster 1: up to V/4; cluster 2: the rest. For
    WikiText-2's 33,278 words that is 2,079 / 8,319, close to the 2,000 / 10,000 splits that
    fairseq and Grave et al. use at this size."""
    return [vocab_size // 16, vocab_size // 4]


class AdaptiveSoftmax(nn.Module):
    """nn.AdaptiveLogSoftmaxWithLoss (Grave et al. 2017; clusters' widths D/4, D/16) over the
    tokens in frequency order. Token ids are not in frequency order (SentencePiece orders its
    pieces by score), so the buffer `rank` maps each id to its place (0 = most frequent) and
    is set from the training counts (`set_frequencies`) before training; it is saved with the
    weights. Called, it returns log-probabilities (..., V) in id order: valid logits for sampling."""

    def __init__(self, in_features: int, vocab_size: int):
        super().__init__()
        if vocab_size < 64 or in_features < 16:  # (each cluster needs a token and a width of 1 or more)
            raise UserError(f"model.output=adaptive needs at least 64 tokens and a decoder input of at least "
                             f"16 features, got {vocab_size} and {in_features}")
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(in_features, vocab_size, adaptive_cutoffs(vocab_size),
                                                      div_value=4.0, head_bias=True)
        self.register_buffer("rank", torch.arange(vocab_size))

    def set_frequencies(self, counts: torch.Tensor) -> None:
        """counts (V,): how often each id occurs in the training text."""
        order = torch.sort(counts.to(self.rank.device), descending=True, stable=True).indices  # rank -> id
        self.rank[order] = torch.arange(len(order), device=self.rank.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        log_probs = self.adaptive.log_prob(features.reshape(-1, features.shape[-1]))  # (N, V), rank order
        return log_probs[:, self.rank].view(*features.shape[:-1], -1)

    def nll(self, features: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """As FullSoftmax.nll: each target's log-probability from its head entry and, for a rare
        token, its cluster's softmax alone, never the (N, V) distribution."""
        t = targets.reshape(-1)
        valid = t != IGNORE_INDEX
        picked = self.adaptive(features.reshape(-1, features.shape[-1]), self.rank[t.clamp(min=0)]).output
        nll = torch.where(valid, -picked.float(), 0.0)
        if reduction == "mean":
            return nll.sum() / valid.sum().clamp(min=1)
        return nll.view(targets.shape)


def adaptive_parameters(in_features: int, vocab_size: int) -> int:
    """AdaptiveSoftmax(in_features, vocab_size)'s parameter count: the head D x (c0 + 2) + (c0 + 2)
    bias; cluster i, width d_i = D / 4^(i+1): D x d_i + d_i x (its tokens)."""
    D, (c0, c1) = in_features, adaptive_cutoffs(vocab_size)
    head = c0 + 2
    clusters = [(D // 4, c1 - c0), (D // 16, vocab_size - c1)]
    return D * head + head + sum(D * d + d * size for d, size in clusters)
