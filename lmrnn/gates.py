"""Every gate of an LSTM or GRU at every position of a text, recomputed from a run's weights, and
how saturated each unit's gates are (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and
Understanding Recurrent Networks", section 4.2).

    LSTM (PyTorch's order i, f, g, o):  a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
        i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g);  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
    GRU (r, z, n):  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr);  z likewise
        n = tanh(W_in x + b_in + r (W_hn h + b_hn));  h_t = (1 - z) n + z h_{t-1}
    layer-normalised layers: lmrnn.cells' steps, their gate pre-activations normalised first

A unit's gate is left-saturated at a position when it is below 0.1 (shut) and right-saturated
above 0.9 (open). The forget gate f (LSTM) and the update gate z (GRU) are each the share of the
old state a step keeps, so a mean keep share k forgets with an effective time constant of
-1 / ln k steps. The recomputed h and c are tested against the model's own to 1e-5 (plain
RNNs too, whose states `lmrnn inspect` shows).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from lmrnn.cells import EPS, LayerNormRNN
from lmrnn.errors import UserError
from lmrnn.evaluate import text_to_score
from lmrnn.models import RNNLM
from lmrnn.probes import load_probe_runs
from lmrnn.report import save_png

GATE_NAMES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update")}
KEEP_GATE = {"lstm": "forget", "gru": "update"}  # the share of the old state a step keeps
SHUT, OPEN = 0.1, 0.9
HISTOGRAM_BINS = 20


@dataclass
class LayerTrace:
    """One layer over T positions: each sigmoid gate's values and the states, (T, H) each."""
    gates: dict[str, torch.Tensor]
    h: torch.Tensor
    c: torch.Tensor | None  # the LSTM's cell state


def layer_weights(model: RNNLM, layer: int) -> dict:
    """W_ih, W_hh, b_ih, b_hh of one layer (biases None in a layer-normalised layer, which keeps
    its norms under "norms") whichever way the stack is built."""
    if model.layers is None:
        module, suffix = model.rnn, f"_l{layer}"
    else:
        module, suffix = model.layers[layer], "_l0"
    if isinstance(module, LayerNormRNN):
        return {"weight_ih": module.weight_ih, "weight_hh": module.weight_hh, "bias_ih": None, "bias_hh": None,
                "norms": (module.norm_ih, module.norm_hh, module.norm_cell)}
    return {name: getattr(module, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")} | {"norms": None}


def trace_gates(model: RNNLM, ids: torch.Tensor) -> list[LayerTrace]:
    """trace_states of an LSTM or GRU, whose gates are what is wanted."""
    if model.cfg.cell not in GATE_NAMES:
        raise UserError(f"cell {model.cfg.cell} has no gates: probe gates reads LSTM and GRU runs")
    return trace_states(model, ids)


@torch.no_grad()
def trace_states(model: RNNLM, ids: torch.Tensor) -> list[LayerTrace]:
    """Every layer's states (and gates) over one stream of ids (T,), from the zero state, in
    evaluation mode (no dropout), step by step from the layer's weights."""
    cell = model.cfg.cell
    step = {"lstm": _trace_lstm, "gru": _trace_gru, "rnn": partial(_trace_rnn, relu=False),
            "rnn_relu": partial(_trace_rnn, relu=True)}[cell]
    x = model.embedding(ids.to(model.device)) * model.cfg.embedding_scale  # (T, E), in the weights' dtype
    traces = []
    for layer in range(model.cfg.num_layers):
        trace = step(x, layer_weights(model, layer))
        traces.append(trace)
        x = trace.h
    return traces


def _input_half(x: torch.Tensor, weights: dict) -> torch.Tensor:
    """W_ih x_t (+ b_ih, or LN_ih) for every position at once: (T, G*H)."""
    pre = x @ weights["weight_ih"].t()
    if weights["norms"] is not None:
        norm_ih = weights["norms"][0]
        return F.layer_norm(pre, (pre.size(1),), norm_ih.weight, norm_ih.bias, EPS)
    return pre + weights["bias_ih"]


def _recurrent_half(h: torch.Tensor, weights: dict) -> torch.Tensor:
    """W_hh h_{t-1} (+ b_hh, or LN_hh): (G*H,)."""
    pre = weights["weight_hh"] @ h
    if weights["norms"] is not None:
        return F.layer_norm(pre, (pre.size(0),), weights["norms"][1].weight, None, EPS)
    return pre + weights["bias_hh"]


def _trace_rnn(x: torch.Tensor, weights: dict, relu: bool) -> LayerTrace:
    inputs = _input_half(x, weights)
    h = x.new_zeros(weights["weight_hh"].size(1))
    hs = []
    for a_x in inputs:
        a = a_x + _recurrent_half(h, weights)
        h = torch.relu(a) if relu else torch.tanh(a)
        hs.append(h)
    return LayerTrace({}, torch.stack(hs), None)


def _trace_lstm(x: torch.Tensor, weights: dict) -> LayerTrace:
    inputs = _input_half(x, weights)
    H = weights["weight_hh"].size(1)
    h, c = x.new_zeros(H), x.new_zeros(H)
    norm_cell = weights["norms"][2] if weights["norms"] is not None else None  # LN_c before tanh
    values = {name: [] for name in GATE_NAMES["lstm"]}
    hs, cs = [], []
    for a_x in inputs:
        i, f, g, o = (a_x + _recurrent_half(h, weights)).split(H)
        i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c = f * c + i * g
        shown = F.layer_norm(c, (H,), norm_cell.weight, norm_cell.bias, EPS) if norm_cell is not None else c
        h = o * torch.tanh(shown)
        for name, value in zip(("input", "forget", "output"), (i, f, o)):
            values[name].append(value)
        hs.append(h)
        cs.append(c)
    return LayerTrace({name: torch.stack(v) for name, v in values.items()}, torch.stack(hs), torch.stack(cs))


def _trace_gru(x: torch.Tensor, weights: dict) -> LayerTrace:
    inputs = _input_half(x, weights)
    H = weights["weight_hh"].size(1)
    h = x.new_zeros(H)
    values = {name: [] for name in GATE_NAMES["gru"]}
    hs = []
    for a_x in inputs:
        r_x, z_x, n_x = a_x.split(H)
        r_h, z_h, n_h = _recurrent_half(h, weights).split(H)
        r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        h = (1 - z) * n + z * h
        values["reset"].append(r)
        values["update"].append(z)
        hs.append(h)
    return LayerTrace({name: torch.stack(v) for name, v in values.items()}, torch.stack(hs), None)


def gate_statistics(values: torch.Tensor) -> dict:
    """Of one gate's values (T, H): per unit the share of positions shut (< 0.1) and open (> 0.9),
    the histogram of all values, and the mean."""
    values = values.double()
    counts = torch.histc(values, bins=HISTOGRAM_BINS, min=0.0, max=1.0)
    return {"shut": (values < SHUT).double().mean(0).tolist(), "open": (values > OPEN).double().mean(0).tolist(),
            "histogram": (counts / counts.sum()).tolist(), "mean": values.mean().item()}


def time_constant(keep: float) -> float | None:
    """Steps until a share `keep` kept per step leaves 1/e of a state: -1 / ln keep (None: for ever)."""
    if keep >= 1.0:
        return None
    return -1.0 / float(np.log(keep)) if keep > 0 else 0.0


def probe_gates(run_dirs: list[Path], tokens: int = 2000, data: str | None = None, device: str = "auto",
                plot: Path | None = None) -> list[dict]:
    """Per run, layer and gate: each unit's shut and open shares over the first `tokens` tokens
    of the validation split (or of `data`), the histogram of the gate's values, and the keep
    gate's mean and time constant; plotted as Karpathy's scatter and the histograms."""
    if tokens < 2:
        raise UserError(f"--tokens must be >= 2, got {tokens}")
    rows = []
    for run in load_probe_runs(run_dirs, device, same_tokenizer=False):
        if run.cell not in GATE_NAMES:
            raise UserError(f"{run.label} is a {run.cell} model: probe gates reads LSTM and GRU runs")
        ids = text_to_score(run.cfg, run.tokenizer, data, default="validation")[0].ids[:tokens]
        for layer, trace in enumerate(trace_gates(run.model, torch.from_numpy(ids.astype(np.int64)))):
            gates = {name: gate_statistics(values) for name, values in trace.gates.items()}
            keep = gates[KEEP_GATE[run.cell]]["mean"]
            rows.append({"run": run.label, "cell": run.cell, "layer": layer, "tokens": len(ids), "gates": gates,
                         "keep_gate": KEEP_GATE[run.cell], "mean_keep": keep, "time_constant": time_constant(keep)})
    if plot is not None:
        plot_gates(rows, plot)
    return rows


def plot_gates(rows: list[dict], path: Path) -> Figure:
    """One row of panels per (run, layer): each gate's scatter of units, shut share against open
    share (Karpathy et al. 2015, figure 3), then the histograms of every gate's values."""
    widest = max(len(r["gates"]) for r in rows)
    fig = Figure(figsize=(3.2 * (widest + 1), 3.0 * len(rows)), layout="constrained")
    grid = fig.subplots(len(rows), widest + 1, squeeze=False)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    for axes_row, row in zip(grid, rows):
        for column, (name, stats) in enumerate(row["gates"].items()):
            axes = axes_row[column]
            axes.scatter(stats["shut"], stats["open"], s=6, alpha=0.6, color=f"C{column}")
            axes.plot([0, 1], [1, 0], color="grey", linewidth=0.5)
            axes.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"share < {SHUT}", ylabel=f"share > {OPEN}",
                     title=f"{row['run']} L{row['layer']}: {name}")
            axes_row[-1].stairs(stats["histogram"], edges, label=name, color=f"C{column}")
        for axes in axes_row[len(row["gates"]):-1]:
            axes.axis("off")
        tau = "for ever" if row["time_constant"] is None else f"{row['time_constant']:.1f} steps"
        axes_row[-1].set(title=f"gate values ({row['keep_gate']}: tau {tau})",
                         xlabel="value", ylabel="share of positions")
        axes_row[-1].legend(fontsize="small")
    save_png(fig, path)
    return fig
