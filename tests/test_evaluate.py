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


def split(n=101, words=40, n_bytes=250) -> Split:
    ids = np.random.default_rng(0).integers(0, V, n).astype(np.uint16)
    return Split(ids, words, n_bytes)


def test_uniform_logits_give_perplexity_exactly_v():
    s = split()
    nll, tokens = score_split(model(uniform=True), s, batch_size=3, bptt=7)
    assert tokens == 100
    assert nll == pytest.approx(100 * math.log(V), rel=1e-6)  # float32 log-softmax
    f = figures(nll, s)
    assert f["ppl"] == pytest.approx(V, rel=1e-6)
    assert f["word_ppl"] == pytest.approx(V ** (100 / 40), rel=1e-6)
    assert f["bits_per_byte"] == pytest.approx(100 * math.log2(V) / 250, rel=1e-6)


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
