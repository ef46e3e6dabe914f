import pytest
import torch

from lmrnn.config import ModelConfig
from lmrnn.models import RNNLM, build_model, count_parameters, detach_hidden

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


LAYOUTS = [{}, {"locked_dropout": True}, {"layer_norm": True}]  # one stacked module; a layer at a time


@pytest.mark.parametrize("layout", LAYOUTS, ids=["stacked", "per-layer", "layer-norm"])
@pytest.mark.parametrize("cell", CELLS)
def test_carrying_the_state_across_windows_equals_one_pass(cell, layout):
    """What truncated BPTT relies on: windows with the carried state give the logits of one
    forward pass over the whole sequence."""
    model = tiny(cell, **layout).eval()
    ids = torch.randint(0, 11, (2, 12))
    whole, _ = model(ids)
    first, hidden = model(ids[:, :5])
    second, _ = model(ids[:, 5:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["stacked", "per-layer", "layer-norm"])
def test_lstm_forget_gate_bias_starts_at_one(layout):
    model = tiny("lstm", **layout)
    for layer in range(2):
        if layout.get("layer_norm"):  # the bias lives in the input-side norm
            b_ih, b_hh = model.layers[layer].norm_ih.bias, torch.zeros(24)
        elif layout:
            b_ih, b_hh = model.layers[layer].bias_ih_l0, model.layers[layer].bias_hh_l0
        else:
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


@pytest.mark.parametrize("cell", ["lstm", "gru", "ffnn"])
def test_embedding_scale_multiplies_the_inputs_and_not_the_tied_decoder(cell):
    """Scale s on embedding E reads the inputs of embedding s*E; the tied decoder keeps E."""
    def build(scale):
        torch.manual_seed(0)
        return build_model(ModelConfig(cell=cell, vocab_size=11, embedding_dim=6, hidden_size=6, num_layers=2,
                                       dropout=0.0, tie_weights=False, embedding_scale=scale)).eval()
    scaled, plain = build(4.0), build(1.0)
    with torch.no_grad():
        plain.embedding.weight.mul_(4.0)
    ids = torch.randint(0, 11, (2, 7))
    torch.testing.assert_close(scaled(ids)[0], plain(ids)[0])
    tied = build_model(ModelConfig(cell=cell, vocab_size=11, embedding_dim=6, hidden_size=6, embedding_scale=4.0))
    assert tied.decoder.weight is tied.embedding.weight


def test_detach_hidden_keeps_values_and_cuts_the_graph():
    model = tiny("lstm")
    _, hidden = model(torch.randint(0, 11, (1, 4)))
    assert hidden[0].requires_grad
    cut = detach_hidden(hidden)
    assert not cut[0].requires_grad and torch.equal(cut[1], hidden[1])
    assert detach_hidden(None) is None


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("tie,layers,embedding,hidden", [(True, 1, 16, 16), (True, 3, 16, 40), (False, 2, 24, 16)])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_count_parameters_without_building(cell, tie, layers, embedding, hidden, layer_norm):
    cfg = ModelConfig(cell=cell, tie_weights=tie, num_layers=layers, embedding_dim=embedding, hidden_size=hidden,
                      vocab_size=50, layer_norm=layer_norm)
    assert count_parameters(cfg) == RNNLM(cfg).num_parameters()


def test_next_token_logits_equal_forward_at_the_last_position():
    for cell, hidden in (("lstm", 24), ("gru", 16)):  # with and without the tied projection
        model = RNNLM(ModelConfig(cell=cell, embedding_dim=16, hidden_size=hidden, vocab_size=30)).eval()
        ids = torch.randint(0, 30, (2, 7))
        logits, state = model(ids)
        torch.testing.assert_close(model.next_token_logits(state), logits[:, -1])


@pytest.mark.parametrize("tie, hidden, layers", [(True, 16, 1), (True, 24, 2), (False, 16, 2)])
def test_feed_forward_parameter_count(tie, hidden, layers):
    cfg = ModelConfig(cell="ffnn", vocab_size=50, embedding_dim=16, hidden_size=hidden, num_layers=layers,
                      context=4, tie_weights=tie)
    assert build_model(cfg).num_parameters() == count_parameters(cfg)


def test_feed_forward_sees_exactly_its_n_previous_tokens_across_windows():
    """Exact evaluation in windows (the last N tokens carried) equals scoring each position alone
    from its own N-token context, computed one position at a time."""
    from lmrnn.evaluate import token_nll

    torch.manual_seed(0)
    N = 3
    model = build_model(ModelConfig(cell="ffnn", vocab_size=13, embedding_dim=8, hidden_size=16, num_layers=2,
                                    context=N, dropout=0.0, tie_weights=False)).eval()
    stream = torch.randint(0, 13, (1, 41))
    x, y = stream[:, :-1], stream[:, 1:]
    windowed = token_nll(model, x, y, bptt=7)[0]  # (40,)
    with torch.no_grad():
        for p in range(40):
            context = x[:, max(0, p - N + 1):p + 1]  # at most N tokens, ending at the input token p
            logits, _ = model(context)
            expected = -logits[0, -1].log_softmax(dim=-1)[y[0, p]]
            assert windowed[p].item() == pytest.approx(expected.item(), abs=1e-5)
    # and only those N: changing an older token changes nothing
    changed = x.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 13
    after = token_nll(model, changed, y, bptt=7)[0]
    assert torch.equal(after[14:], windowed[14:]) and not torch.equal(after[10:13], windowed[10:13])
