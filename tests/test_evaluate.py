import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmrnn.config import ModelConfig
from lmrnn.data import Split
from lmrnn.evaluate import figures, score_split
from lmrnn.models import RNNLM

V = 13


def model(uniform=False) -> RNNLM:
    torch.manual_seed(1)
    m = RNNLM(ModelConfig(cell="lstm", vocab_size=V, embedding_dim=8, hidden_size=8, num_layers=2, dropout=0.3,
                          tie_weights=False))
    if uniform:
        with torch.no_grad():
            m.decoder.weight.zero_()
            m.decoder.bias.zero_()
    return m


def split(n=101, words=40, n_bytes=250, characters=240) -> Split:
    ids = np.random.default_rng(0).integers(0, V, n).astype(np.uint16)
    return Split(ids, words, n_bytes, characters)


def test_uniform_logits_give_perplexity_exactly_v():
    s = split()
    nll, tokens = score_split(model(uniform=True), s, batch_size=3, bptt=7)
    assert tokens == 100
    assert nll == pytest.approx(100 * math.log(V), rel=1e-6)  # float32 log-softmax
    f = figures(nll, s)
    assert f["ppl"] == pytest.approx(V, rel=1e-6)
    assert f["word_ppl"] == pytest.approx(V ** (100 / 40), rel=1e-6)
    assert f["bits_per_byte"] == pytest.approx(100 * math.log2(V) / 250, rel=1e-6)
    assert f["bits_per_char"] == pytest.approx(100 * math.log2(V) / 240, rel=1e-6)


@pytest.mark.parametrize("bptt", [1, 4, 100, 1000])
def test_batch_of_one_equals_one_pass_over_the_split(bptt):
    """Carried state + token-weighted sum = the NLL of the whole sequence read at once."""
    m, s = model(), split()
    nll, tokens = score_split(m, s, batch_size=1, bptt=bptt)
    ids = torch.from_numpy(s.ids.astype(np.int64))
    m.eval()
    with torch.no_grad():
        logits, _ = m(ids[None, :-1])
    expected = F.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    assert tokens == 100 and nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 64, 200])
def test_every_token_counted_once_for_any_batch_size(batch_size):
    nll, tokens = score_split(model(uniform=True), split(), batch_size=batch_size, bptt=5)
    assert tokens == 100 and nll == pytest.approx(100 * math.log(V), rel=1e-6)  # float32 log-softmax


def test_evaluation_restores_training_mode_and_is_deterministic():
    m = model()
    m.train()
    a = score_split(m, split(), 4, 6)
    assert m.training
    assert score_split(m, split(), 4, 6) == a  # dropout off during evaluation


def test_scoring_rows_by_hand():
    """Stream e a b c d f g h i (ids 0..8), N = 8 pairs, B = 3 rows of L = 3, burn-in K = 2."""
    from lmrnn.data import IGNORE_INDEX as I
    from lmrnn.evaluate import scoring_rows

    x, y, starts = scoring_rows(np.arange(9), batch_size=3, burn_in=2)
    # row 0: two columns of padding (x = ids[0]) then pairs 0..2; row 1 reads pairs 1, 2 first
    assert x.tolist() == [[0, 0, 0, 1, 2], [1, 2, 3, 4, 5], [4, 5, 6, 7, 0]]
    assert y.tolist() == [[I, I, 1, 2, 3], [I, I, 4, 5, 6], [I, I, 7, 8, I]]
    assert starts.tolist() == [2, 0, 0]  # row 0's text begins at column 2: its state restarts there
    x, y, starts = scoring_rows(np.arange(9), batch_size=3, burn_in=5)  # more burn-in than text before rows 0, 1
    assert starts.tolist() == [5, 2, 0]
    assert x[1, 2:].tolist() == [0, 1, 2, 3, 4, 5] and y[1].tolist() == [I] * 5 + [4, 5, 6]
    assert (y != I).sum() == 8  # every target once
    x0, y0, s0 = scoring_rows(np.arange(9), batch_size=3, burn_in=0)
    assert x0.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 0]] and s0.tolist() == [0, 0, 0]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "ffnn"])
@pytest.mark.parametrize("batch_size", [2, 3, 7, 32])
def test_burn_in_over_the_whole_prefix_equals_one_stream(cell, batch_size):
    """With a burn-in as long as the split, each row reads everything before it from the start
    of the stream and the zero state: the figure is single-stream scoring's, for any batch."""
    from lmrnn.models import build_model

    torch.manual_seed(2)
    m = build_model(ModelConfig(cell=cell, vocab_size=V, embedding_dim=8, hidden_size=8, num_layers=2, dropout=0.3,
                                context=3))
    with torch.no_grad():  # larger weights: a state that carries much from token to token
        for p in m.parameters():
            p.mul_(5)
    s = split()
    one, _ = score_split(m, s, batch_size=1, bptt=7)
    assert score_split(m, s, 32, 7)[0] != pytest.approx(one, rel=1e-3)  # rows from the zero state differ
    nll, tokens = score_split(m, s, batch_size, bptt=7, burn_in=len(s.ids))
    assert tokens == 100 and nll == pytest.approx(one, rel=2e-6)  # measured: 5e-7 at most
    for burn_in in (5, 13, 40):  # any burn-in still scores every target once
        assert score_split(model(uniform=True), s, batch_size, bptt=6, burn_in=burn_in) == \
            (pytest.approx(100 * math.log(V), rel=1e-6), 100)
