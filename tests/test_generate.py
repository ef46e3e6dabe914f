import logging
import math

import pytest
import torch

from lmrnn.errors import UserError
from lmrnn.generate import check_sampling, filter_logits, generate_text, sample_next

INF = float("-inf")


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_next(logits, 0.0).tolist() == [1, 0]


def test_top_k_keeps_the_k_largest():
    assert filter_logits(torch.tensor([1.0, 3.0, 2.0, 0.0]), top_k=2).tolist() == [INF, 3.0, 2.0, INF]


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    shuffled = torch.tensor([2, 0, 3, 1])  # the order of the vocabulary must not matter
    out = filter_logits(probs.log()[shuffled], top_p=top_p)
    kept_ids = sorted(shuffled[i].item() for i in range(4) if out[i] > INF)
    assert kept_ids == kept


def test_sampling_follows_the_tempered_distribution():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 1/4, 3/4 at T = 1
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, generator) for _ in range(4000)])
    assert abs(draws.float().mean().item() - 0.75) < 0.03
    draws = torch.stack([sample_next(logits, 2.0, generator) for _ in range(4000)])  # 3^(1/2): p = 0.634
    assert abs(draws.float().mean().item() - math.sqrt(3) / (1 + math.sqrt(3))) < 0.03


def test_same_seed_same_draws():
    logits = torch.randn(1, 50)
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample_next(logits, 1.0, g, top_k=20, top_p=0.9).item() for _ in range(30)]
    assert draw(5) == draw(5) and draw(5) != draw(6)


@pytest.mark.parametrize("args, message", [
    ((-0.5, 0, 1.0, 10), "--temperature must be >= 0"),
    ((1.0, -1, 1.0, 10), "--top-k must be >= 0"),
    ((1.0, 0, 0.0, 10), "--top-p must be in"),
    ((1.0, 0, 1.5, 10), "--top-p must be in"),
    ((1.0, 0, 1.0, -1), "--max-new-tokens must be >= 0"),
])
def test_out_of_range_options(args, message):
    with pytest.raises(UserError, match=message):
        check_sampling(*args)


def test_generation_from_a_trained_run(tiny_run, caplog):
    greedy = generate_text(tiny_run, "the king", max_new_tokens=20, temperature=0)
    assert greedy.startswith("the king") and greedy == generate_text(tiny_run, "the king", 20, temperature=0)
    a = generate_text(tiny_run, "the fox", 30, temperature=1.0, seed=3, stop_at_eos=False)
    assert a == generate_text(tiny_run, "the fox", 30, temperature=1.0, seed=3, stop_at_eos=False)
    assert generate_text(tiny_run, "the fox", 0) == "the fox"
    with caplog.at_level(logging.INFO):
        text = generate_text(tiny_run, "", 15, temperature=0.8, seed=1)
    assert "empty prompt" in caplog.text and isinstance(text, str)
