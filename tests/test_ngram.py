import collections
import json
import math

import numpy as np
import pytest

from lmrnn.ngram import KneserNey, discounts, sentence_starts
from tests.conftest import SHARED_CORPORA

E, A, B, C = 1, 2, 3, 4  # eos and three words; id 0 (unknown) never occurs
V = 5


def test_sentence_starts_point_at_the_last_eos_before_each_position():
    ids = np.array([E, A, B, E, C, E])
    assert sentence_starts(ids, E).tolist() == [0, 0, 0, 0, 3, 3]


def test_discounts_are_chen_and_goodmans_closed_form():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [7] * 3)  # n1..n4 = 10, 4, 2, 1
    y = 10 / (10 + 2 * 4)
    expected = [0.0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2]
    assert discounts(counts) == pytest.approx(expected)
    assert discounts(np.array([1, 1, 2])) == pytest.approx([0, 0.5, 0.5, 0.5])  # no n3, n4: one discount Y


def test_the_top_order_discounts_come_from_its_raw_count_of_counts():
    rng = np.random.default_rng(0)
    ids = np.concatenate([[E]] + [np.append(rng.integers(2, 9, rng.integers(3, 12)), E) for _ in range(400)])
    model = KneserNey.fit(ids, 3, 10, E)
    starts = sentence_starts(ids, E)
    trigrams = collections.Counter(tuple(ids[p - 2:p + 1]) for p in range(1, len(ids)) if p - 2 >= starts[p])
    assert model.levels[2].discounts == pytest.approx(discounts(np.array(list(trigrams.values()))))
    assert model.levels[2].counts.sum() == sum(trigrams.values())


def test_probabilities_on_a_tiny_corpus_by_hand():
    """Sentences "a b", "a c", "b a"; a bigram model.
    Bigram counts: <s>a 2, ab 1, b</s> 1, ac 1, c</s> 1, <s>b 1, ba 1, a</s> 1: n1 = 7, n2 = 1, no n3, so
    one discount D = 7/9. Unigram continuation counts (distinct left neighbours, <s> included):
    a 2 (<s>, b), b 2 (<s>, a), c 1, </s> 3 = 8 in all; n1..n3 = 1, 2, 1, no n4: D = 1/5."""
    ids = np.array([E, A, B, E, A, C, E, B, A, E])
    model = KneserNey.fit(ids, 2, V, E)
    root_backoff = 0.2 * 4  # four words with a continuation count
    unigram = {w: (max(c - 0.2, 0) + root_backoff / V) / 8 for w, c in {0: 0, E: 3, A: 2, B: 2, C: 1}.items()}
    assert unigram[A] == pytest.approx(0.245) and unigram[0] == pytest.approx(0.02)
    # after "a": ab 1, ac 1, a</s> 1; total 3, back-off mass 3 D
    d = 7 / 9
    after_a = {w: (max(c - d, 0) + 3 * d * unigram[w]) / 3 for w, c in {0: 0, E: 1, A: 0, B: 1, C: 1}.items()}
    assert model.distribution([E, A]).tolist() == pytest.approx([after_a[w] for w in range(V)])
    # after <s>: <s>a 2, <s>b 1; total 3
    after_s = {w: (max(c - d, 0) + 2 * d * unigram[w]) / 3 for w, c in {0: 0, E: 0, A: 2, B: 1, C: 0}.items()}
    assert model.distribution([B, A, E]).tolist() == pytest.approx([after_s[w] for w in range(V)])
    # the stream's log-probabilities are the same numbers, history cut at each <s>
    expected = [after_s[A], after_a[B]]
    assert np.exp(model.score(np.array([E, A, B]))).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_distributions_sum_to_one_and_match_the_scores(order):
    rng = np.random.default_rng(order)
    vocab = 30
    ids = np.concatenate([[E]] + [np.append(rng.zipf(1.5, rng.integers(2, 15)) % (vocab - 2) + 2, E) for _ in range(300)])
    model = KneserNey.fit(ids, order, vocab, E)
    held_out = np.concatenate([[E]] + [np.append(rng.integers(0, vocab, rng.integers(2, 9)), E) for _ in range(20)])
    scores = model.score(held_out)
    for position in rng.choice(np.arange(1, len(held_out)), 40, replace=False):
        history = held_out[:position].tolist()
        probs = model.distribution(history)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12) and (probs > 0).all()
        assert math.log(probs[held_out[position]]) == pytest.approx(scores[position - 1], abs=1e-12)


def test_save_and_load_give_the_same_model(tmp_path):
    ids = np.array([E, A, B, E, A, C, E, B, A, C, E])
    model = KneserNey.fit(ids, 3, V, E)
    model.save(tmp_path / "ngram.safetensors")
    loaded = KneserNey.load(tmp_path / "ngram.safetensors")
    assert loaded.order == 3 and loaded.score(ids).tolist() == model.score(ids).tolist()


def test_ngram_runs_train_evaluate_generate_and_score(corpus_dir, tmp_path):
    """`lmrnn train --cell ngram` writes a run the other commands read like any other."""
    from typer.testing import CliRunner

    from lmrnn.cli import app
    from lmrnn.corpus import Corpus
    from lmrnn.data import load_split
    from lmrnn.evaluate import evaluate_run
    from lmrnn.tokenizer import Tokenizer

    def run(*args, input=None):
        return CliRunner().invoke(app, [str(a) for a in args], input=input)

    out = tmp_path / "kn3"
    result = run("train", corpus_dir, "--cell", "ngram", "-s", "model.order=3", "-s", "tokenizer.model_type=word",
                 "-s", "tokenizer.vocab_size=0", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    evaluated = evaluate_run(out, "test")
    assert evaluated.ppl == pytest.approx(summary["test_ppl"]) and evaluated.ppl == pytest.approx(evaluated.word_ppl)
    # the same figure from the model counted here by hand
    tokenizer = Tokenizer.load(out / "tokenizer.model")
    cfg_data = __import__("lmrnn.checkpoint", fromlist=["read_config"]).read_config(out).data
    train_ids = load_split(Corpus(cfg_data), "train", tokenizer).ids
    test_ids = load_split(Corpus(cfg_data), "test", tokenizer).ids
    by_hand = KneserNey.fit(train_ids, 3, tokenizer.vocab_size, tokenizer.eos_id).score(test_ids)
    assert evaluated.nll == pytest.approx(-by_hand.sum())
    greedy = run("generate", out, "-p", "the king", "-t", "0", "-n", "8")
    assert greedy.exit_code == 0 and greedy.stdout.startswith("the king")
    beams = run("generate", out, "-p", "the king", "--beams", "3", "--num-return", "2", "-n", "8", "--json")
    assert len(json.loads(beams.stdout)["continuations"]) == 2
    scored = json.loads(run("score", out, "--json", input="the king ran over the hill .\n").stdout)
    line_ids = [tokenizer.eos_id] + tokenizer.encode("the king ran over the hill .") + [tokenizer.eos_id]
    assert scored[0]["logprob"] == pytest.approx(
        KneserNey.fit(train_ids, 3, tokenizer.vocab_size, tokenizer.eos_id).score(np.array(line_ids)).sum())
    for args, message in ((("train", "--cell", "ngram", "--resume", "--out", out), "nothing to resume"),
                          (("train", corpus_dir, "--cell", "ngram", "-s", "model.order=0", "--out", tmp_path / "x"),
                           "model.order must be between 1 and 10"),
                          (("probe", "context", out, "--plot", tmp_path / "c.png"), "the probes measure recurrent states")):
        failed = run(*args)
        assert failed.exit_code == 1 and message in failed.stderr, failed.output


@pytest.mark.corpus
@pytest.mark.skipif(not (SHARED_CORPORA / "ptb" / "test.txt").is_file(), reason="needs ../shared/corpora/ptb")
def test_word_level_without_a_size_keeps_every_word_and_reaches_the_published_5_gram(tmp_path):
    """-s tokenizer.model_type=word alone once gave 1,000 word pieces spelling the other 9,000
    words in bytes (3.28M train tokens for 930k words) and a 5-gram at test word ppl 279.3;
    Mikolov (2012, Table 4.1) reports 141.2 for KN5 on PTB."""
    from lmrnn.config_parser import load_config
    from lmrnn.train import train

    cfg = load_config(overrides=[f"data.source={SHARED_CORPORA / 'ptb'}", "tokenizer.model_type=word", "model.cell=ngram",
                                 "model.order=5", f"data.cache_dir={tmp_path / 'cache'}"])
    summary = train(cfg, tmp_path / "kn5")
    assert summary["train_tokens"] == 929_589 and summary["test_word_ppl"] == pytest.approx(141.19, abs=0.01)
