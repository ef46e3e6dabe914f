import json
import math

import pytest
import torch
from typer.testing import CliRunner

from lmrnn.cli import app
from lmrnn.config import ModelConfig
from lmrnn.errors import UserError
from lmrnn.gates import gate_statistics, time_constant, trace_gates, trace_states
from lmrnn.models import RNNLM


def model(cell: str, layer_norm: bool = False, locked: bool = False, scale: float = 3.0) -> RNNLM:
    torch.manual_seed(0)
    m = RNNLM(ModelConfig(cell=cell, embedding_dim=12, hidden_size=10, num_layers=2, dropout=0.3, tie_weights=False,
                          vocab_size=30, layer_norm=layer_norm, locked_dropout=locked, embedding_scale=1.5))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)  # 3: gates far from 0.5, so a wrong order or bias would show
    return m.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn_relu"])
@pytest.mark.parametrize("build", ["one module", "layer by layer", "layer-normalised"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_recomputed_states_are_the_models_own(cell, build, dtype, tolerance):
    """The gates come from a step written out by hand; its h (and c) at every position of the top
    layer and at the end of every layer equal nn.LSTM / nn.GRU's (or LayerNormRNN's): to 1e-10 in
    float64 (the maths), to 1e-5 in float32 (the weights as trained; only the summation order
    differs)."""
    m = model(cell, layer_norm=build == "layer-normalised", locked=build == "layer by layer",
              scale=3.0 if dtype == torch.float64 else 1.0).to(dtype)
    ids = torch.randint(30, (60,), generator=torch.Generator().manual_seed(1))
    traces = trace_states(m, ids)
    with torch.no_grad():
        _, state, (out, _) = m._encode(ids[None], None)  # out: the top layer's h, (1, T, H)
    torch.testing.assert_close(traces[-1].h, out[0], atol=tolerance, rtol=tolerance)
    h_last = state[0] if cell == "lstm" else state  # (L, 1, H)
    for layer, trace in enumerate(traces):
        torch.testing.assert_close(trace.h[-1], h_last[layer, 0], atol=tolerance, rtol=tolerance)
        if cell == "lstm":
            torch.testing.assert_close(trace.c[-1], state[1][layer, 0], atol=tolerance, rtol=tolerance)
        assert set(trace.gates) == {"lstm": {"input", "forget", "output"}, "gru": {"reset", "update"}}.get(cell, set())
        assert all(v.shape == (60, 10) and 0 <= v.min() and v.max() <= 1 for v in trace.gates.values())


def test_gate_statistics_by_hand():
    values = torch.tensor([[0.04, 0.5], [0.96, 0.99], [0.04, 0.02], [0.5, 0.96]])  # 4 positions, 2 units
    stats = gate_statistics(values)
    assert stats["shut"] == [0.5, 0.25] and stats["open"] == [0.25, 0.5]
    assert stats["mean"] == pytest.approx(values.double().mean().item())
    # bins of 0.05: 0.02 and the two 0.04 in the first, the two 0.5 in the 11th, 0.99 and the two 0.96 in the last
    assert stats["histogram"][0] == stats["histogram"][-1] == pytest.approx(3 / 8)
    assert stats["histogram"][10] == pytest.approx(2 / 8) and sum(stats["histogram"]) == pytest.approx(1.0)
    assert time_constant(math.exp(-1 / 5)) == pytest.approx(5.0) and time_constant(1.0) is None


def test_rnn_and_feed_forward_models_have_no_gates():
    with pytest.raises(UserError, match="no gates"):
        trace_gates(model("rnn"), torch.arange(5))


def test_probe_gates_command(tiny_run, tmp_path):
    plot = tmp_path / "gates.png"
    result = CliRunner().invoke(app, ["probe", "gates", str(tiny_run), str(tiny_run), "--tokens", "300", "--plot",
                                      str(plot), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["layer"] for r in rows] == [0, 0] and rows[0]["tokens"] == 300 and rows[0]["keep_gate"] == "forget"
    assert len(rows[0]["gates"]["forget"]["shut"]) == 32 and plot.read_bytes().startswith(b"\x89PNG")
    assert rows[0]["time_constant"] == pytest.approx(-1 / math.log(rows[0]["mean_keep"]))
    table = CliRunner().invoke(app, ["probe", "gates", str(tiny_run), "--tokens", "100", "--plot", str(plot)])
    assert table.exit_code == 0 and "forget" in table.stdout
    bad = CliRunner().invoke(app, ["probe", "gates", str(tiny_run), "--tokens", "1"])
    assert bad.exit_code == 1 and "--tokens must be >= 2" in bad.stderr
