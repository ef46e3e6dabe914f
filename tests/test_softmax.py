import math

import pytest
import torch
import torch.nn.functional as F

import lmrnn.softmax as softmax
from lmrnn.config import ModelConfig
from lmrnn.errors import UserError
from lmrnn.models import RNNLM, count_parameters
from lmrnn.softmax import IGNORE_INDEX, AdaptiveSoftmax, FullSoftmax, adaptive_parameters


@pytest.fixture(params=[1 << 24, 7 * 13], ids=["one chunk", "chunks of 7 rows"])
def chunked(request, monkeypatch):
    monkeypatch.setattr(softmax, "CHUNK_ELEMENTS", request.param)  # V = 13 below


def problem(bias=True):
    torch.manual_seed(0)
    decoder = FullSoftmax(5, 13, bias=bias)
    features = torch.randn(3, 8, 5, requires_grad=True)  # (B, T, D): 24 rows
    targets = torch.randint(0, 13, (3, 8))
    targets[1, 3] = targets[2, 7] = IGNORE_INDEX
    return decoder, features, targets


@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_loss_and_its_gradients_equal_cross_entropy(chunked, bias):
    decoder, features, targets = problem(bias)
    loss = decoder.nll(features, targets)
    (loss * 3).backward()  # a scaled loss: backward multiplies the gradients taken in forward
    got = [features.grad, *(p.grad for p in decoder.parameters())]
    features.grad = None
    decoder.zero_grad()
    expected = F.cross_entropy(decoder(features).flatten(0, 1), targets.flatten())  # 22 counted targets
    (expected * 3).backward()
    torch.testing.assert_close(loss, expected)
    for g, e in zip(got, [features.grad, *(p.grad for p in decoder.parameters())]):
        torch.testing.assert_close(g, e)


def test_padding_is_the_id_the_data_pads_with():
    from lmrnn import data

    assert IGNORE_INDEX == data.IGNORE_INDEX == -100  # models may not import the corpus module


def test_per_token_nll_matches_by_hand_and_ignores_padding(chunked):
    decoder, features, targets = problem()
    with torch.inference_mode():
        nll = decoder.nll(features, targets, reduction="none")
        logits = decoder(features)
    assert nll.shape == (3, 8) and nll.dtype == torch.float32
    b, t = 0, 2
    by_hand = math.log(sum(math.exp(v) for v in logits[b, t].tolist())) - logits[b, t, targets[b, t]].item()
    assert nll[b, t].item() == pytest.approx(by_hand, rel=1e-5)
    assert nll[1, 3] == 0 and nll[2, 7] == 0
    torch.testing.assert_close(nll.sum() / 22, decoder.nll(features.detach(), targets))  # mean over counted targets


def test_under_bf16_autocast_the_fused_loss_is_close_and_gradients_stay_float32():
    decoder, features, targets = problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = decoder.nll(features, targets)
        expected = F.cross_entropy(decoder(features).float().flatten(0, 1), targets.flatten())
    loss.backward()
    assert loss.dtype == torch.float32 and decoder.weight.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)


def test_adaptive_softmax_is_a_normalised_distribution_in_id_order():
    torch.manual_seed(0)
    V = 100
    adaptive = AdaptiveSoftmax(16, V)
    counts = torch.arange(V).float()  # id 99 is the most frequent, id 0 the least
    adaptive.set_frequencies(counts)
    assert adaptive.rank[99] == 0 and adaptive.rank[0] == V - 1
    assert adaptive.adaptive.cutoffs == [6, 25, V]  # head: the 6 most frequent + 2 cluster entries
    features = torch.randn(2, 5, 16)
    log_probs = adaptive(features)
    assert log_probs.shape == (2, 5, V)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5))
    targets = torch.tensor([[99, 0, 50, 94, 3], [1, 2, 98, 97, IGNORE_INDEX]])
    nll = adaptive.nll(features, targets, reduction="none")
    expected = -log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expected[1, 4] = 0
    torch.testing.assert_close(nll, expected)
    torch.testing.assert_close(adaptive.nll(features, targets), expected.sum() / 9)
    # a head token costs only the head: its log-probability is the head's log-softmax entry
    head = torch.log_softmax(adaptive.adaptive.head(features[0, 0]), -1)
    assert log_probs[0, 0, 99].item() == pytest.approx(head[0].item(), abs=1e-6)


def test_adaptive_softmax_parameters_are_counted_and_sizes_checked():
    adaptive = AdaptiveSoftmax(64, 1000)
    assert sum(p.numel() for p in adaptive.parameters()) == adaptive_parameters(64, 1000)
    cfg = ModelConfig(vocab_size=300, embedding_dim=32, hidden_size=48, output="adaptive", tie_weights=False)
    assert RNNLM(cfg).num_parameters() == count_parameters(cfg)
    with pytest.raises(UserError, match="at least 64 tokens"):
        AdaptiveSoftmax(64, 40)
    with pytest.raises(UserError, match="set model.tie_weights=false"):
        ModelConfig(output="adaptive")


def test_an_rnnlm_trains_through_either_output():
    for output in ("softmax", "adaptive"):
        torch.manual_seed(0)
        model = RNNLM(ModelConfig(vocab_size=80, embedding_dim=16, hidden_size=16, num_layers=1, dropout=0.0,
                                  output=output, tie_weights=output == "softmax"))
        ids = torch.randint(0, 80, (4, 9))
        loss, _ = model(ids[:, :-1], targets=ids[:, 1:])
        logits, _ = model(ids[:, :-1])
        expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())  # log-probs are logits too
        torch.testing.assert_close(loss, expected)
        nll, _ = model.token_nll(ids[:, :-1], ids[:, 1:])
        torch.testing.assert_close(nll.mean(), expected)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
