"""The fast layer-normalised layers against a straightforward step-by-step reference."""

import pytest
import torch
from torch import nn

from lmrnn.cells import LayerNormRNN, compiled, lstm_step

CELLS = ["lstm", "gru", "rnn", "rnn_relu"]


def reference(layer: LayerNormRNN, x: torch.Tensor, state):
    """Ba et al. (2016)'s equations one step at a time, with the layer's nn.LayerNorm modules:
    no all-steps input projection, no fused loop."""
    H = layer.hidden_size
    h, c = (state[0][0], state[1][0]) if layer.cell == "lstm" else (state[0], None)
    outputs = []
    for t in range(x.size(1)):
        a = layer.norm_ih(x[:, t] @ layer.weight_ih.T)
        b = layer.norm_hh(h @ layer.weight_hh.T)
        if layer.cell == "lstm":
            i, f, g, o = (a + b)[:, :H], (a + b)[:, H:2 * H], (a + b)[:, 2 * H:3 * H], (a + b)[:, 3 * H:]
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(layer.norm_cell(c))
        elif layer.cell == "gru":
            r = torch.sigmoid(a[:, :H] + b[:, :H])
            z = torch.sigmoid(a[:, H:2 * H] + b[:, H:2 * H])
            n = torch.tanh(a[:, 2 * H:] + r * b[:, 2 * H:])
            h = (1 - z) * n + z * h
        else:
            h = torch.relu(a + b) if layer.cell == "rnn_relu" else torch.tanh(a + b)
        outputs.append(h)
    return torch.stack(outputs, 1), ((h[None], c[None]) if layer.cell == "lstm" else h[None])


def random_layer(cell, seed=0):
    torch.manual_seed(seed)
    layer = LayerNormRNN(cell, 5, 7)
    with torch.no_grad():  # away from the initial gains 1, biases 0, so every parameter matters
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


@pytest.mark.parametrize("cell", CELLS)
def test_matches_the_reference_in_outputs_states_and_gradients(cell):
    layer = random_layer(cell)
    x = torch.randn(3, 9, 5)
    state = (torch.randn(1, 3, 7), torch.randn(1, 3, 7)) if cell == "lstm" else torch.randn(1, 3, 7)
    out, new_state = layer(x, state)
    ref_out, ref_state = reference(layer, x, state)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(new_state, ref_state, rtol=0, atol=1e-5)
    grads = torch.autograd.grad((out ** 2).sum(), list(layer.parameters()))
    ref_grads = torch.autograd.grad((ref_out ** 2).sum(), list(layer.parameters()))
    for g, r in zip(grads, ref_grads):  # gradients reach ~10: float32 agrees to ~1e-6 of that, not 1e-5 absolute
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_the_compiled_step_of_the_cuda_path_equals_the_plain_step():
    """CUDA runs each step through torch.compile; the compiled LSTM step (here on the CPU, the
    slowest cell to compile) gives the plain step's values and gradients."""
    layer = random_layer("lstm")
    gates_x = layer.norm_ih(torch.randn(2, 5) @ layer.weight_ih.T)
    args = (gates_x, torch.randn(2, 7), torch.randn(2, 7), layer.weight_hh, layer.norm_hh.weight,
            layer.norm_cell.weight, layer.norm_cell.bias)
    plain, fused = lstm_step(*args), compiled(lstm_step)(*args)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)
    params = list(layer.parameters())
    expected = torch.autograd.grad(sum(t.sum() for t in plain), params, retain_graph=True)
    for g, r in zip(torch.autograd.grad(sum(t.sum() for t in fused), params), expected):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_do_not_depend_on_the_scale_of_the_recurrent_weights(cell):
    """What layer norm buys: W_hh times 10 (a recurrent matrix grown large in training) gives
    the same outputs, where a plain RNN's activations would saturate and its gradients explode."""
    layer = random_layer(cell)
    x = torch.randn(2, 12, 5)
    out, _ = layer(x)
    with torch.no_grad():
        layer.weight_hh.mul_(10.0)
    scaled, _ = layer(x)
    torch.testing.assert_close(scaled, out, rtol=0, atol=1e-2)  # up to the norms' epsilon
    plain = {"lstm": nn.LSTM(5, 7, batch_first=True), "gru": nn.GRU(5, 7, batch_first=True),
             "rnn": nn.RNN(5, 7, batch_first=True), "rnn_relu": nn.RNN(5, 7, batch_first=True, nonlinearity="relu")}[cell]
    before, _ = plain(x)
    with torch.no_grad():
        plain.weight_hh_l0.mul_(10.0)
    assert (plain(x)[0] - before).abs().max() > 0.1  # without the norm, the same change is large
