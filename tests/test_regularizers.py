import pytest
import torch
import torch.nn.functional as F

from lmrnn.config import ModelConfig
from lmrnn.models import RNNLM
from lmrnn.regularizers import LockedDropout, activation_penalty, embedding_dropout, weight_dropped_call

AWD = dict(dropout=0.4, locked_dropout=True, embedding_dropout=0.2, weight_drop=0.5)


def test_locked_dropout_is_one_mask_per_sequence_scaled_by_the_keep_rate():
    x = torch.randn(3, 50, 8).abs() + 0.1  # no zeros of its own
    drop = LockedDropout(0.25)
    assert drop.eval()(x) is x
    torch.manual_seed(7)
    y = drop.train()(x)
    torch.manual_seed(7)
    mask = torch.empty(3, 1, 8).bernoulli_(0.75)  # the draw it makes, by hand
    torch.testing.assert_close(y, x * mask / 0.75)
    kept = y != 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept))  # the same units at every step
    big = LockedDropout(0.25).train()(torch.ones(400, 1, 500))
    assert abs(big.mean().item() - 1.0) < 0.01  # expectation kept


def test_embedding_dropout_drops_word_types_everywhere_in_the_batch():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(20, 4)
    ids = torch.randint(0, 20, (4, 30))
    assert torch.equal(embedding_dropout(embedding, ids, 0.5, training=False), embedding(ids))
    torch.manual_seed(3)
    out = embedding_dropout(embedding, ids, 0.5, training=True)
    torch.manual_seed(3)
    rows = torch.empty(20, 1).bernoulli_(0.5)  # Merity's embedded_dropout: mask the (V, E) matrix
    torch.testing.assert_close(out, F.embedding(ids, embedding.weight * rows / 0.5))
    dropped = {int(i) for i in ids[out.abs().sum(-1) == 0]}
    assert dropped and not dropped & {int(i) for i in ids[out.abs().sum(-1) != 0]}  # a type is all in or all out


def test_weight_drop_masks_only_the_recurrent_matrices_and_only_in_training():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    before = {k: v.clone() for k, v in lstm.state_dict().items()}
    x = torch.randn(2, 7, 3)
    by_hand = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    by_hand.load_state_dict(before)
    torch.manual_seed(11)
    out, _ = weight_dropped_call(lstm, 0.5, x, None)
    torch.manual_seed(11)
    with torch.no_grad():  # the same draws in the same order: weight_hh_l0, then weight_hh_l1
        by_hand.weight_hh_l0.copy_(F.dropout(by_hand.weight_hh_l0, 0.5))
        by_hand.weight_hh_l1.copy_(F.dropout(by_hand.weight_hh_l1, 0.5))
    torch.testing.assert_close(out, by_hand(x)[0])
    assert all(torch.equal(v, before[k]) for k, v in lstm.state_dict().items())  # the parameters are untouched
    out.sum().backward()
    assert lstm.weight_hh_l0.grad.abs().sum() > 0 and lstm.weight_ih_l0.grad.abs().sum() > 0
    # the raw matrix's gradient is zero exactly where the mask dropped
    assert torch.equal(lstm.weight_hh_l0.grad == 0, by_hand.weight_hh_l0 == 0)


def test_weight_drop_gives_new_recurrent_weights_per_batch_in_training_and_none_in_eval():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="gru", vocab_size=13, embedding_dim=6, hidden_size=6, num_layers=2,
                              dropout=0.0, weight_drop=0.5))
    plain = RNNLM(ModelConfig(cell="gru", vocab_size=13, embedding_dim=6, hidden_size=6, num_layers=2, dropout=0.0))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 13, (2, 9))
    model.train()
    first, second = model(ids)[0], model(ids)[0]
    assert not torch.allclose(first, second)  # a new mask per call
    assert not torch.allclose(first, plain.train()(ids)[0])
    torch.testing.assert_close(model.eval()(ids)[0], plain.eval()(ids)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_every_regulariser_is_a_no_op_in_evaluation(cell, layer_norm):
    """Evaluation sees the weights as trained: the fully regularised model in eval mode equals
    the same weights with every rate at 0."""
    torch.manual_seed(0)
    kw = dict(cell=cell, vocab_size=17, embedding_dim=8, hidden_size=8, num_layers=3, layer_norm=layer_norm)
    model = RNNLM(ModelConfig(**kw, **AWD))
    plain = RNNLM(ModelConfig(**kw, locked_dropout=True, dropout=0.0))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 17, (3, 11))
    a, state_a = model.eval()(ids)
    b, state_b = plain.eval()(ids)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(state_a, state_b)
    assert not torch.allclose(model.train()(ids)[0], a)


def test_activations_are_the_top_layer_before_and_after_its_dropout():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(cell="lstm", vocab_size=17, embedding_dim=8, hidden_size=8, num_layers=2, **AWD)).train()
    ids = torch.randint(0, 17, (2, 6))
    torch.manual_seed(5)
    logits, hidden, (raw, dropped) = model(ids, activations=True)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], raw[kept] / 0.6)  # locked dropout 0.4 on the top layer's output
    torch.testing.assert_close(raw[:, -1], hidden[0][-1])  # the top layer's h
    torch.testing.assert_close(logits, model.decoder(dropped))  # tied, E = H: no projection


def test_activation_penalty_by_hand():
    raw = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [3.0, 4.0]]])  # (B=1, T=3, H=2)
    dropped = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [6.0, 0.0]]])
    # AR: mean of squares of dropped = (4 + 36) / 6; TAR: steps (2, -2), (0, 4): (4 + 4 + 0 + 16) / 4
    assert activation_penalty(raw, dropped, ar=2.0, tar=0.0).item() == pytest.approx(2 * 40 / 6)
    assert activation_penalty(raw, dropped, ar=0.0, tar=0.5).item() == pytest.approx(0.5 * 24 / 4)
    assert activation_penalty(raw, dropped, ar=2.0, tar=0.5).item() == pytest.approx(2 * 40 / 6 + 0.5 * 6)
    assert activation_penalty(raw[:, :1], dropped[:, :1], ar=0.0, tar=1.0).item() == 0.0  # one step: no change
