import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmrnn.config import ModelConfig
from lmrnn.errors import UserError
from lmrnn.evaluate import evaluate_nll
from lmrnn.models import RNNLM
from lmrnn.probes import (context_losses, effective_context, geometric_ks, gradient_norms, probe_context,
                          probe_gradients, probe_recall, probe_windows, recall_by_distance, vanishing_distance)
from lmrnn.stories import HEROES, agreement, story
from lmrnn.tokenizer import Tokenizer
from tests.conftest import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model(cell, layers=2, hidden=6, vocab=11, seed=0):
    torch.manual_seed(seed)
    return RNNLM(ModelConfig(cell=cell, embedding_dim=5, hidden_size=hidden, num_layers=layers,
                             vocab_size=vocab, dropout=0.0)).double()


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradient_probe_equals_autograd_through_a_sequence_call(cell):
    """Independent route: the state s_t as a leaf, the rest of the window in one nn.RNN call."""
    model = tiny_model(cell)
    burn, length = 4, 7
    ids = torch.randint(0, 11, (3, burn + length + 1), generator=torch.Generator().manual_seed(1))
    norms = gradient_norms(model, ids, length)
    assert norms.shape == (3, length)
    for t in range(length):
        with torch.no_grad():
            _, state = model.encode(ids[:, :burn + t + 1])
        leaves = tuple(s.clone().requires_grad_() for s in as_tuple(state))
        state = leaves if len(leaves) == 2 else leaves[0]
        rest = ids[:, burn + t + 1:burn + length]
        if rest.size(1):
            _, state = model.encode(rest, state)
        loss = F.cross_entropy(model.next_token_logits(state), ids[:, -1], reduction="sum")
        grads = [g for g in torch.autograd.grad(loss, leaves, allow_unused=True) if g is not None]
        expected = sum(g.pow(2).sum(dim=(0, 2)) for g in grads).sqrt()
        torch.testing.assert_close(norms[:, length - 1 - t], expected, rtol=1e-10, atol=1e-12)


def test_gradient_probe_matches_finite_differences():
    model = tiny_model("rnn", layers=1, hidden=4)
    ids = torch.randint(0, 11, (1, 3 + 5 + 1), generator=torch.Generator().manual_seed(2))
    distance, eps = 3, 1e-6
    t = 5 - 1 - distance
    with torch.no_grad():
        _, base = model.encode(ids[:, :3 + t + 1])  # (1, 1, 4)

        def loss_from(state):
            _, state = model.encode(ids[:, 3 + t + 1:3 + 5], state)
            return F.cross_entropy(model.next_token_logits(state), ids[:, -1]).item()

        grad = []
        for j in range(4):
            step = torch.zeros_like(base)
            step[0, 0, j] = eps
            grad.append((loss_from(base + step) - loss_from(base - step)) / (2 * eps))
    assert gradient_norms(model, ids, 5)[0, distance].item() == pytest.approx(math.hypot(*grad), rel=1e-6)


def test_vanishing_distance_and_windows():
    assert vanishing_distance([5.0, 1.0, 0.1, 0.01, 0.0009, 0.0001]) == 4
    assert vanishing_distance([5.0, 1.0, 0.5, 0.2]) is None
    windows = probe_windows(np.arange(100), 4, 10)
    assert windows.shape == (4, 10) and windows[0, 0] == 0 and windows[-1, -1] == 99
    assert (windows[:, 1:] - windows[:, :-1] == 1).all()
    with pytest.raises(UserError, match="fewer than"):
        probe_windows(np.arange(5), 2, 10)


def test_context_probe_with_the_whole_prefix_equals_single_stream_evaluation():
    model = tiny_model("lstm")
    ids = np.random.default_rng(0).integers(0, 11, size=60)
    targets = np.arange(1, 60)  # every token; k = 60 reaches back to the start for all of them
    losses, full = context_losses(model, ids, targets, [60], bptt=7)
    stream = torch.from_numpy(ids)
    nll, count = evaluate_nll(model, stream[None, :-1], stream[None, 1:], bptt=7)
    assert count == 59
    assert losses[60] == pytest.approx(nll / count, rel=1e-6)  # float32 cross-entropy on both routes
    assert full == pytest.approx(nll / count, rel=1e-6)


def test_context_probe_truncates_to_exactly_k_tokens():
    model = tiny_model("gru")
    ids = np.random.default_rng(1).integers(0, 11, size=40)
    targets = np.array([20, 31, 39])
    losses, _ = context_losses(model, ids, targets, [1, 3], bptt=5, max_tokens=4)  # several chunks
    for k in (1, 3):
        with torch.no_grad():
            expected = np.mean([F.cross_entropy(model(torch.from_numpy(ids[p - k:p])[None])[0][0, -1], torch.tensor(int(ids[p]))).item()
                                for p in targets])
        assert losses[k] == pytest.approx(expected, rel=1e-6)


def test_effective_context_and_ks():
    assert geometric_ks(400) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 400]
    assert geometric_ks(8) == [1, 2, 4, 8]
    assert effective_context({1: 5.0, 2: 4.1, 4: 4.03, 8: 4.0}, 4.0) == 4
    assert effective_context({1: 5.0, 2: 4.5}, 4.0) is None


def test_stories_mark_the_cue_and_its_recall():
    item = story(random.Random(3), fillers=5)
    words = item.text.split()
    assert item.text[item.recall_at:].split()[0] == item.answer
    assert words.count(item.answer) == 2
    assert item.distance == len(words) - 1 - words[::-1].index(item.answer) - words.index(item.answer)
    assert item.text.count(" . ") == 1 + 5  # opening, five middle sentences, closing


def test_agreement_stories_name_no_person_between_cue_and_pronoun():
    item = agreement(random.Random(4), fillers=3)
    words = item.text.split()
    assert item.answer in ("she", "he") and item.text[item.recall_at:].split()[0] == item.answer
    before = item.text[:item.recall_at].split()
    names = [w for w in before if w in HEROES["she"] + HEROES["he"]]
    assert len(names) == 1 and names[0] in HEROES[item.answer]  # the cue: the only name, of the right gender
    assert not {"she", "he", "her", "him"} & set(before)  # nothing else gives the gender away
    assert item.distance == len(before) - before.index(names[0]) and words.count(".") == 1 + 3 + 1


def test_stories_generator_rewrites_the_shipped_corpus_byte_for_byte(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "lmrnn.stories", "--out", str(tmp_path)], check=True, cwd=REPO)
    for name in ("train", "valid", "test"):
        assert (tmp_path / f"{name}.txt").read_bytes() == (REPO / "corpora" / "stories" / f"{name}.txt").read_bytes()


@pytest.mark.parametrize("task", ["name", "gender"])
def test_recall_batch_equals_scoring_each_story_alone(tiny_run, task):
    from lmrnn import checkpoint

    model, tokenizer, _ = checkpoint.load_run(tiny_run, torch.device("cpu"))
    results = recall_by_distance(model, tokenizer, [0, 3], per_bucket=6, seed=5, task=task)
    assert [r.fillers for r in results] == [0, 3] and results[0].distance < results[1].distance
    make = {"name": story, "gender": agreement}[task]

    def first_piece(prefix, word):
        return ([tokenizer.eos_id] + tokenizer.encode(f"{prefix} {word}"))[len(tokenizer.encode(prefix)) + 1]

    for result in results:
        rng = random.Random(f"5-{result.fillers}")
        hits, nll = 0, 0.0
        for item in (make(rng, result.fillers) for _ in range(6)):
            prefix = item.text[:item.recall_at].rstrip()
            target = first_piece(prefix, item.answer)
            with torch.no_grad():
                logits = model(torch.tensor([[tokenizer.eos_id] + tokenizer.encode(prefix)]))[0][0, -1]
            if task == "name":
                hits += int(logits.argmax()) == target
            else:  # the right pronoun scores above the other one
                hits += bool(logits[target] > logits[first_piece(prefix, "he" if item.answer == "she" else "she")])
            nll += F.cross_entropy(logits[None], torch.tensor([target])).item()
        assert result.accuracy == pytest.approx(hits / 6) and result.nll == pytest.approx(nll / 6, rel=1e-5)


def test_probes_on_runs_write_plots(tiny_run, tmp_path):
    rows = probe_gradients([tiny_run], length=20, windows=4, burn_in=5, plot=tmp_path / "g.png", device="cpu")
    assert [r["model"] for r in rows] == ["trained", "init"] and len(rows[0]["norms"]) == 20
    assert (tmp_path / "g.png").read_bytes().startswith(PNG)
    rows = probe_context([tiny_run], max_context=16, targets=20, plot=tmp_path / "c.png", device="cpu")
    assert rows[0]["ks"] == [1, 2, 4, 8, 16] and len(rows[0]["losses"]) == 5
    assert rows[0]["losses"][0] > rows[0]["full_context_loss"]  # one token of context is worse than all
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    rows = probe_recall([tiny_run], max_fillers=1, per_bucket=3, plot=tmp_path / "r.png", device="cpu")
    assert len(rows[0]["name"]) == len(rows[0]["gender"]) == 2 and (tmp_path / "r.png").read_bytes().startswith(PNG)


def test_probes_refuse_runs_with_different_tokenizers(tiny_run, tmp_path):
    import shutil

    from lmrnn import checkpoint
    from lmrnn.config import TokenizerConfig
    from lmrnn.tokenizer import train_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    lines = (REPO / "corpora" / "stories" / "valid.txt").read_text().splitlines()
    retrained = train_tokenizer(lines, TokenizerConfig(vocab_size=300))
    assert retrained.vocab_size == Tokenizer.load(tiny_run / checkpoint.TOKENIZER).vocab_size
    checkpoint.save_tokenizer(other, retrained)
    with pytest.raises(UserError, match="different tokenizers"):
        probe_gradients([tiny_run, other], length=5, windows=2, burn_in=0, device="cpu")
    probe_recall([tiny_run, other], max_fillers=0, per_bucket=2, device="cpu")  # words: allowed
