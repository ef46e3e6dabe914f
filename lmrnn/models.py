"""RNNLM: embedding -> stacked RNN / LSTM / GRU -> dropout -> decoder, batch-first.

The model knows nothing of tokenizers or corpora: it takes `vocab_size`. Called with ids it
returns raw logits (B, T, V); called with targets too it returns their mean NLL instead, from
the decoder's own loss (lmrnn.softmax), which never keeps (B, T, V) logits for backward. The loss
sits inside forward so that DistributedDataParallel sees the decoder used in its forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmrnn.cells import GATES, LayerNormRNN
from lmrnn.config import ModelConfig
from lmrnn.ngram import KneserNey
from lmrnn.regularizers import LockedDropout, embedding_dropout, weight_dropped_call
from lmrnn.softmax import AdaptiveSoftmax, FullSoftmax, adaptive_parameters

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # LSTM carries (h, c), others h


class DecodedLM(nn.Module):
    """What RNNLM and FeedForwardLM share: `_encode` (theirs) -> `decoder` (FullSoftmax or
    AdaptiveSoftmax), and the three ways to call the pair."""

    def build_decoder(self, cfg: ModelConfig, in_features: int) -> None:
        # Weight tying (Press & Wolf 2016; Inan et al. 2016): the decoder reuses the embedding
        # matrix. When H != E a linear projection H -> E bridges the sizes.
        E, V = cfg.embedding_dim, cfg.vocab_size
        self.projection = nn.Linear(in_features, E, bias=False) if cfg.tie_weights and in_features != E else None
        if cfg.output == "adaptive":  # (config: never tied)
            self.decoder = AdaptiveSoftmax(in_features, V)
        else:
            self.decoder = FullSoftmax(E if cfg.tie_weights else in_features, V)
            if cfg.tie_weights:
                self.decoder.weight = self.embedding.weight
        a = cfg.init_range
        nn.init.uniform_(self.embedding.weight, -a, a)  # (after building the decoder: the RNG draws of earlier versions)
        if cfg.output == "softmax":
            nn.init.zeros_(self.decoder.bias)
            if not cfg.tie_weights:
                nn.init.uniform_(self.decoder.weight, -a, a)

    def forward(self, ids: torch.Tensor, hidden=None, targets: torch.Tensor | None = None, activations: bool = False):
        """ids (B, T) -> logits (B, T, V), or with targets (B, T) their mean NLL (a scalar), and
        the new state. With `activations` (RNNLM), also the top layer's outputs (B, T, H) before
        and after its dropout, for activation regularisation."""
        features, hidden, top = self._encode(ids, hidden)
        out = self.decoder(features) if targets is None else self.decoder.nll(features, targets)
        return (out, hidden, top) if activations else (out, hidden)

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor, hidden=None):
        """Each target's NLL (B, T) float32 (0 where IGNORE_INDEX), and the new state: the
        evaluation path, in chunks of rows under inference mode (no (B, T, V) logits)."""
        features, hidden, _ = self._encode(ids, hidden)
        return self.decoder.nll(features, targets, reduction="none"), hidden

    def encode(self, ids: torch.Tensor, hidden=None):
        """Everything but the decoder: ids (B, T) -> decoder inputs (B, T, D) and the new state.
        Lets a caller decode only the positions it needs (the probes decode one of T)."""
        return self._encode(ids, hidden)[:2]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix counts once

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device


class RNNLM(DecodedLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building")
        self.cfg = cfg
        E, H, V = cfg.embedding_dim, cfg.hidden_size, cfg.vocab_size
        self.embedding = nn.Embedding(V, E)
        # Dropout on the non-recurrent connections only: input, between layers, output
        # (Zaremba, Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization"); with
        # locked_dropout one mask per sequence, the same at every step (Gal & Ghahramani 2016).
        self.dropout = LockedDropout(cfg.dropout) if cfg.locked_dropout else nn.Dropout(cfg.dropout)
        cell = {"rnn": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        extra = {"nonlinearity": "relu" if cfg.cell == "rnn_relu" else "tanh"} if cell is nn.RNN else {}
        # One multi-layer module (one cuDNN call) when the stack needs nothing between its layers;
        # otherwise a layer at a time: locked dropout goes between them, layer norm inside them.
        self.rnn = self.layers = None
        if cfg.locked_dropout or cfg.layer_norm:
            self.layers = nn.ModuleList(
                LayerNormRNN(cfg.cell, E if layer == 0 else H, H) if cfg.layer_norm
                else cell(E if layer == 0 else H, H, batch_first=True, **extra) for layer in range(cfg.num_layers))
        else:
            self.rnn = cell(E, H, cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0, **extra)
        self.build_decoder(cfg, H)
        self._init_weights()

    def _init_weights(self) -> None:
        H = self.cfg.hidden_size
        if self.cfg.recurrent_init == "orthogonal":  # each gate's H x H block (Saxe et al. 2014)
            for module in self.recurrent_modules:
                for name, weight in module.named_parameters():
                    if name.startswith("weight_hh"):
                        with torch.no_grad():
                            for block in weight.split(H):
                                nn.init.orthogonal_(block)
        if self.cfg.cell == "lstm" and not self.cfg.layer_norm:  # (LayerNormRNN sets its own)
            # Forget-gate bias 1 so the cell state is kept by default early in training
            # (Jozefowicz, Zaremba & Sutskever 2015). PyTorch gate order: input, forget, cell, output;
            # the two bias vectors add, so one gets 1 and the other 0.
            for module in self.recurrent_modules:
                for name, bias in module.named_parameters():
                    with torch.no_grad():
                        if name.startswith("bias_ih"):
                            bias[H:2 * H].fill_(1.0)
                        elif name.startswith("bias_hh"):
                            bias[H:2 * H].zero_()

    @property
    def recurrent_modules(self) -> list[nn.Module]:
        """The one multi-layer module, or the layers one by one, bottom first."""
        return [self.rnn] if self.layers is None else list(self.layers)

    def flatten_parameters(self) -> None:
        """cuDNN wants each RNN's weights in one contiguous buffer after a move to the GPU."""
        for module in self.recurrent_modules:
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()

    def _encode(self, ids: torch.Tensor, hidden: Hidden | None):
        """ids (B, T) -> decoder inputs (B, T, D), the new state ((L, B, H), or a pair for LSTM;
        None in = zeros), and the top layer's outputs before and after dropout."""
        x = embedding_dropout(self.embedding, ids, self.cfg.embedding_dropout, self.training)
        x = self.dropout(x * self.cfg.embedding_scale)  # (B, T, E)
        if self.layers is None:
            out, hidden = self._call(self.rnn, x, hidden)  # (B, T, H)
        else:
            states = []
            for index, layer in enumerate(self.layers):
                if index:
                    x = self.dropout(x)  # between layers
                x, state = self._call(layer, x, None if hidden is None else map_hidden(hidden, lambda h: h[index:index + 1]))
                states.append(state)
            out = x
            hidden = (tuple(torch.cat(parts) for parts in zip(*states)) if isinstance(states[0], tuple)
                      else torch.cat(states))  # (L, B, H)
        dropped = self.dropout(out)
        features = self.projection(dropped) if self.projection is not None else dropped  # (B, T, E)
        return features, hidden, (out, dropped)

    def _call(self, module: nn.Module, x: torch.Tensor, hidden: Hidden | None):
        """One recurrent module on x (B, T, in), with weight drop on its recurrent matrices in training."""
        if self.training and self.cfg.weight_drop:
            return weight_dropped_call(module, self.cfg.weight_drop, x, hidden)
        return module(x, hidden)

    def next_token_logits(self, hidden: Hidden) -> torch.Tensor:
        """(B, V) logits of the next token from a state alone: the decoder on the top layer's h,
        which is what forward computes at the last position (in eval mode)."""
        top = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]  # (B, H)
        return self.decoder(self.projection(top) if self.projection is not None else top)


class FeedForwardLM(DecodedLM):
    """The neural probabilistic LM of Bengio et al. (2003): the embeddings of the previous N
    tokens (model.context), concatenated, through model.num_layers tanh layers, then the decoder
    (tied as in RNNLM). It has RNNLM's interface: its carried "state" is the last N tokens,
    (1, B, N) with -1 for "before the text" (a zero embedding, like a recurrent zero state), so
    every position sees its N previous tokens across window boundaries, in training and in eval."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building")
        self.cfg = cfg
        N, E, H, V = cfg.context, cfg.embedding_dim, cfg.hidden_size, cfg.vocab_size
        self.embedding = nn.Embedding(V, E)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(nn.Linear(N * E if i == 0 else H, H) for i in range(cfg.num_layers))
        self.build_decoder(cfg, H)

    def _encode(self, ids: torch.Tensor, hidden: torch.Tensor | None):
        """ids (B, T) -> decoder inputs (B, T, D) and the last N tokens (1, B, N)."""
        B, T = ids.shape
        N = self.cfg.context
        if hidden is None:
            hidden = ids.new_full((1, B, N), -1)
        tokens = torch.cat([hidden[0], ids], dim=1)  # (B, N + T)
        known = (tokens >= 0).unsqueeze(-1)
        x = self.dropout(self.embedding(tokens.clamp(min=0)) * (known * self.cfg.embedding_scale))  # (B, N + T, E)
        # the window ending at each input token: positions t+1 .. t+N of `tokens`
        x = x.unfold(1, N, 1)[:, 1:]  # (B, T, E, N)
        x = x.transpose(2, 3).reshape(B, T, N * self.cfg.embedding_dim)  # (B, T, N * E)
        for layer in self.layers:
            x = self.dropout(torch.tanh(layer(x)))  # (B, T, H)
        if self.projection is not None:
            x = self.projection(x)
        return x, tokens[:, T:].unsqueeze(0), None


def build_model(cfg: ModelConfig) -> RNNLM | FeedForwardLM:
    """The trainable model a config asks for (cell ngram is counted, not built here)."""
    return FeedForwardLM(cfg) if cfg.cell == "ffnn" else RNNLM(cfg)


class NgramLM(nn.Module):
    """A Kneser-Ney model behind RNNLM's interface, so generation needs no second code path:
    forward gives log-probabilities as logits, and the "hidden state" is the last order-1 tokens,
    (1, B, order-1) with -1 for none (batch on dimension 1, as for a recurrent state)."""

    def __init__(self, kn: KneserNey):
        super().__init__()
        self.kn = kn
        self.register_buffer("marker", torch.zeros(0), persistent=False)  # where outputs go

    @property
    def device(self) -> torch.device:
        return self.marker.device

    def num_parameters(self) -> int:
        return sum(len(level.keys) for level in self.kn.levels)  # stored n-grams

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> log-probabilities (B, T, V) and the new state (1, B, order-1)."""
        B, T = ids.shape
        keep = self.kn.order - 1
        if hidden is None:
            hidden = torch.full((1, B, keep), -1, dtype=torch.long)
        logits = torch.empty(B, T, self.kn.vocab_size)
        rows = []
        for b in range(B):
            history = [t for t in hidden[0, b].tolist() if t >= 0]
            for t, token in enumerate(ids[b].tolist()):
                history.append(token)
                logits[b, t] = torch.from_numpy(np.log(self.kn.distribution(history)))
            tail = history[-keep:] if keep else []
            rows.append([-1] * (keep - len(tail)) + tail)
        return logits.to(self.device), torch.tensor([rows], dtype=torch.long, device=self.device).view(1, B, keep)


def map_hidden(hidden: Hidden, fn) -> Hidden:
    """fn applied to each tensor of a state: h, or the LSTM's (h, c)."""
    return tuple(fn(h) for h in hidden) if isinstance(hidden, tuple) else fn(hidden)


def reset_rows(hidden: Hidden, rows: torch.Tensor) -> Hidden:
    """The state with the rows where `rows` (B,) is true set back to the start-of-text state:
    zeros for a recurrent state (L, B, H), -1 ("before the text") for FeedForwardLM's tokens (1, B, N)."""
    return map_hidden(hidden, lambda h: h.masked_fill(rows.view(1, -1, 1), 0 if h.is_floating_point() else -1))


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph at a window boundary: the state's value flows on, its gradient does not
    (otherwise backward would run to the start of the stream)."""
    return None if hidden is None else map_hidden(hidden, torch.Tensor.detach)


def count_parameters(cfg: ModelConfig) -> int:
    """build_model(cfg).num_parameters() without building it (for sizing searches):
    embedding V*E; recurrent layer l: G*H*(in_l + H) weights + 2*G*H biases (PyTorch keeps b_ih
    and b_hh), in_0 = E, in_l = H; layer-normalised: the same weights, no biases, 2*G*H + G*H norm
    parameters (+ 2*H for the LSTM's cell norm); feed-forward layer l: in_l*H + H, in_0 = N*E; tied: projection
    H*E when H != E, decoder bias V; untied: decoder H*V + V."""
    E, H, V = cfg.embedding_dim, cfg.hidden_size, cfg.vocab_size
    if cfg.cell == "ffnn":  # layer 0: N*E -> H, then H -> H; weights and one bias each
        recurrent = sum((cfg.context * E if layer == 0 else H) * H + H for layer in range(cfg.num_layers))
    else:
        G = GATES[cfg.cell]
        extra = 3 * G * H + (2 * H if cfg.cell == "lstm" else 0) if cfg.layer_norm else 2 * G * H
        recurrent = sum(G * H * ((E if layer == 0 else H) + H) + extra for layer in range(cfg.num_layers))
    if cfg.output == "adaptive":
        output = adaptive_parameters(H, V)
    elif cfg.tie_weights:
        output = (H * E if H != E else 0) + V
    else:
        output = H * V + V
    return V * E + recurrent + output
