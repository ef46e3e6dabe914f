import pytest
import torch

from lmrnn.config import ModelConfig
from lmrnn.models import RNNLM, detach_hidden

CELLS = ["rnn", "rnn_relu", "lstm", "gru"]


def tiny(cell="lstm", **kw) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(cell=cell, vocab_size=11, embedding_dim=6, hidden_size=6, num_layers=2, dropout=0.0, **kw))


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_are_batch_first(cell):
    model = tiny(cell)
    logits, hidden = model(torch.randint(0, 11, (3, 5)))
    assert logits.shape == (3, 5, 11)
    states = hidden if cell == "lstm" else (hidden,)
    assert len(states) == (2 if cell == "lstm" else 1)
    assert all(h.shape == (2, 3, 6) for h in states)  # (layers, B, H)


def test_cell_types_and_nonlinearity():
    assert isinstance(tiny("gru").rnn, torch.nn.GRU) and isinstance(tiny("lstm").rnn, torch.nn.LSTM)
    assert tiny("rnn").rnn.nonlinearity == "tanh" and tiny("rnn_relu").rnn.nonlinearity == "relu"


@pytest.mark.parametrize("cell", CELLS)
def test_carrying_the_state_across_windows_equals_one_pass(cell):
    """What truncated BPTT relies on: windows with the carried state give the logits of one
    forward pass over the whole sequence."""
    model = tiny(cell).eval()
    ids = torch.randint(0, 11, (2, 12))
    whole, _ = model(ids)
    first, hidden = model(ids[:, :5])
    second, _ = model(ids[:, 5:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_lstm_forget_gate_bias_starts_at_one():
    model = tiny("lstm")
    for layer in range(2):
        b_ih, b_hh = getattr(model.rnn, f"bias_ih_l{layer}"), getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.all(b_ih[6:12] + b_hh[6:12] == 1.0)  # gate order i, f, g, o; H = 6
        assert not torch.all(b_ih[:6] == 1.0)


def test_parameter_count_by_hand_with_and_without_tying():
    def count(tie):
        return RNNLM(ModelConfig(cell="lstm", vocab_size=10, embedding_dim=4, hidden_size=4, num_layers=1,
                                 dropout=0.0, tie_weights=tie)).num_parameters()
    lstm = 4 * 4 * (4 + 4) + 2 * 4 * 4  # four gates: W_ih, W_hh and two biases
    assert count(True) == 10 * 4 + lstm + 10  # embedding (shared with decoder) + decoder bias
    assert count(False) == 10 * 4 + lstm + 10 * 4 + 10


def test_tying_shares_the_matrix_and_projects_when_sizes_differ():
    model = tiny("gru", tie_weights=True)
    assert model.decoder.weight is model.embedding.weight and model.projection is None
    wide = RNNLM(ModelConfig(cell="gru", vocab_size=11, embedding_dim=4, hidden_size=8, tie_weights=True))
    assert wide.decoder.weight is wide.embedding.weight
    assert wide.projection.weight.shape == (4, 8)
    assert wide(torch.zeros(1, 3, dtype=torch.long))[0].shape == (1, 3, 11)


def test_detach_hidden_keeps_values_and_cuts_the_graph():
    model = tiny("lstm")
    _, hidden = model(torch.randint(0, 11, (1, 4)))
    assert hidden[0].requires_grad
    cut = detach_hidden(hidden)
    assert not cut[0].requires_grad and torch.equal(cut[1], hidden[1])
    assert detach_hidden(None) is None


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("tie,layers,embedding,hidden", [(True, 1, 16, 16), (True, 3, 16, 40), (False, 2, 24, 16)])
def test_count_parameters_without_building(cell, tie, layers, embedding, hidden):
    from lmrnn.models import count_parameters

    cfg = ModelConfig(cell=cell, tie_weights=tie, num_layers=layers, embedding_dim=embedding, hidden_size=hidden, vocab_size=50)
    assert count_parameters(cfg) == RNNLM(cfg).num_parameters()


def test_next_token_logits_equal_forward_at_the_last_position():
    for cell, hidden in (("lstm", 24), ("gru", 16)):  # with and without the tied projection
        model = RNNLM(ModelConfig(cell=cell, embedding_dim=16, hidden_size=hidden, vocab_size=30)).eval()
        ids = torch.randint(0, 30, (2, 7))
        logits, state = model(ids)
        torch.testing.assert_close(model.next_token_logits(state), logits[:, -1])
