import itertools
import math

import pytest
import torch

from lmrnn.beam import beam_search
from lmrnn.config import ModelConfig
from lmrnn.models import RNNLM
from lmrnn.sampling import Decoding

EOS = 1


def tiny_model(vocab_size: int, seed: int) -> RNNLM:
    """Random weights large enough that the distributions are far from uniform."""
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(cell="gru", embedding_dim=6, hidden_size=8, num_layers=1, dropout=0.0,
                              tie_weights=False, vocab_size=vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    return model.eval()


def sequence_logprob(model: RNNLM, context: list[int], tokens: list[int]) -> float:
    """log p(tokens | context) by re-reading the whole sequence: independent of the search's carried states."""
    with torch.inference_mode():
        logits, _ = model(torch.tensor([context + tokens]))
        logprobs = logits[0].log_softmax(dim=-1)
    return sum(logprobs[len(context) - 1 + i, token].item() for i, token in enumerate(tokens))


def exhaustive(model: RNNLM, context: list[int], vocab_size: int, max_len: int, alpha: float) -> list[tuple[float, list[int]]]:
    """Every hypothesis beam search may return: ends with eos, or reaches max_len; best first."""
    hypotheses = []
    for length in range(1, max_len + 1):
        for tokens in itertools.product(range(vocab_size), repeat=length):
            if EOS in tokens[:-1] or (length < max_len and tokens[-1] != EOS):
                continue
            hypotheses.append((sequence_logprob(model, context, list(tokens)) / length ** alpha, list(tokens)))
    return sorted(hypotheses, reverse=True)


def search(model: RNNLM, context: list[int], **options):
    with torch.inference_mode():
        logits, hidden = model(torch.tensor([context]))
        return beam_search(model, logits[:, -1], hidden, context, Decoding(**options), EOS)


def greedy(model: RNNLM, context: list[int], max_len: int) -> list[int]:
    tokens = []
    while len(tokens) < max_len and (not tokens or tokens[-1] != EOS):
        with torch.inference_mode():
            tokens.append(model(torch.tensor([context + tokens]))[0][0, -1].argmax().item())
    return tokens


@pytest.mark.parametrize("seed", range(4))
def test_one_beam_is_greedy(seed):
    model, context = tiny_model(5, seed), [EOS, 3, 2]
    [best] = search(model, context, beams=1, max_new_tokens=12)
    assert best.tokens == greedy(model, context, 12)
    assert best.logprob == pytest.approx(sequence_logprob(model, context, best.tokens), abs=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 2.0])
@pytest.mark.parametrize("seed", range(3))
def test_enough_beams_find_the_best_hypotheses_exactly(alpha, seed):
    """V = 3, at most 3 new tokens: 9 = V^2 beams never prune a prefix, so the search must return
    exactly the exhaustive ranking's best hypotheses, with their scores."""
    V, max_len = 3, 3
    model, context = tiny_model(V, seed), [EOS, 2]
    expected = exhaustive(model, context, V, max_len, alpha)
    found = search(model, context, beams=V ** (max_len - 1), num_return=5, max_new_tokens=max_len, length_penalty=alpha)
    assert [h.tokens for h in found] == [tokens for _, tokens in expected[:5]]
    for h, (score, _) in zip(found, expected):
        assert h.score == pytest.approx(score, abs=1e-4)
        assert h.logprob == pytest.approx(sequence_logprob(model, context, h.tokens), abs=1e-4)
        assert h.finish_reason == ("eos" if h.tokens[-1] == EOS else "length")


def test_beam_search_beats_greedy_where_greedy_is_myopic():
    """Over many random models, two beams never score below greedy, and sometimes above."""
    better = 0
    for seed in range(30):
        model, context = tiny_model(4, seed), [EOS, 2]
        g = greedy(model, context, 4)
        [best] = search(model, context, beams=2, max_new_tokens=4, length_penalty=0.0)
        greedy_logprob = sequence_logprob(model, context, g)
        assert best.score >= greedy_logprob - 1e-5
        better += best.score > greedy_logprob + 1e-3
    assert better > 0


def test_no_repeat_ngram_and_repetition_penalty_apply_to_beams():
    model, context = tiny_model(6, 0), [EOS, 2, 3]
    for h in search(model, context, beams=4, num_return=4, max_new_tokens=10, no_repeat_ngram=2):
        sequence = context + h.tokens
        bigrams = list(zip(sequence, sequence[1:]))
        assert len(bigrams) == len(set(bigrams)), sequence
    plain = search(model, context, beams=3, max_new_tokens=8)[0]
    penalised = search(model, context, beams=3, max_new_tokens=8, repetition_penalty=1e6)[0]
    # logprob is the model's own; the search score includes the penalty
    assert penalised.logprob == pytest.approx(sequence_logprob(model, context, penalised.tokens), abs=1e-4)
    repeats = sum(t in context + penalised.tokens[:i] for i, t in enumerate(penalised.tokens) if t != EOS)
    assert repeats <= sum(t in context + plain.tokens[:i] for i, t in enumerate(plain.tokens) if t != EOS)
    assert math.isfinite(penalised.score)


@pytest.mark.parametrize("seed", range(4))
def test_a_beam_whose_every_continuation_is_banned_leaves_the_search(seed):
    """Context [1, 2, 2, 1, 2, 0, 0], V = 3, no-repeat-ngram 2, eos 1: after 0, token 0 is banned;
    [2] is a dead end (1, 2 and 0 have all followed a 2), so [1] is the only hypothesis, whatever
    the model. Unfixed, the dead beam's NaN row outranked every real candidate."""
    found = search(tiny_model(3, seed), [1, 2, 2, 1, 2, 0, 0], beams=2, num_return=2, no_repeat_ngram=2,
                   max_new_tokens=5)
    assert [h.tokens for h in found] == [[1]] and found[0].finish_reason == "eos"
    assert all(math.isfinite(h.score) and math.isfinite(h.logprob) for h in found)


def test_a_search_where_every_beam_is_a_dead_end_returns_one_empty_hypothesis():
    # every token (eos too) has followed the context's last token 2
    [nothing] = search(tiny_model(3, 0), [2, 0, 2, 1, 2, 2], beams=3, num_return=2, no_repeat_ngram=2)
    assert (nothing.tokens, nothing.finish_reason, nothing.score) == ([], "no_allowed_token", None)
