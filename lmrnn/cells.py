"""Layer-normalised recurrent layers (Ba, Kiros & Hinton 2016), each a drop-in for one layer of
nn.LSTM / nn.GRU / nn.RNN: batch-first input (B, T, in), output (B, T, H), state (1, B, H)
(LSTM: a pair (h, c)). Normalising each step's gate pre-activations keeps their scale fixed
however large the recurrent weights grow, the textbook fix for unstable recurrent gradients.

    LSTM  i, f, g, o = split(LN_ih(W_ih x_t) + LN_hh(W_hh h_{t-1}))            4 blocks of H
          c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);  h_t = sigmoid(o) tanh(LN_c(c_t))
    GRU   r_x, z_x, n_x = split(LN_ih(W_ih x_t));  r_h, z_h, n_h = split(LN_hh(W_hh h_{t-1}))
          r = sigmoid(r_x + r_h), z = sigmoid(z_x + z_h), n = tanh(n_x + r n_h)
          h_t = (1 - z) n + z h_{t-1}                                          (PyTorch's GRU)
    RNN   h_t = tanh(LN_ih(W_ih x_t) + LN_hh(W_hh h_{t-1}))                    (or relu)

Each LN normalises the whole gate vector, as in pytorch/benchmarks' LayerNormLSTMCell; LN_ih
carries the bias (LN_hh has gain only, its bias would only add to LN_ih's).

Speed: the input half, LN_ih(W_ih x), is one matmul and one norm over all T steps; only
h_{t-1} -> gates runs step by step. On CUDA each step is compiled (torch.compile), which fuses
the gate maths and the norms into a few kernels instead of a dozen launches per step, forward
and backward. On the CPU, where launches cost nothing, compiling does not pay: at 2 x 650,
batch 20 on 2 cores the compiled step ran at 0.99x (LSTM) and 0.95x (GRU) the plain one, and
these layers at 0.53x (LSTM) and 0.97x (GRU) the speed of nn.LSTM / nn.GRU
(benchmarks/bench_layer_norm.py). Compiling a whole window instead would recompile for every
window length.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

GATES = {"rnn": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
EPS = 1e-5


def recurrent_gates(h: torch.Tensor, weight_hh: torch.Tensor, gain_hh: torch.Tensor) -> torch.Tensor:
    """LN_hh(W_hh h_{t-1}): h (B, H) -> (B, G*H), the half of every cell's step that recurs."""
    return F.layer_norm(h @ weight_hh.t(), (weight_hh.size(0),), gain_hh, None, EPS)


def lstm_step(gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor,
              gain_hh: torch.Tensor, gain_c: torch.Tensor, bias_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: gates_x (B, 4H) = LN_ih(W_ih x_t), h and c (B, H) -> h, c."""
    i, f, g, o = (gates_x + recurrent_gates(h, weight_hh, gain_hh)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (c.size(1),), gain_c, bias_c, EPS)), c


def gru_step(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, gain_hh: torch.Tensor) -> torch.Tensor:
    """One step: gates_x (B, 3H), h (B, H) -> h."""
    r_x, z_x, n_x = gates_x.chunk(3, 1)
    r_h, z_h, n_h = recurrent_gates(h, weight_hh, gain_hh).chunk(3, 1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return n + z * (h - n)  # (1 - z) n + z h


def rnn_step(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, gain_hh: torch.Tensor) -> torch.Tensor:
    return torch.tanh(gates_x + recurrent_gates(h, weight_hh, gain_hh))


def relu_rnn_step(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, gain_hh: torch.Tensor) -> torch.Tensor:
    return torch.relu(gates_x + recurrent_gates(h, weight_hh, gain_hh))


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step, "rnn_relu": relu_rnn_step}


@functools.cache
def compiled(step):
    """A step compiled once per shape (batch size and width; the window length never enters)."""
    return torch.compile(step, fullgraph=True, dynamic=False)


class LayerNormRNN(nn.Module):
    """One layer-normalised recurrent layer of `cell` (rnn, rnn_relu, lstm or gru)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int):
        super().__init__()
        self.cell, self.hidden_size = cell, hidden_size
        width = GATES[cell] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(width, input_size))
        self.weight_hh = nn.Parameter(torch.empty(width, hidden_size))
        self.norm_ih = nn.LayerNorm(width, eps=EPS)
        self.norm_hh = nn.LayerNorm(width, eps=EPS, bias=False)
        self.norm_cell = nn.LayerNorm(hidden_size, eps=EPS) if cell == "lstm" else None
        self.compile_steps: bool | None = None  # each step through torch.compile; None = on CUDA only
        bound = 1 / math.sqrt(hidden_size)  # nn.LSTM's initialisation
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        if cell == "lstm":  # forget-gate bias 1 (Jozefowicz et al. 2015), as in RNNLM
            with torch.no_grad():
                self.norm_ih.bias[hidden_size:2 * hidden_size].fill_(1.0)

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, in), state (1, B, H) or for the LSTM (h, c), None = zeros -> (B, T, H), state."""
        B = x.size(0)
        gates_x = self.norm_ih(F.linear(x, self.weight_ih))  # (B, T, G*H): every step in one matmul
        # unbind, not gates_x[:, t]: the backward of T selects would build T full-size zero
        # gradients (quadratic in T); unbind's is one stack
        fused = x.is_cuda if self.compile_steps is None else self.compile_steps  # see the module's notes
        step = compiled(STEPS[self.cell]) if fused else STEPS[self.cell]
        weight_hh = self.weight_hh.to(gates_x.dtype)
        zeros = gates_x.new_zeros(B, self.hidden_size)
        outputs = []
        if self.cell == "lstm":
            h, c = (zeros, zeros) if state is None else (state[0][0].to(zeros.dtype), state[1][0].to(zeros.dtype))
            for gates_t in gates_x.unbind(1):
                h, c = step(gates_t, h, c, weight_hh, self.norm_hh.weight, self.norm_cell.weight, self.norm_cell.bias)
                outputs.append(h)
            return torch.stack(outputs, 1), (h.unsqueeze(0), c.unsqueeze(0))
        h = zeros if state is None else state[0].to(zeros.dtype)
        for gates_t in gates_x.unbind(1):
            h = step(gates_t, h, weight_hh, self.norm_hh.weight)
            outputs.append(h)
        return torch.stack(outputs, 1), h.unsqueeze(0)
