import math

import pytest
import torch

from lmrnn.errors import UserError
from lmrnn.sampling import Decoding, NgramBlocker, apply_repetition_penalty, filter_logits, pick_next

INF = float("-inf")
PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4])


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, value in enumerate(logits.tolist()) if value > INF]


def test_top_k_keeps_the_k_largest():
    assert filter_logits(torch.tensor([1.0, 3.0, 2.0, 0.0]), top_k=2).tolist() == [INF, 3.0, 2.0, INF]


@pytest.mark.parametrize("top_p, expected", [(0.49, [0]), (0.79, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_nucleus(top_p, expected):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    shuffled = torch.tensor([2, 0, 3, 1])  # the order of the vocabulary must not matter
    out = filter_logits(probs.log()[shuffled], top_p=top_p)
    assert sorted(shuffled[i].item() for i in kept(out)) == expected


@pytest.mark.parametrize("min_p, expected", [(0.2, [0, 1, 2, 3]), (0.3, [1, 2, 3]), (0.6, [2, 3]), (0.9, [3])])
def test_min_p_keeps_tokens_within_a_factor_of_the_best(min_p, expected):
    # p_max = 0.4: the thresholds are 0.08, 0.12, 0.24, 0.36
    assert kept(filter_logits(PROBS.log(), min_p=min_p)) == expected


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_no_repeat_ngram_bans_the_tokens_that_would_repeat_an_ngram():
    blocker = NgramBlocker(3, [[5, 6, 7, 5, 6], [1, 2]])
    out = blocker.ban(torch.zeros(2, 9))
    assert kept(out[0]) == [0, 1, 2, 3, 4, 5, 6, 8]  # "5 6" was followed by 7
    assert kept(out[1]) == list(range(9))
    blocker.append([8, 3])  # rows: 5 6 7 5 6 8 | 1 2 3
    assert kept(blocker.ban(torch.zeros(2, 9))[0]) == list(range(9))  # "6 8" is new
    blocker.reorder([0, 0])  # both rows now continue row 0
    blocker.append([5, 7])  # 5 6 7 5 6 8 5 -> "8 5" new; ... 8 7 -> "8 7" new
    blocker.append([6, 5])  # ... 8 5 6 -> "5 6" seen before 7 and 8; ... 8 7 5 -> "7 5" seen before 6
    out = blocker.ban(torch.zeros(2, 9))
    assert kept(out[0]) == [0, 1, 2, 3, 4, 5, 6] and kept(out[1]) == [0, 1, 2, 3, 4, 5, 7, 8]
    assert kept(NgramBlocker(1, [[2, 4]]).ban(torch.zeros(1, 5))[0]) == [0, 1, 3]


def test_greedy_top_k_1_and_tiny_top_p_pick_the_argmax():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    argmax = logits.argmax(dim=-1)
    assert torch.equal(pick_next(logits, Decoding(temperature=0)), argmax)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(pick_next(logits, Decoding(top_k=1), generator), argmax)
    assert torch.equal(pick_next(logits, Decoding(top_p=1e-9, temperature=1.5), generator), argmax)


def test_a_tiny_temperature_is_greedy_not_nan():
    """logits / 1e-40 overflowed to +-inf, whose softmax is NaN, and the draw fell on the last id."""
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 10
    logits[:, 3] = INF  # a banned token stays banned
    picked = pick_next(logits, Decoding(temperature=1e-40, top_p=0.9), torch.Generator().manual_seed(1))
    assert torch.equal(picked, logits.argmax(dim=-1))


@pytest.mark.parametrize("decoding, expected", [
    (Decoding(), [0.1, 0.2, 0.3, 0.4]),
    (Decoding(temperature=0.5), [1 / 30, 4 / 30, 9 / 30, 16 / 30]),  # p^2, renormalised
    (Decoding(top_k=2), [0, 0, 3 / 7, 4 / 7]),
    (Decoding(top_p=0.65), [0, 0, 3 / 7, 4 / 7]),  # 0.4 < 0.65 <= 0.4 + 0.3
    (Decoding(min_p=0.6), [0, 0, 3 / 7, 4 / 7]),  # threshold 0.24
    (Decoding(top_k=3, top_p=0.55), [0, 0, 3 / 7, 4 / 7]),  # top-3 renormalised: 2/9, 3/9, 4/9
])
def test_sampling_frequencies_match_the_expected_distribution(decoding, expected):
    """20,000 draws in one batch; each frequency within 4.5 standard errors (a chance failure
    rate below 1e-4 per test)."""
    n = 20_000
    draws = pick_next(PROBS.log().expand(n, -1), decoding, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=4).double() / n
    for frequency, p in zip(frequencies.tolist(), expected):
        assert abs(frequency - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12, (frequencies, expected)


def test_same_seed_same_draws_different_seed_different_draws():
    logits = torch.randn(8, 50)

    def draw(seed):
        return pick_next(logits, Decoding(top_k=20, top_p=0.9), torch.Generator().manual_seed(seed)).tolist()
    assert draw(5) == draw(5) and draw(5) != draw(6)


@pytest.mark.parametrize("options, message", [
    ({"temperature": -0.5}, "--temperature must be >= 0"),
    ({"temperature": math.nan}, "--temperature must be >= 0"),
    ({"top_k": -1}, "--top-k must be >= 0"),
    ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
    ({"min_p": 1.0}, "--min-p must be in [0, 1)"),
    ({"repetition_penalty": 0.0}, "--repetition-penalty must be > 0"),
    ({"no_repeat_ngram": -2}, "--no-repeat-ngram must be >= 0"),
    ({"max_new_tokens": 0}, "--max-new-tokens must be >= 1"),
    ({"num_samples": 0}, "--num-samples must be >= 1"),
    ({"beams": 4, "top_k": 5}, "does not combine with --top-k"),
    ({"beams": 4, "temperature": 0}, "does not combine with --temperature"),
    ({"beams": 4, "num_samples": 2}, "does not combine with --num-samples"),
    ({"beams": 2, "num_return": 3}, "needs at least as many --beams"),
    ({"num_return": 2}, "--num-return needs --beams > 1"),
    ({"length_penalty": 0.5}, "applies to beam search only"),
    ({"temperature": 0, "num_samples": 4}, "identical texts"),
])
def test_options_out_of_range_or_that_cannot_combine(options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Decoding(**options)


def test_options_that_combine():
    assert Decoding(beams=4, num_return=4, repetition_penalty=1.2, no_repeat_ngram=3, length_penalty=0.6).batch_size == 4
    assert Decoding(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, num_samples=8).batch_size == 8


def nucleus_by_hand(logits: torch.Tensor, top_p: float) -> set[int]:
    """The definition, one token at a time: most likely first until the mass reaches top_p."""
    probs = logits.double().softmax(dim=-1).tolist()
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0])  # flat (nucleus beyond the 256 candidates) to peaked
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_equals_the_definition_on_large_vocabularies(scale, top_p):
    logits = torch.randn(3, 2000, generator=torch.Generator().manual_seed(7)) * scale
    out = filter_logits(logits, top_p=top_p)
    for row in range(3):
        assert set(kept(out[row])) == nucleus_by_hand(logits[row], top_p)
        assert out[row][out[row] > INF].tolist() == logits[row][out[row] > INF].tolist()  # kept values unchanged
